"""The built-in per-step recorder of the training loop.

Per-step scalars leave ``train`` through a ``sink(group, rows)`` (e.g.
``partial(common.store.append_rows, path)``), so ``train`` never imports the store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.types import Sink
from train.callbacks import BaseCallback, StepContext


def flat_grad(model: nn.Module) -> torch.Tensor:
    """All parameter gradients concatenated in ``parameters()`` order (zeros where None)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
        for p in model.parameters()
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


class ScalarRecorder(BaseCallback):
    """Records per-step scalars and hands them to ``sink`` in batches.

    Groups (their columns are listed in ``docs/schema.md``, "Training run"): ``"steps"``, one
    row per step, handed over every ``every`` steps and at each epoch end / the end of
    training; ``"epochs"``, one row per epoch (the epoch metrics of the loop); and with
    ``grad_every = N > 0``, ``"grads"``, the float16 flattened raw gradient every N steps.
    ``step`` and ``epoch`` are int64, everything else float32. Every row is also kept in
    memory: :meth:`table` returns them as columns.
    """

    def __init__(self, sink: Sink | None = None, every: int = 50, grad_every: int = 0) -> None:
        if every < 1 or grad_every < 0:
            raise ValueError(
                f"ScalarRecorder needs every >= 1 and grad_every >= 0, got {every}, {grad_every}"
            )
        self.sink, self.every, self.grad_every = sink, every, grad_every
        self.rows: list[dict[str, float]] = []
        self._pending = 0
        self._grads: list[tuple[int, np.ndarray]] = []

    def on_step(self, ctx: StepContext) -> None:
        row: dict[str, float] = {
            "step": ctx.step,
            "epoch": ctx.epoch,
            "loss": ctx.loss,
            "robust_ce": ctx.stats.get("robust_ce", float("nan")),
            "clean_err": ctx.stats.get("clean_err", float("nan")),
            "robust_err": ctx.stats.get("robust_err", float("nan")),
            "grad_norm": ctx.grad_norm,
            "eps": ctx.eps,
            "beta": ctx.beta,
            "kappa": ctx.kappa,
            "lr": ctx.lr,
            "wall_time": ctx.wall_time,
        }
        row.update({k: v for k, v in ctx.stats.items() if k.startswith("unstable_frac_l")})
        self.rows.append(row)
        self._pending += 1
        if self.grad_every and ctx.step % self.grad_every == 0:
            self._grads.append((ctx.step, flat_grad(ctx.model).cpu().to(torch.float16).numpy()))
        if self._pending >= self.every:
            self.flush()

    def table(self, rows: list[dict[str, float]] | None = None) -> dict[str, np.ndarray]:
        """Rows as columns (int64 ``step``/``epoch``, float32 others; NaN where a row lacks one)."""
        rows = self.rows if rows is None else rows
        names: list[str] = []
        for r in rows:
            names += [k for k in r if k not in names]
        out: dict[str, np.ndarray] = {}
        for k in names:
            dtype = np.int64 if k in ("step", "epoch") else np.float32
            out[k] = np.asarray([r.get(k, float("nan")) for r in rows], dtype=dtype)
        return out

    def flush(self) -> None:
        """Hand pending step rows (and gradients) to the sink."""
        if self.sink is not None and self._pending:
            self.sink("steps", self.table(self.rows[-self._pending :]))
        self._pending = 0
        if self.sink is not None and self._grads:
            self.sink(
                "grads",
                {
                    "step": np.asarray([s for s, _ in self._grads], dtype=np.int64),
                    "grad": np.stack([g for _, g in self._grads]),
                },
            )
        self._grads = []

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict) -> None:
        self.flush()
        if self.sink is not None:
            row = {"epoch": np.asarray([epoch], dtype=np.int64)}
            for k, v in metrics.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "epoch":
                    continue
                row[k] = np.asarray([v], dtype=np.int64 if isinstance(v, int) else np.float32)
            self.sink("epochs", row)

    def on_train_end(self, model: nn.Module, metrics: dict) -> None:
        self.flush()

"""Training probes: the gradient-direction scan during training (the paper's main figure).

``GradientProbe(path, every=N)`` (or ``GradientProbe(every=N, sink=sink)``) is a callback of :mod:`train.loop` (``on_step`` is called after
backward and before ``optimizer.step``). Every ``every`` steps it

1. runs :func:`landscape.scans.gradient_scan` on ``ctx.loss_fn`` (the step's certified loss at
   its eps, beta, kappa, on the step's batch) with step size ``ctx.lr``: theta_t = theta -
   t * lr * g, g the raw gradient, t in ``t_values``; at each t it also evaluates
   ``ctx.final_loss_fn`` (the same loss at the final eps: the paper code's ``loss_max``);
2. with ``metrics=True``, and a linear-relaxation method: the sign changes ``a_sign`` and
   ``sign_flip`` of the lower bound's input coefficients A between theta and theta_t, and the
   relaxed gradient approximation at theta (:func:`landscape.metrics.relaxed_gradient_approximation`);
3. restores parameters, ``.grad`` and the torch RNG state exactly, so training goes on as if
   nothing happened;
4. appends one row per t to group ``probes`` of the HDF5 file ``path``
   (:func:`landscape.store.append_rows`; the columns are listed in ``docs/schema.md``,
   "Training run"; per-probe values repeat on each row of the probe; NaN where not applicable).

The bound of the metrics is the step's own (``ctx.bound``: method, slope, beta, domain), at the
step's eps; random slopes are drawn from a generator seeded with ``seed``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from landscape import store
from landscape.directions import named_params
from landscape.metrics import lower_coefficients, relaxed_gradient_approximation, sign_changes
from landscape.scans import default_t_values, gradient_scan

__all__ = ["GradientProbe"]


class GradientProbe:
    """Every ``every`` steps, a gradient-direction scan and relaxation metrics into ``path``.

    Args:
        path: the run's HDF5 file (rows go to group ``probes`` via ``store.append_rows``).
        sink: instead of ``path``, a function ``sink(group, rows)`` (the training CLI's sink).
        every: probe period in steps (``ctx.step % every == 0``); must be >= 1.
        t_values: step multiples t (default: {0} U 10 log-spaced values from 0.5 to 5 U {1}).
        metrics: also compute sign changes of A and the RGA (linear methods only).
        seed: seed of the random slopes used by the metrics' bound computations.
    """

    def __init__(self, path: str | None = None, every: int = 100, t_values: Sequence[float] | None = None,
                 metrics: bool = True, seed: int = 0,
                 sink: Callable[[str, dict[str, np.ndarray]], None] | None = None) -> None:
        if (path is None) == (sink is None):
            raise ValueError("GradientProbe needs exactly one of path and sink")
        if int(every) < 1:
            raise ValueError(f"the probe period must be >= 1 step, got {every}")
        self.path = None if path is None else str(path)
        self.sink = sink
        self.every = int(every)
        self.t_values = default_t_values() if t_values is None else np.asarray(t_values, dtype=np.float64)
        self.metrics = bool(metrics)
        self.seed = int(seed)
        self.n_probes = 0

    # ------------------------------------------------------------------ callback protocol
    def on_step(self, ctx: Any) -> None:
        """Probe when ``ctx.step`` is a multiple of ``every`` (see module docstring)."""
        if int(ctx.step) % self.every != 0:
            return
        model: nn.Module = ctx.model
        params = [p for _, p in named_params(model)]
        saved = [p.detach().clone() for p in params]
        grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        was_training = model.training
        try:
            rows = self._probe(ctx)
        finally:
            with torch.no_grad():
                for p, s, g in zip(params, saved, grads):
                    p.copy_(s)
                    p.grad = g
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            model.train(was_training)
        if self.sink is not None:
            self.sink("probes", rows)
        else:
            store.append_rows(self.path, "probes", rows)
        self.n_probes += 1

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict) -> None:  # noqa: D102
        return None

    def on_train_end(self, model: nn.Module, metrics: dict) -> None:  # noqa: D102
        return None

    # ------------------------------------------------------------------ the probe itself
    def _probe(self, ctx: Any) -> dict[str, np.ndarray]:
        model, x, y = ctx.model, ctx.x, ctx.y
        eps = float(ctx.eps)
        setup = ctx.bound  # the bound the step used: method, slope, beta, domain, n_classes
        use_bounds = self.metrics and setup.linear
        point_metrics = None
        a0 = lower_coefficients(model, x, y, eps, setup, torch.Generator().manual_seed(self.seed)) if use_bounds else None
        if a0 is not None:  # None where the bound has no linear part (e.g. CROWN-IBP at beta = 0)

            def point_metrics(m: nn.Module, label: str) -> dict[str, float]:
                if label != "main":
                    return {}
                return sign_changes(a0, lower_coefficients(m, x, y, eps, setup, torch.Generator().manual_seed(self.seed)))

        extra = {"final": ctx.final_loss_fn} if getattr(ctx, "final_loss_fn", None) is not None else {}
        res = gradient_scan(ctx.loss_fn, model, self.t_values, float(ctx.lr), extra_losses=extra,
                            point_metrics=point_metrics)
        n = len(self.t_values)
        nan = np.full(n, np.nan, dtype=np.float32)
        rows: dict[str, np.ndarray] = {
            "step": np.full(n, int(ctx.step), dtype=np.int64),
            "epoch": np.full(n, float(getattr(ctx, "epoch", math.nan)), dtype=np.float32),
            "t": self.t_values.astype(np.float32),
            "lr": np.full(n, float(ctx.lr), dtype=np.float32),
            "eps": np.full(n, eps, dtype=np.float32),
        }
        for name in ("loss", "grad_norm", "cos", "rms", "smoothness"):
            rows[name] = np.asarray(res[name], dtype=np.float32)
            rows[f"{name}_final" if name != "loss" else "loss_final"] = (
                np.asarray(res[f"final/{name}"], dtype=np.float32) if extra else nan.copy()
            )
        rows["loss_variation"] = np.full(n, res["loss_variation"], dtype=np.float32)
        rows["loss_final_variation"] = np.full(n, res.get("final/loss_variation", math.nan), dtype=np.float32)
        for name in ("a_sign", "sign_flip"):
            rows[name] = np.asarray(res[name], dtype=np.float32) if name in res else nan.copy()
        if use_bounds:
            rga = relaxed_gradient_approximation(model, x, y, eps, method=setup.method, slope=setup.slope,
                                                 beta=setup.beta, domain=setup.domain,
                                                 generator=torch.Generator().manual_seed(self.seed))
        else:
            rga = {}
        for name in ("rga_cos", "rga_rel_err", "slope_err", "upper_slope_err"):
            rows[name] = np.full(n, rga.get(name, math.nan), dtype=np.float32)
        for name, value in rga.items():
            if name.startswith("unstable_frac_l"):
                rows[name] = np.full(n, value, dtype=np.float32)
        return rows

"""Training probes: the gradient-direction scan during training (the paper's main figure).

``GradientProbe(path, every=N)`` (or ``GradientProbe(every=N, sink=sink)``) is a callback of
:mod:`train.loop` (``on_step`` is called after backward and before ``optimizer.step``). Every ``every`` steps it

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
   (:func:`common.store.append_rows`; the columns are listed in ``docs/schema.md``,
   "Training run"; per-probe values repeat on each row of the probe; NaN where not applicable).

The bound of the metrics is the step's own (``ctx.bound``: method, slope, beta, domain), at the
step's eps; random slopes are drawn from a generator seeded with ``seed``.

One batch or several: by default the probe looks at the step's own batch, as the paper's code
does. With ``batches = K > 1`` it looks at K fixed batches of the training set instead (drawn
once with ``batch_seed``, so runs of every method and seed are probed on the same samples) and
stores, per row, the mean over the batches and, as ``<column>_std``, their standard deviation:
a probe on one batch varies by about as much as the methods differ.

Curvature (``hessian=True``, ``train --probe-hessian``): at theta, the Hessian eigenvalue of
largest magnitude of the step's loss by ``hessian_steps`` Lanczos steps
(:func:`landscape.hessian.top_eigenvalues`, ``which="magnitude"``, as ``scan --hessian``) and its
trace by Hutchinson's estimate with ``trace_samples`` Rademacher vectors
(:func:`landscape.hessian.hessian_trace`), both seeded with ``seed``.

Fresh slopes: the step's loss draws its random slopes (``tightest``'s random start, ``uniform``,
``binary``) from one seed, so every point of the scan uses the same start. With
``fresh_slopes=True`` every evaluation draws a new one, as the paper's probe does, and the scan
moves along the training step's own gradient (``.grad`` after its backward, as the paper code
does), not along the gradient of a new random start.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from common import store
from common.types import Sink
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
        batches: 1 (the step's batch) or K > 1 fixed batches (see the module docstring).
        fresh_slopes: draw new random slopes at every evaluation (the paper's probe).
        batch_seed: seed of the fixed batches.
        hessian: also record the top Hessian eigenvalue and the trace of the step's loss; None:
            as the run's config says (``probe_hessian``).
        hessian_steps, trace_samples: Lanczos steps of the eigenvalue, Rademacher vectors of the trace.
    """

    #: columns that get a ``<name>_std`` over the probe batches
    SPREAD = (
        "loss_variation",
        "loss_final_variation",
        "cos",
        "cos_final",
        "smoothness",
        "a_sign",
        "sign_flip",
        "rga_cos",
        "loss",
        "loss_final",
        "hessian_top_eig",
        "hessian_trace",
    )

    def __init__(
        self,
        path: str | None = None,
        every: int = 100,
        t_values: Sequence[float] | None = None,
        metrics: bool = True,
        seed: int = 0,
        sink: Sink | None = None,
        batches: int = 1,
        fresh_slopes: bool = False,
        batch_seed: int = 0,
        hessian: bool | None = None,
        hessian_steps: int = 20,
        trace_samples: int = 20,
    ) -> None:
        if (path is None) == (sink is None):
            raise ValueError("GradientProbe needs exactly one of path and sink")
        if int(every) < 1:
            raise ValueError(f"the probe period must be >= 1 step, got {every}")
        self.path = None if path is None else str(path)
        self.sink = sink
        self.every = int(every)
        self.t_values = (
            default_t_values() if t_values is None else np.asarray(t_values, dtype=np.float64)
        )
        self.metrics = bool(metrics)
        self.seed = int(seed)
        if int(batches) < 1:
            raise ValueError(f"the number of probe batches must be >= 1, got {batches}")
        self.batches = int(batches)
        self.fresh_slopes = bool(fresh_slopes)
        self.batch_seed = int(batch_seed)
        if int(hessian_steps) < 1 or int(trace_samples) < 1:
            raise ValueError(
                f"hessian_steps and trace_samples must be >= 1, got {hessian_steps}, {trace_samples}"
            )
        self.hessian, self.hessian_steps, self.trace_samples = (
            hessian,
            int(hessian_steps),
            int(trace_samples),
        )
        self._fixed: list[tuple[torch.Tensor, torch.Tensor]] | None = None
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
        buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm's running statistics
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
                for b, s in zip(model.buffers(), buffers):
                    b.copy_(s)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            model.train(was_training)
        if self.sink is not None:
            self.sink("probes", rows)
        else:
            store.append_rows(self.path, "probes", rows)
        self.n_probes += 1

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict) -> None:
        return None

    def on_train_end(self, model: nn.Module, metrics: dict) -> None:
        return None

    # ------------------------------------------------------------------ the probe itself
    def _probe_batches(self, ctx: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The step's batch, or the K fixed batches (drawn once, on the training set)."""
        if self.batches == 1:
            return [(ctx.x, ctx.y)]
        if self._fixed is None:
            data = ctx.data
            size = int(ctx.config.batch_size)
            n = len(data.train_x)
            if self.batches * size > n:
                raise ValueError(
                    f"{self.batches} probe batches of {size} need {self.batches * size} training samples, "
                    f"the dataset has {n}"
                )
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.batch_seed))[
                : self.batches * size
            ]
            self._fixed = [
                (data.train_x[i].to(ctx.x.device), data.train_y[i].to(ctx.y.device))
                for i in idx.split(size)
            ]
        return self._fixed

    def _losses(
        self, ctx: Any, b: int, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Callable, Callable | None]:
        """The step's loss and its final-schedule loss on batch ``b``; with fresh slopes, every
        call draws new random slopes."""
        own = self.batches == 1 and not self.fresh_slopes
        if own or getattr(ctx, "loss_at", None) is None:
            return ctx.loss_fn, getattr(ctx, "final_loss_fn", None)
        if not self.fresh_slopes:
            return ctx.loss_at(x, y), ctx.loss_at(x, y, final=True)
        calls = itertools.count()

        def fresh(final: bool) -> Callable:
            return lambda m: ctx.loss_at(
                x, y, final=final, seed=_seed(self.seed, ctx.step, b, next(calls))
            )(m)

        return fresh(False), fresh(True)

    @staticmethod
    def _step_gradient(model: nn.Module) -> list[torch.Tensor] | None:
        """The training step's own gradient (``.grad`` after its backward), one tensor per
        parameter (zeros where a parameter got none); None when no parameter has one."""
        params = [p for _, p in named_params(model)]
        if all(p.grad is None for p in params):
            return None
        return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]

    def _probe(self, ctx: Any) -> dict[str, np.ndarray]:
        parts = [
            self._probe_batch(ctx, b, x, y) for b, (x, y) in enumerate(self._probe_batches(ctx))
        ]
        if len(parts) == 1:
            return parts[0]
        rows = {}
        for name, col in parts[0].items():
            if name in ("step", "epoch", "t", "lr", "eps"):
                rows[name] = col
                continue
            stack = np.stack([p[name] for p in parts]).astype(
                np.float64
            )  # NaN where a value does not apply
            rows[name] = stack.mean(axis=0).astype(np.float32)
            if name in self.SPREAD or name.startswith("unstable_frac_l"):
                rows[f"{name}_std"] = stack.std(axis=0).astype(np.float32)
        rows["probe_batches"] = np.full(len(self.t_values), len(parts), dtype=np.int64)
        return rows

    def _probe_batch(
        self, ctx: Any, b: int, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, np.ndarray]:
        model = ctx.model
        eps = float(ctx.eps)
        setup = ctx.bound  # the bound the step used (a BoundSpec; None for natural training)
        use_bounds = self.metrics and setup is not None and setup.relaxes
        loss_fn, final_fn = self._losses(ctx, b, x, y)
        calls = itertools.count()

        def generator() -> torch.Generator:
            seed = _seed(self.seed, ctx.step, b, next(calls)) if self.fresh_slopes else self.seed
            return torch.Generator().manual_seed(seed)

        point_metrics = None
        n_classes = ctx.n_classes
        a0 = (
            lower_coefficients(model, x, y, eps, setup, n_classes, generator())
            if use_bounds
            else None
        )
        if a0 is not None:  # None where the bound has no linear part (e.g. CROWN-IBP at beta = 0)

            def point_metrics(m: nn.Module, label: str) -> dict[str, float]:
                if label != "main":
                    return {}
                a = lower_coefficients(m, x, y, eps, setup, n_classes, generator())
                return sign_changes(a0, a)

        extra = {"final": final_fn} if final_fn is not None else {}
        direction = self._step_gradient(model) if self.fresh_slopes and self.batches == 1 else None
        res = gradient_scan(
            loss_fn,
            model,
            self.t_values,
            float(ctx.lr),
            extra_losses=extra,
            point_metrics=point_metrics,
            direction=direction,
        )
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
        rows["loss_final_variation"] = np.full(
            n, res.get("final/loss_variation", math.nan), dtype=np.float32
        )
        for name in ("a_sign", "sign_flip"):
            rows[name] = np.asarray(res[name], dtype=np.float32) if name in res else nan.copy()
        rga = (
            relaxed_gradient_approximation(model, x, y, eps, setup, generator=generator())
            if use_bounds
            else {}
        )
        for name in ("rga_cos", "rga_rel_err", "slope_err", "upper_slope_err"):
            rows[name] = np.full(n, rga.get(name, math.nan), dtype=np.float32)
        for name, value in rga.items():
            if name.startswith("unstable_frac_l"):
                rows[name] = np.full(n, value, dtype=np.float32)
        rows.update(self._curvature_rows(ctx, loss_fn, model, n))
        return rows

    def _curvature_rows(
        self, ctx: Any, loss_fn: Callable, model: nn.Module, n: int
    ) -> dict[str, np.ndarray]:
        """The Hessian columns (:meth:`_curvature`, ``n`` rows each) when the probe, or else the
        run's config (``probe_hessian``), asks for them; else none."""
        hessian = (
            self.hessian
            if self.hessian is not None
            else bool(getattr(getattr(ctx, "config", None), "probe_hessian", False))
        )
        if not hessian:
            return {}
        return {
            k: np.full(n, v, dtype=np.float32) for k, v in self._curvature(loss_fn, model).items()
        }

    def _curvature(self, loss_fn: Callable, model: nn.Module) -> dict[str, float]:
        """The top eigenvalue (largest magnitude) and the trace of the Hessian of ``loss_fn`` at theta."""
        from landscape.hessian import hessian_trace, top_eigenvalues

        steps = min(self.hessian_steps, sum(p.numel() for _, p in named_params(model)))
        top = top_eigenvalues(loss_fn, model, k=1, iters=steps, seed=self.seed, which="magnitude")
        trace = hessian_trace(loss_fn, model, samples=self.trace_samples, seed=self.seed)
        return {
            "hessian_top_eig": float(top[0]),
            "hessian_trace": trace.mean,
            "hessian_trace_stderr": trace.stderr,
        }


def _seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (a fresh random start per evaluation)."""
    z = 0x9E3779B97F4A7C15
    for p in parts:
        z = ((z ^ (int(p) + 0x632BE59BD9B4E019)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        z ^= z >> 31
    return z & ((1 << 63) - 1)

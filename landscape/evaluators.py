"""Evaluators: the values of a scan at a list of its grid points.

An evaluator is a callable ``evaluator(indices) -> [{label: {field: value}}]`` over flat grid
indices; :func:`landscape.scan_runner.fill_scan` runs one over the missing points of a scan file,
and the in-memory functions of :mod:`landscape.scans` over every point. The model's parameters
are moved in place and restored exactly afterwards.

- :class:`GradientEvaluator`: theta_t = theta_0 - t lr g, g = grad L_0(theta_0) the raw gradient
  of the first loss (``own_direction=True``: each loss L moves along its own g = grad L(theta_0));
  for each loss L at each t: L(theta_t), ||g_t||, cos(g, g_t), RMS(g_t - g) and
  ||g_t - g|| / ||theta_t - theta_0|| with g = grad L(theta_0) of that same loss.
- :class:`DirectionEvaluator`: L(theta_0 + sum_k c_k d_k) for coefficient rows c, point by point
  or several points per ``torch.func.vmap`` pass (:func:`batchable`); an interpolation also moves
  the BatchNorm running statistics, b(alpha) = b_1 + alpha (b_2 - b_1) (``buffer_path``).

Definitions in ``docs/scans.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bounds import mode
from common.names import FIXED_SLOPES, TRAIN_METHODS, resolve_method
from common.tensors import LossFn
from landscape import metrics as M
from landscape.directions import (
    BufferPath,
    get_params,
    gradient_direction,
    named_params,
    perturbed,
    set_buffers,
    set_params,
)

__all__ = [
    "GRADIENT_FIELDS",
    "SIGN_FIELDS",
    "ERROR_FIELDS",
    "GradientEvaluator",
    "DirectionEvaluator",
    "sign_change_metrics",
    "error_metrics",
    "loss_labels",
    "batchable",
]

GRADIENT_FIELDS = ("loss", "grad_norm", "cos", "rms", "smoothness")
SIGN_FIELDS = ("a_sign", "sign_flip")
ERROR_FIELDS = ("clean_err", "pgd_err", "verified_err")
"""Per-point errors a direction scan can store beside the loss (``--fields``)."""
Values = dict[str, dict[str, float]]  # label -> field -> value


def batchable(fn: LossFn) -> bool:
    """Whether ``torch.func.vmap`` can evaluate the loss closure ``fn`` over stacked parameter
    sets: the clean loss (its own ``functional``), and the certified losses of ``ibp`` and of
    ``crown-ibp`` with a fixed slope policy (``adaptive``, ``zero``, ``one``, ``same-slope``),
    fused or not, through the engine's vmap mode (:mod:`bounds.mode`). Not: PGD (nor the
    methods whose loss runs an attack, ``TrainMethod.attack``), the slope searches, random
    slopes, ``crown``'s data-dependent neuron selection."""
    if getattr(fn, "vmappable", False):
        return True
    spec = getattr(fn, "spec", None)
    if spec is None or getattr(spec, "kind", None) != "certified":
        return False
    method, slope, _ = resolve_method(spec.method, spec.slope, spec.beta)
    if TRAIN_METHODS[spec.method].attack:
        return False
    return method is None or method == "ibp" or (method == "crown-ibp" and slope in FIXED_SLOPES)


class _Closure(nn.Module):
    """``fn(model)`` as a module, so that ``torch.func.functional_call`` swaps the model's
    parameters for the whole call (the engine reads them off the layers)."""

    def __init__(self, model: nn.Module, fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self) -> Tensor:
        return self.fn(self.model)


def _functional(fn: LossFn, model: nn.Module) -> Callable[[dict[str, Tensor]], Tensor]:
    """``params -> loss`` for :func:`batchable` losses (parameter names of ``model``)."""
    if getattr(fn, "vmappable", False):
        return fn.functional  # type: ignore[attr-defined]
    closure = _Closure(model, fn)

    def call(params: dict[str, Tensor]) -> Tensor:
        with mode.vmappable():
            return torch.func.functional_call(
                closure, {f"model.{k}": v for k, v in params.items()}, ()
            )

    return call


def loss_labels(losses: Sequence[LossFn], labels: Sequence[str] | None) -> list[str]:
    """One distinct label per loss: ``labels``, or each loss's ``label`` attribute (``loss{i}``)."""
    if labels is None:
        labels = [getattr(fn, "label", f"loss{i}") for i, fn in enumerate(losses)]
    labels = list(labels)
    if len(labels) != len(losses) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per loss, got {labels}")
    return labels


class GradientEvaluator:
    """Values of the gradient-direction scan at points ``t_values[i]``.

    Args:
        model: the network; its parameters are theta_0 at construction.
        losses: loss closures ``fn(model) -> scalar``; the first one's gradient is the direction.
        t_values: step multiples t; theta_t = theta_0 - t * lr * g.
        lr: learning rate scaling the step.
        labels: names of the losses (default: their ``label`` attribute).
        point_metrics: optional ``fn(model, label) -> dict[str, float]`` of extra per-point
            values (e.g. sign changes of the bound coefficients), called at every point.
        direction: use this direction instead of grad L_0 (one tensor per parameter).
        own_direction: move each loss along its own gradient at theta_0 (theta_t^(k) =
            theta_0 - t lr grad L_k(theta_0)), so that every label's values are those of a scan of
            that loss alone; otherwise (the default, and the training probe's) every loss is
            evaluated at the same points, along ``direction`` or grad L_0.

    ``batch_size = None``: it takes any number of points per call (the caller picks the chunk).
    """

    batch_size: int | None = None

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[LossFn],
        t_values: Sequence[float] | np.ndarray,
        lr: float,
        labels: Sequence[str] | None = None,
        point_metrics: Callable[[nn.Module, str], dict[str, float]] | None = None,
        point_fields: Sequence[str] = (),
        direction: Sequence[Tensor] | None = None,
        own_direction: bool = False,
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"the learning rate must be a finite number > 0, got {lr!r}")
        self.model = model
        self.losses = list(losses)
        self.labels = loss_labels(self.losses, labels)
        self.t_values = np.asarray(t_values, dtype=np.float64)
        self.lr = float(lr)
        self.point_metrics = point_metrics
        self.fields = [*GRADIENT_FIELDS, *point_fields]
        self.base = get_params(model)
        self.params = [p for _, p in named_params(model)]
        self.loss0: dict[str, float] = {}
        self.grad0: dict[str, list[Tensor]] = {}
        for label, fn in zip(self.labels, self.losses):
            loss, grad = gradient_direction(fn, model)
            self.loss0[label] = float(loss)
            self.grad0[label] = grad
        self.grad0_vec = {label: M.as_vector(g) for label, g in self.grad0.items()}
        if own_direction and direction is not None:
            raise ValueError("give either a shared direction or own_direction=True, not both")
        self.own_direction = bool(own_direction)
        self.direction = list(direction) if direction is not None else self.grad0[self.labels[0]]
        self.direction_norm = float(M.as_vector(self.direction).norm())
        self.directions = {
            lab: (self.grad0[lab] if self.own_direction else self.direction) for lab in self.labels
        }
        self.direction_norms = {
            lab: float(M.as_vector(d).norm()) for lab, d in self.directions.items()
        }

    def set_direction(self, label: str) -> None:
        """Move every loss along ``label``'s gradient at theta_0 (a shared direction)."""
        if label not in self.grad0:
            raise ValueError(
                f"{label!r} is not one of the scanned losses ({', '.join(self.labels)})"
            )
        self.own_direction = False
        self.direction = self.grad0[label]
        self.direction_norm = float(M.as_vector(self.direction).norm())
        self.directions = {lab: self.direction for lab in self.labels}
        self.direction_norms = {lab: self.direction_norm for lab in self.labels}

    def __call__(self, indices: Sequence[int]) -> list[Values]:
        out = []
        try:
            for i in indices:
                t = float(self.t_values[int(i)])
                if not self.own_direction:
                    set_params(self.params, self.base, [self.direction], [-t * self.lr])
                values: Values = {}
                for label, fn in zip(self.labels, self.losses):
                    if self.own_direction:
                        set_params(self.params, self.base, [self.directions[label]], [-t * self.lr])
                    step = abs(t) * self.lr * self.direction_norms[label]
                    if t == 0.0:
                        loss, grad = self.loss0[label], self.grad0[label]
                    else:
                        loss_t, grad = gradient_direction(fn, self.model)
                        loss = float(loss_t)
                    g0, gt = self.grad0_vec[label], M.as_vector(grad)
                    v = {
                        "loss": loss,
                        "grad_norm": float(gt.norm()),
                        "cos": M.cosine_similarity(g0, gt),
                        "rms": M.rms_difference(gt, g0),
                        "smoothness": M.smoothness(g0, gt, step),
                    }
                    if self.point_metrics is not None:
                        v.update(self.point_metrics(self.model, label))
                    values[label] = v
                out.append(values)
        finally:
            set_params(self.params, self.base)
        return out


class DirectionEvaluator:
    """Loss values at theta_0 + sum_k c_k d_k for coefficient rows ``coeffs[i]``.

    With ``vmap_batch > 1`` and every loss :func:`batchable` (the clean loss; IBP and
    CROWN-IBP with fixed slopes, fused or not), points are evaluated ``vmap_batch`` at a time in
    one ``torch.func.vmap`` pass over stacked parameter sets (``batch_size`` is then
    ``vmap_batch``: callers should pass chunks of that size), the certified losses through the
    engine's vmap mode (:mod:`bounds.mode`); otherwise point by point with the parameters moved
    in place (any chunk size, ``batch_size = None``). Both give the same values to float
    rounding. On the 2-core CPU the vmapped pass measured slower than the loop for every loss
    (``benchmarks/scan.py``: the loop's kernels already keep the cores busy, and the vmap mode gives
    up the fast paths); on a GPU a batched pass can fill the device where one small point does
    not, so there it is the better default for small batches.
    """

    fields = ["loss"]

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[LossFn],
        directions: Sequence[Sequence[Tensor]],
        coeffs: np.ndarray,
        labels: Sequence[str] | None = None,
        base: Sequence[Tensor] | None = None,
        vmap_batch: int = 1,
        buffer_path: BufferPath | None = None,
        point_values: Callable[[nn.Module], dict[str, float]] | None = None,
    ) -> None:
        self.model = model
        self.point_values = point_values
        self.buffer_path = list(buffer_path or [])
        if self.buffer_path and len(directions) != 1:
            raise ValueError(
                "buffers move along one coefficient (an interpolation): give one direction"
            )
        self.losses = list(losses)
        self.labels = loss_labels(self.losses, labels)
        self.directions = [list(d) for d in directions]
        self.coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1, len(self.directions))
        self.restore = get_params(model)
        self.base = [b.detach().clone() for b in base] if base is not None else self.restore
        self.params = [p for _, p in named_params(model)]
        vm = (
            all(batchable(fn) for fn in self.losses)
            and int(vmap_batch) > 1
            and not self.buffer_path
            and point_values is None
        )
        self.batch_size: int | None = int(vmap_batch) if vm else None
        self._functionals = [_functional(fn, model) for fn in self.losses] if vm else []

    def _vmapped(self, indices: Sequence[int]) -> list[Values]:
        names = [n for n, _ in named_params(self.model)]
        stacks = [perturbed(self.base, self.directions, self.coeffs[int(i)]) for i in indices]
        params = {n: torch.stack([s[k] for s in stacks]) for k, n in enumerate(names)}
        out: list[Values] = [{} for _ in indices]
        with torch.no_grad():
            for label, functional in zip(self.labels, self._functionals):
                vals = torch.func.vmap(functional, randomness="error")(params)
                for j, v in enumerate(vals.tolist()):
                    out[j][label] = {"loss": float(v)}
        return out

    def __call__(self, indices: Sequence[int]) -> list[Values]:
        indices = list(indices)
        if self.batch_size is not None:
            out: list[Values] = []
            for start in range(0, len(indices), self.batch_size):
                out.extend(self._vmapped(indices[start : start + self.batch_size]))
            return out
        out = []
        try:
            with torch.no_grad():
                for i in indices:
                    set_params(self.params, self.base, self.directions, self.coeffs[int(i)])
                    if self.buffer_path:
                        set_buffers(self.buffer_path, float(self.coeffs[int(i)][0]))
                    values = {
                        label: {"loss": float(fn(self.model))}
                        for label, fn in zip(self.labels, self.losses)
                    }
                    if self.point_values is not None:  # once per point, the same for every label
                        shared = self.point_values(self.model)
                        for v in values.values():
                            v.update(shared)
                    out.append(values)
        finally:
            set_params(self.params, self.restore)
            if self.buffer_path:
                set_buffers(self.buffer_path, 0.0)
        return out


def error_metrics(
    x: Tensor,
    y: Tensor,
    eps: float,
    fields: Sequence[str],
    verify_methods: Sequence[str] = ("ibp", "crown-ibp"),
    pgd_steps: int = 10,
    domain: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 256,
) -> Callable[[nn.Module], dict[str, float]]:
    """A ``point_values`` function for :class:`DirectionEvaluator`: the errors ``fields`` (of
    :data:`ERROR_FIELDS`) of the model at the point on the scan's samples ``x`` [N, ...],
    ``y`` [N] at radius ``eps`` (:func:`train.evaluate.evaluate`):

    - ``clean_err`` = mean 1[argmax f(x) != y];
    - ``pgd_err`` = mean over samples of (misclassified clean, or broken by ``pgd_steps`` steps of
      L-inf PGD from a start seeded with ``seed``);
    - ``verified_err`` = 1 - mean 1[correct and some method of ``verify_methods`` proves every
      margin lower bound > 0] (the union of the bounds, as ``landscape certify`` reports it).

    Since a verified sample resists every attack, ``verified_err >= pgd_err >= clean_err`` at every
    point (the gap verified - PGD is what the bounds cannot certify)."""
    from train.evaluate import evaluate

    unknown = [f for f in fields if f not in ERROR_FIELDS]
    if unknown or not fields:
        raise ValueError(
            f"--fields: unknown field(s) {unknown or list(fields)}; choose from {', '.join(ERROR_FIELDS)}"
        )
    want = list(fields)
    dom = (0.0, 1.0) if domain is None else (float(domain[0]), float(domain[1]))
    methods = list(verify_methods) if "verified_err" in want else []
    steps = int(pgd_steps) if "pgd_err" in want else 0

    def point_values(model: nn.Module) -> dict[str, float]:
        res = evaluate(
            model,
            x,
            y,
            eps,
            methods=methods,
            pgd_steps=steps,
            domain=dom,
            seed=seed,
            batch_size=batch_size,
            progress=False,
        )
        return {f: float(res[f]) for f in want}

    return point_values


def sign_change_metrics(
    losses: Sequence[Any], labels: Sequence[str] | None = None
) -> Callable[[nn.Module, str], dict[str, float]]:
    """A ``point_metrics`` function for :class:`GradientEvaluator`: ``a_sign`` and ``sign_flip``
    (:func:`landscape.metrics.sign_changes`) of each loss's ``lower_A`` at the point against its
    value at the current parameters theta_0 (NaN for losses without one, e.g. IBP). Call it
    before moving the model."""
    labels = loss_labels(list(losses), labels)
    by_label = dict(zip(labels, losses))
    a0 = {lab: (fn.lower_A() if hasattr(fn, "lower_A") else None) for lab, fn in by_label.items()}

    def point_metrics(model: nn.Module, label: str) -> dict[str, float]:
        start = a0.get(label)
        if start is None:
            return {"a_sign": math.nan, "sign_flip": math.nan}
        return M.sign_changes(start, by_label[label].lower_A(model))

    return point_metrics

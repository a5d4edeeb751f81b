"""Scans of a loss along directions in parameter space.

Every scan evaluates losses ``L`` (see :mod:`landscape.losses`; several at once, labelled, over
the same points) at points theta(c) = theta_0 + sum_k c_k d_k of a grid of coefficients c:

- gradient scan (Lee et al. 2021): d = -lr * g, g = grad L_0(theta_0) the raw gradient of the
  first loss, c = t in ``t_values`` (default {0} U {1} U 10 log-spaced values from 0.5 to 5);
  at each point, for each loss L: L(theta_t), ||g_t||, cos(g, g_t), RMS(g_t - g) and the smoothness
  ||g_t - g|| / ||theta_t - theta_0||, where g = grad L(theta_0) of that same loss;
- 1-D and 2-D scans along random directions (:func:`landscape.directions.random_direction`);
- interpolation theta(alpha) = theta_1 + alpha (theta_2 - theta_1).

The model's parameters are moved in place and restored exactly afterwards. Points are computed
by *evaluators* (callables from a list of flat grid indices to their values), which
:func:`fill_scan` runs over the missing points of a :class:`landscape.store.ScanFile`,
writing as it goes; several points are evaluated in one batched pass with ``torch.func.vmap``
over stacked parameter sets when every loss allows it (the clean loss).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape import metrics as M
from landscape.directions import get_params, gradient_direction, named_params, perturbed, set_params
from landscape.store import ScanFile

__all__ = [
    "default_t_values",
    "grid_coords",
    "GradientEvaluator",
    "DirectionEvaluator",
    "fill_scan",
    "gradient_scan",
    "scan_1d",
    "scan_2d",
    "interpolate",
    "GRADIENT_FIELDS",
    "SIGN_FIELDS",
    "sign_change_metrics",
    "finish_scan",
]

LossFn = Callable[[nn.Module], Tensor]
GRADIENT_FIELDS = ("loss", "grad_norm", "cos", "rms", "smoothness")
SIGN_FIELDS = ("a_sign", "sign_flip")
Values = dict[str, dict[str, float]]  # label -> field -> value


def default_t_values(t_min: float = 0.5, t_max: float = 5.0, n: int = 10, include_one: bool = True) -> np.ndarray:
    """{0} U logspace(t_min, t_max, n) (U {1}), sorted; the paper's gradient-scan steps."""
    if not (0 < t_min < t_max) or not math.isfinite(t_max):
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if int(n) < 1:
        raise ValueError(f"the number of points must be >= 1, got {n}")
    ts = [0.0, *np.logspace(math.log10(t_min), math.log10(t_max), int(n)).tolist()]
    if include_one:
        ts.append(1.0)
    return np.unique(np.asarray(ts, dtype=np.float64))


def grid_coords(lo: float, hi: float, points: int) -> np.ndarray:
    """``points`` evenly spaced values from lo to hi (inclusive)."""
    if int(points) < 1:
        raise ValueError(f"the number of points must be >= 1, got {points}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"need a finite range lo <= hi, got {lo}, {hi}")
    return np.linspace(lo, hi, int(points))


def _loss_list(losses: Sequence[LossFn] | LossFn) -> list[LossFn]:
    """One loss or a sequence of losses, as a list."""
    return [losses] if callable(losses) and not isinstance(losses, (list, tuple)) else list(losses)


def _labels(losses: Sequence[LossFn], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        labels = [getattr(fn, "label", f"loss{i}") for i, fn in enumerate(losses)]
    labels = list(labels)
    if len(labels) != len(losses) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per loss, got {labels}")
    return labels


# ----------------------------------------------------------------------------- evaluators


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

    ``batch_size = None``: it takes any number of points per call (the caller picks the chunk).
    """

    batch_size: int | None = None

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[LossFn],
        t_values: Sequence[float],
        lr: float,
        labels: Sequence[str] | None = None,
        point_metrics: Callable[[nn.Module, str], dict[str, float]] | None = None,
        point_fields: Sequence[str] = (),
        direction: Sequence[Tensor] | None = None,
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"the learning rate must be a finite number > 0, got {lr!r}")
        self.model = model
        self.losses = list(losses)
        self.labels = _labels(self.losses, labels)
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
        self.direction = list(direction) if direction is not None else self.grad0[self.labels[0]]
        self.direction_norm = float(M.as_vector(self.direction).norm())

    def __call__(self, indices: Sequence[int]) -> list[Values]:
        out = []
        try:
            for i in indices:
                t = float(self.t_values[int(i)])
                set_params(self.params, self.base, [self.direction], [-t * self.lr])
                step = abs(t) * self.lr * self.direction_norm
                values: Values = {}
                for label, fn in zip(self.labels, self.losses):
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

    With ``vmap_batch > 1`` and every loss ``vmappable`` (see
    :class:`landscape.losses.LossClosure`), points are evaluated ``vmap_batch`` at a time in one
    ``torch.func.vmap`` pass over stacked parameter sets (``batch_size`` is then
    ``vmap_batch``: callers should pass chunks of that size); otherwise point by point with
    the parameters moved in place (any chunk size, ``batch_size = None``). On a CPU the
    vmapped pass measured slower than the loop (benchmarks/scan.py); on a GPU it batches small
    kernels.
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
    ) -> None:
        self.model = model
        self.losses = list(losses)
        self.labels = _labels(self.losses, labels)
        self.directions = [list(d) for d in directions]
        self.coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1, len(self.directions))
        self.restore = get_params(model)
        self.base = [b.detach().clone() for b in base] if base is not None else self.restore
        self.params = [p for _, p in named_params(model)]
        vm = all(getattr(fn, "vmappable", False) for fn in self.losses) and int(vmap_batch) > 1
        self.batch_size: int | None = int(vmap_batch) if vm else None

    def _vmapped(self, indices: Sequence[int]) -> list[Values]:
        names = [n for n, _ in named_params(self.model)]
        stacks = [perturbed(self.base, self.directions, self.coeffs[int(i)]) for i in indices]
        params = {n: torch.stack([s[k] for s in stacks]) for k, n in enumerate(names)}
        out: list[Values] = [{} for _ in indices]
        with torch.no_grad():
            for label, fn in zip(self.labels, self.losses):
                vals = torch.func.vmap(fn.functional)(params)  # type: ignore[attr-defined]
                for j, v in enumerate(vals.tolist()):
                    out[j][label] = {"loss": float(v)}
        return out

    def __call__(self, indices: Sequence[int]) -> list[Values]:
        indices = list(indices)
        if self.batch_size is not None:
            out: list[Values] = []
            for start in range(0, len(indices), self.batch_size):
                out.extend(self._vmapped(indices[start:start + self.batch_size]))
            return out
        out = []
        try:
            with torch.no_grad():
                for i in indices:
                    set_params(self.params, self.base, self.directions, self.coeffs[int(i)])
                    out.append({label: {"loss": float(fn(self.model))} for label, fn in zip(self.labels, self.losses)})
        finally:
            set_params(self.params, self.restore)
        return out


def sign_change_metrics(
    losses: Sequence[Any], labels: Sequence[str] | None = None
) -> Callable[[nn.Module, str], dict[str, float]]:
    """A ``point_metrics`` function for :class:`GradientEvaluator`: ``a_sign`` and ``sign_flip``
    (:func:`landscape.metrics.sign_changes`) of each loss's ``lower_A`` at the point against its
    value at the current parameters theta_0 (NaN for losses without one, e.g. IBP). Call it
    before moving the model."""
    labels = _labels(list(losses), labels)
    by_label = dict(zip(labels, losses))
    a0 = {lab: (fn.lower_A() if hasattr(fn, "lower_A") else None) for lab, fn in by_label.items()}

    def point_metrics(model: nn.Module, label: str) -> dict[str, float]:
        if a0.get(label) is None:
            return {"a_sign": math.nan, "sign_flip": math.nan}
        return M.sign_changes(a0[label], by_label[label].lower_A(model))

    return point_metrics


# ----------------------------------------------------------------------------- running


def fill_scan(
    scan: ScanFile,
    evaluator: Callable[[Sequence[int]], list[Values]],
    indices: Sequence[int] | None = None,
    flush_seconds: float = 2.0,
    progress: bool = True,
    on_point: Callable[[int], None] | None = None,
    summaries: Callable[[ScanFile], Mapping[str, Mapping[str, Any]]] | None = None,
) -> ScanFile:
    """Compute the missing points of ``scan`` (or ``indices``) and write them.

    The file is rewritten (atomically) at most every ``flush_seconds`` (or 20x the time a write
    takes, whichever is longer) and at the end, and also
    when an exception (e.g. KeyboardInterrupt) stops the scan, so a resume redoes little.
    ``on_point(n_done)`` is called after each point (tests raise from it to simulate a crash).
    When no point is missing any more, ``summaries(scan)`` (label -> attrs) is stored and the
    file is marked ``complete``.
    """
    from tqdm.auto import tqdm

    todo = list(scan.missing() if indices is None else indices)
    if not todo and scan.complete:
        return scan  # nothing to do: leave the file untouched
    chunker = Chunker(evaluator)
    last = time.monotonic()
    interval = flush_seconds
    done = 0
    pos = 0
    bar = tqdm(total=len(todo), desc=f"scan {scan.kind}", unit="pt", disable=not progress, leave=False)
    try:
        while pos < len(todo):
            chunk = todo[pos:pos + chunker.size]
            pos += len(chunk)
            t0 = time.perf_counter()
            results = evaluator(chunk)
            chunker.update(len(chunk), time.perf_counter() - t0)
            for idx, values in zip(chunk, results):
                for label, v in values.items():
                    scan.set_point(label, int(idx), v)
                done += 1
                bar.update(1)
                if on_point is not None:
                    on_point(done)
            if pos < len(todo) and time.monotonic() - last >= interval:  # finish_scan writes the last
                t0 = time.monotonic()
                scan.flush()
                last = time.monotonic()
                interval = max(flush_seconds, 20.0 * (last - t0))  # writing stays <= ~5% of the time
    except BaseException:
        if scan._dirty:
            scan.flush()
        raise
    finally:
        bar.close()
    finish_scan(scan, summaries)
    return scan


class Chunker:
    """How many points to hand an evaluator per call: its fixed ``batch_size`` (vmap), or
    adaptively as many as take about ``target_s`` seconds (1 for slow points, so progress
    and crash-safe writes stay fine-grained; up to ``max_size`` for fast ones, so per-call
    costs such as restoring the parameters are shared)."""

    def __init__(self, evaluator: Any, target_s: float = 0.1, max_size: int = 64) -> None:
        fixed = getattr(evaluator, "batch_size", None)
        self.fixed = int(fixed) if fixed else None
        self.size = self.fixed or 1
        self.target_s, self.max_size = target_s, max_size

    def update(self, n: int, seconds: float) -> None:
        if self.fixed is None and n > 0:
            per_point = max(seconds / n, 1e-6)
            self.size = int(max(1, min(self.max_size, self.target_s / per_point)))


def finish_scan(scan: ScanFile, summaries: Callable[[ScanFile], Mapping[str, Mapping[str, Any]]] | None = None) -> None:
    """Flush; when nothing is missing, store per-label summaries and mark the file complete."""
    complete = scan.missing().size == 0
    if complete:
        extra = summaries(scan) if summaries is not None else {}  # once: it may be costly (Hessian)
        for label in scan.labels:
            attrs = {"loss_variation": M.loss_variation(scan.data[label]["loss"])}
            attrs.update(extra.get(label, {}))
            scan.label_attrs.setdefault(label, {}).update(attrs)
    scan.flush(complete=complete)


def _collect(evaluator: Callable[[Sequence[int]], list[Values]], n: int, shape: tuple[int, ...]) -> dict[str, dict[str, np.ndarray]]:
    res: dict[str, dict[str, np.ndarray]] = {}
    for i, values in enumerate(evaluator(list(range(n)))):
        for label, v in values.items():
            for name, x in v.items():
                res.setdefault(label, {}).setdefault(name, np.full(n, np.nan))[i] = x
    return {lab: {k: a.reshape(shape) for k, a in d.items()} for lab, d in res.items()}


# ----------------------------------------------------------------------------- in-memory API


def gradient_scan(
    loss_fn: LossFn,
    model: nn.Module,
    t_values: Sequence[float] | None = None,
    lr: float = 1.0,
    extra_losses: Mapping[str, LossFn] | None = None,
    point_metrics: Callable[[nn.Module, str], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The gradient-direction scan in memory (see the module docstring).

    Returns ``{"t": [T], "loss", "grad_norm", "cos", "rms", "smoothness": [T],
    "loss_variation": float}`` for ``loss_fn`` and, for every ``extra_losses[name]`` (evaluated
    at the same points; its own gradient at theta_0 is the reference), the same under
    ``"<name>/<field>"`` and ``"<name>/loss_variation"``. Parameters are restored exactly.
    """
    t = default_t_values() if t_values is None else np.asarray(t_values, dtype=np.float64)
    extra = dict(extra_losses or {})
    labels = ["main", *extra.keys()]
    ev = GradientEvaluator(model, [loss_fn, *extra.values()], t, lr, labels=labels, point_metrics=point_metrics)
    res = _collect(ev, len(t), (len(t),))
    out: dict[str, Any] = {"t": t}
    for label in labels:
        prefix = "" if label == "main" else f"{label}/"
        for name, arr in res[label].items():
            out[prefix + name] = arr
        out[prefix + "loss_variation"] = M.loss_variation(res[label]["loss"])
    return out


def scan_1d(
    losses: Sequence[LossFn] | LossFn,
    model: nn.Module,
    direction: Sequence[Tensor],
    coords: Sequence[float],
    labels: Sequence[str] | None = None,
    vmap_batch: int = 1,
) -> dict[str, np.ndarray]:
    """label -> L(theta_0 + c d) for c in ``coords`` ([len(coords)])."""
    losses = _loss_list(losses)
    ev = DirectionEvaluator(model, losses, [direction], np.asarray(coords)[:, None], labels, vmap_batch=vmap_batch)
    res = _collect(ev, len(coords), (len(coords),))
    return {lab: d["loss"] for lab, d in res.items()}


def scan_2d(
    losses: Sequence[LossFn] | LossFn,
    model: nn.Module,
    dir_x: Sequence[Tensor],
    dir_y: Sequence[Tensor],
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str] | None = None,
    vmap_batch: int = 1,
) -> dict[str, np.ndarray]:
    """label -> L(theta_0 + a d_x + b d_y) on the grid a in xs, b in ys ([len(xs), len(ys)])."""
    losses = _loss_list(losses)
    coeffs = np.stack(np.meshgrid(np.asarray(xs), np.asarray(ys), indexing="ij"), axis=-1).reshape(-1, 2)
    ev = DirectionEvaluator(model, losses, [dir_x, dir_y], coeffs, labels, vmap_batch=vmap_batch)
    res = _collect(ev, len(coeffs), (len(xs), len(ys)))
    return {lab: d["loss"] for lab, d in res.items()}


def interpolate(
    losses: Sequence[LossFn] | LossFn,
    model: nn.Module,
    theta1: Sequence[Tensor],
    theta2: Sequence[Tensor],
    alphas: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    vmap_batch: int = 1,
) -> dict[str, np.ndarray]:
    """label -> L((1 - alpha) theta_1 + alpha theta_2) for alpha in ``alphas``
    (default 41 points in [-0.5, 1.5]). The model's own parameters are restored afterwards."""
    from landscape.directions import interpolation_direction

    alphas = grid_coords(-0.5, 1.5, 41) if alphas is None else np.asarray(alphas)
    losses = _loss_list(losses)
    d = interpolation_direction(theta1, theta2)
    ev = DirectionEvaluator(model, losses, [d], np.asarray(alphas)[:, None], labels, base=theta1, vmap_batch=vmap_batch)
    res = _collect(ev, len(alphas), (len(alphas),))
    return {lab: r["loss"] for lab, r in res.items()}

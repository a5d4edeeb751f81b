"""Scans of a loss along directions in parameter space, in memory.

Every scan evaluates losses ``L`` (closures ``fn(model) -> scalar``; several at once, labelled,
over the same points) at points theta(c) = theta_0 + sum_k c_k d_k of a grid of coefficients c:

- :func:`gradient_scan` (Lee et al. 2021): d = -lr * g, g = grad L_0(theta_0), c = t in
  ``t_values`` (default {0} U {1} U 10 log-spaced values from 0.5 to 5);
- :func:`scan_1d` and :func:`scan_2d` along given (e.g. random, filter-normalised) directions;
- :func:`interpolate`: theta(alpha) = theta_1 + alpha (theta_2 - theta_1).

The points are computed by the evaluators of :mod:`landscape.evaluators`; a scan written to a
file, resumable and split across processes, is :func:`landscape.scan_runner.run_scan`.
Definitions in ``docs/scans.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from common.names import SCAN_KINDS
from common.tensors import LossFn
from landscape import metrics as M
from landscape.evaluators import DirectionEvaluator, GradientEvaluator, Values

__all__ = [
    "default_t_values",
    "grid_coords",
    "with_endpoints",
    "parse_range",
    "gradient_scan",
    "scan_1d",
    "scan_2d",
    "interpolate",
]


def default_t_values(
    t_min: float = 0.5, t_max: float = 5.0, n: int = 10, include_one: bool = True
) -> np.ndarray:
    """{0} U logspace(t_min, t_max, n) (U {1}), sorted; the paper's gradient-scan steps."""
    if not (0 < t_min < t_max) or not math.isfinite(t_max):
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if int(n) < 1:
        raise ValueError(f"the number of points must be >= 1, got {n}")
    ts = [0.0, *np.logspace(math.log10(t_min), math.log10(t_max), int(n)).tolist()]
    if include_one:
        ts.append(1.0)
    return np.unique(np.asarray(ts, dtype=np.float64))


def check_float32_grid(
    option: str, lo: float, hi: float, text: object = None, positive: bool = False
) -> None:
    """ValueError naming ``option`` unless ``lo < hi`` are finite and stay finite, distinct (and
    for ``positive``, above 0) in float32, the type a scan file stores its grid in."""
    f32 = np.finfo(np.float32)
    given = text if text is not None else f"{lo}, {hi}"
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and (lo > 0 or not positive)):
        raise ValueError(f"{option}: need finite {'0 < ' if positive else ''}a < b, got {given!r}")
    if (
        max(abs(lo), abs(hi)) > float(f32.max)
        or not np.float32(lo) < np.float32(hi)
        or (positive and lo < float(f32.tiny))
    ):
        raise ValueError(
            f"{option}: the grid is stored in float32, so its ends must lie within "
            f"{f'[{f32.tiny:.3g}, {f32.max:.3g}]' if positive else f'+-{f32.max:.3g}'} and differ "
            f"there, got {given!r}"
        )


def grid_coords(lo: float, hi: float, points: int) -> np.ndarray:
    """``points`` evenly spaced values from lo to hi (inclusive); a single point is the centre of
    the scan, 0 (the checkpoint itself), when the range holds it, else the range's middle."""
    if int(points) < 1:
        raise ValueError(f"the number of points must be >= 1, got {points}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"need a finite range lo <= hi, got {lo}, {hi}")
    if int(points) == 1:
        return np.array([0.0 if lo <= 0.0 <= hi else (lo + hi) / 2])
    return np.linspace(lo, hi, int(points))


def parse_range(text: str | Sequence[float] | None, kind: str) -> tuple[float, float]:
    """``"a,b"`` or ``(a, b)`` -> (a, b) with finite a < b (default per kind)."""
    if text is None:
        return SCAN_KINDS[kind].range or (-1.0, 1.0)
    parts = [p.strip() for p in str(text).split(",")] if isinstance(text, str) else list(text)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"--range: expected two numbers 'a,b', got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"--range: need finite a < b, got {text!r}")
    check_float32_grid("--range", lo, hi, text)
    return lo, hi


def with_endpoints(alphas: Sequence[float], tol: float = 1e-9) -> np.ndarray:
    """``alphas`` with the two checkpoints of an interpolation in it: values within ``tol`` times
    the span of 0 or 1 become exactly 0 or 1, both are added when missing, and the result is
    sorted without repeats."""
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    span = max(float(a.max() - a.min()) if a.size else 0.0, 1.0)
    for end in (0.0, 1.0):
        a = np.where(np.abs(a - end) <= tol * span, end, a)
    return np.unique(np.concatenate([a, [0.0, 1.0]]))


def _loss_list(losses: Sequence[LossFn] | LossFn) -> list[LossFn]:
    """One loss or a sequence of losses, as a list."""
    return [losses] if callable(losses) and not isinstance(losses, (list, tuple)) else list(losses)


def _collect(
    evaluator: Callable[[Sequence[int]], list[Values]], n: int, shape: tuple[int, ...]
) -> dict[str, dict[str, np.ndarray]]:
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
    direction: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """The gradient-direction scan in memory (see the module docstring).

    Returns ``{"t": [T], "loss", "grad_norm", "cos", "rms", "smoothness": [T],
    "loss_variation": float}`` for ``loss_fn`` and, for every ``extra_losses[name]`` (evaluated
    at the same points; its own gradient at theta_0 is the reference), the same under
    ``"<name>/<field>"`` and ``"<name>/loss_variation"``. ``direction``: move along
    ``theta - t lr direction`` instead of ``loss_fn``'s gradient at theta (one tensor per
    parameter, e.g. the training step's own gradient). Parameters are restored exactly.
    """
    t = default_t_values() if t_values is None else np.asarray(t_values, dtype=np.float64)
    extra = dict(extra_losses or {})
    labels = ["main", *extra.keys()]
    ev = GradientEvaluator(
        model,
        [loss_fn, *extra.values()],
        t,
        lr,
        labels=labels,
        point_metrics=point_metrics,
        direction=direction,
    )
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
    ev = DirectionEvaluator(
        model, losses, [direction], np.asarray(coords)[:, None], labels, vmap_batch=vmap_batch
    )
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
    coeffs = np.stack(np.meshgrid(np.asarray(xs), np.asarray(ys), indexing="ij"), axis=-1).reshape(
        -1, 2
    )
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
    model2: nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """label -> L((1 - alpha) theta_1 + alpha theta_2) for alpha in ``alphas``
    (default 41 points in [-0.5, 1.5]). With ``model2`` (the second checkpoint's network, whose
    parameters are ``theta2``), the BatchNorm running statistics of ``model`` (those of theta_1)
    are interpolated too (:func:`landscape.directions.batchnorm_buffer_path`). The model's own
    parameters and buffers are restored afterwards."""
    from landscape.directions import batchnorm_buffer_path, interpolation_direction

    grid = grid_coords(-0.5, 1.5, 41) if alphas is None else np.asarray(alphas)
    losses = _loss_list(losses)
    d = interpolation_direction(theta1, theta2)
    path = batchnorm_buffer_path(model, model2) if model2 is not None else None
    ev = DirectionEvaluator(
        model,
        losses,
        [d],
        grid[:, None],
        labels,
        base=theta1,
        vmap_batch=vmap_batch,
        buffer_path=path,
    )
    res = _collect(ev, len(grid), (len(grid),))
    return {lab: r["loss"] for lab, r in res.items()}

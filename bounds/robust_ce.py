"""``robust_cross_entropy``: the certified loss, an upper bound of the worst-case
cross-entropy over the ball.

Unfused: :func:`bounds.spec.margin_ce` of the margin lower bounds (``C = margin_spec(y)``),
``CE([0, -lower], 0) = log(1 + sum_j exp(-lower_j))`` per sample; since ``f_j - f_y <= -lower_j``
for every ``x'``, this bounds ``CE(f(x'), y)``.
Fused (``fused=True``): :func:`bounds.fused.fused_loss` (one backward row per sample).
``fused="min"``: per sample, the smaller of the fused bound and the IBP bound (never looser than
IBP; see :mod:`bounds.fused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bounds import mode
from bounds.bound_spec import BoundSpec
from bounds.compute import bounds_from
from bounds.fused import fused_loss
from bounds.network import layer_ops
from bounds.spec import check_eps, check_x, margin_ce, margin_spec

REDUCTIONS = ("mean", "sum", "none")
SEARCH_OPTIONS = ("loss_fn", "opt_steps", "opt_lr", "generator")


def robust_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Certified cross-entropy ``>= max_{x' in ball} CE(model(x'), y)`` by ``spec``: with
    ``spec.fused`` False ``margin_ce`` of the margin lower bounds, ``log(1 + sum_j
    exp(-lower_j))``; True the one-row fused bound; ``"min"`` per sample the smaller of the fused
    bound and the IBP bound. ``x`` ``[B, *input_shape]``, ``y`` ``[B]`` labels, ``eps`` float or
    ``[B]``; ``reduction``: ``mean``, ``sum`` or ``none`` (``[B]``). Runs in the mode
    ``spec.compile`` selects (:func:`bounds.mode.engine`). The keyword form is
    :func:`robust_cross_entropy`."""
    check_x(x)
    eps = check_eps(eps, x.shape[0])
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    ops = layer_ops(model, tuple(x.shape[1:]), x.dtype, x.device, x=x)
    n = ops[-1].out_shape[0]
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(
            f"y must be a tensor of {x.shape[0]} labels, got {getattr(y, 'shape', type(y))}"
        )
    with mode.engine(spec.compile):
        if spec.fused:
            loss = fused_loss(ops, x, y, eps, spec, generator)
        else:
            C = margin_spec(y, n).to(dtype=x.dtype, device=x.device)
            res = bounds_from(ops, x, eps, spec, C, generator, need_upper=False)
            loss = margin_ce(res.lower)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def robust_cross_entropy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "crown-ibp",
    slope: str | None = None,
    beta: float = 1.0,
    domain: Sequence[float] | None = (0.0, 1.0),
    fused: bool | str = False,
    reduction: str = "mean",
    compile: bool = False,
    **kw: Any,
) -> torch.Tensor:
    """Certified cross-entropy: ``>= max_{x' in ball} CE(model(x'), y)`` per sample.

    Args as :func:`bounds.compute_bounds`; ``y`` ``[B]`` integer labels; ``fused``: False (the
    robust cross-entropy of the margin bounds), True (the one-row fused bound) or ``"min"`` (per
    sample, the smaller of the fused bound and the IBP bound); ``reduction``: ``mean``, ``sum``
    or ``none`` (``[B]``); ``compile``: compiled element-wise kernels, cached on disk
    (:mod:`bounds.compiled`; the same values to float rounding).
    ``kw``: ``loss_fn``, ``opt_steps``, ``opt_lr``, ``generator`` (see ``compute_bounds``).
    The keyword form of :func:`robust_loss`, which takes a :class:`bounds.BoundSpec`.
    """
    search = {k: kw[k] for k in ("loss_fn", "opt_steps", "opt_lr") if k in kw}
    spec = BoundSpec(method, slope, beta, domain, fused, compile, **search)
    unknown = set(kw) - set(SEARCH_OPTIONS)
    if unknown:
        raise ValueError(
            f"unexpected keyword argument(s) {sorted(unknown)} for robust_cross_entropy"
        )
    return robust_loss(model, x, y, eps, spec, kw.get("generator"), reduction)

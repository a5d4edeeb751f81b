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

from bounds import compiled
from bounds.compute import bounds_from
from bounds.fused import fused_loss
from bounds.network import layer_ops
from bounds.spec import (
    check_beta,
    check_domain,
    check_eps,
    check_method_slope,
    check_opt,
    check_x,
    margin_ce,
    margin_spec,
)
from common.names import engine_method

REDUCTIONS = ("mean", "sum", "none")
FUSED = (False, True, "min")


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
    """
    check_x(x)
    slope = check_method_slope(method, slope)
    method, slope, beta = engine_method(method, slope, check_beta(beta))
    eps = check_eps(eps, x.shape[0])
    domain = check_domain(domain)
    if fused not in FUSED:
        raise ValueError(f"fused must be one of {', '.join(map(repr, FUSED))}, got {fused!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    unknown = set(kw) - {"loss_fn", "opt_steps", "opt_lr", "generator"}
    if unknown:
        raise ValueError(
            f"unexpected keyword argument(s) {sorted(unknown)} for robust_cross_entropy"
        )
    opt_steps, opt_lr = check_opt(kw.get("opt_steps", 20), kw.get("opt_lr", 0.1))
    ops = layer_ops(model, tuple(x.shape[1:]), x.dtype, x.device, x=x)
    n = ops[-1].out_shape[0]
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(
            f"y must be a tensor of {x.shape[0]} labels, got {getattr(y, 'shape', type(y))}"
        )
    if fused:
        loss = fused_loss(
            ops,
            x,
            y,
            eps,
            method,
            slope,
            beta,
            domain,
            kw.get("loss_fn"),
            opt_steps,
            opt_lr,
            kw.get("generator"),
            compiled.kernels(bool(compile)),
            keep_ibp=fused == "min",
        )
    else:
        C = margin_spec(y, n).to(dtype=x.dtype, device=x.device)
        res = bounds_from(
            ops,
            x,
            eps,
            method,
            slope,
            C,
            beta,
            domain,
            kw.get("loss_fn"),
            opt_steps,
            opt_lr,
            kw.get("generator"),
            need_upper=False,
            compile=bool(compile),
        )
        loss = margin_ce(res.lower)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss

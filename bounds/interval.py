"""Interval bound propagation (IBP) in centre/radius form, and the input box.

A box ``[lo, hi]`` is carried as centre ``c = (lo + hi) / 2`` and radius ``r = (hi - lo) / 2``
(both ``[B, *shape]``). Through an affine layer ``z -> W z + b``: ``c' = W c + b``,
``r' = |W| r`` (exact for one layer). Through ReLU (monotone): ``[relu(c - r), relu(c + r)]``.
Normalize ``(z - mean) / std`` scales both by ``1 / std`` (std > 0), Flatten reshapes.

With a specification ``C`` ``[B, S, n_out]`` and a final Linear layer, the last layer is merged
with ``C`` ("elision"): ``W' = C W`` ``[B, S, n_in]``, ``b' = C b``, then
``lower = W' c + b' - |W'| r``; this is tighter than applying ``C`` to the output interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from bounds.network import LayerOp


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-channel vector ``[C]`` so it broadcasts over ``[..., C, *spatial]`` (ndim = 1 + #spatial)."""
    return t.view(-1, *([1] * (ndim - 1)))


def input_box(
    x: torch.Tensor, eps: Union[float, torch.Tensor], domain: Optional[Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius ``[B, *input_shape]`` of the box ``[x - eps, x + eps]`` clipped to ``domain``.

    ``eps``: float or ``[B]`` tensor. The clipped box is ``[max(x - eps, lo), min(x + eps, hi)]``,
    widened if needed so that it always contains ``x`` itself (so ``eps = 0`` is exact even for
    an ``x`` marginally outside the domain).
    """
    if isinstance(eps, torch.Tensor):
        e = eps.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
    else:
        e = float(eps)
    lo, hi = x - e, x + e
    if domain is not None:
        lo = torch.minimum(lo.clamp(min=float(domain[0])), x)
        hi = torch.maximum(hi.clamp(max=float(domain[1])), x)
    return (lo + hi) * 0.5, (hi - lo) * 0.5


def affine_forward(op: LayerOp, z: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """Apply the affine op to ``z`` ``[B, *in_shape]`` (``with_bias=False``: its linear part only)."""
    if op.kind == "linear":
        return F.linear(z, op.weight, op.bias if with_bias else None)
    if op.kind == "conv":
        return F.conv2d(z, op.weight, op.bias if with_bias else None, **op.conv_args)
    if op.kind == "normalize":
        nd = z.dim() - 1
        zz = z - channel_view(op.bias, nd) if with_bias else z
        return zz / channel_view(op.weight, nd)
    if op.kind == "flatten":
        return z.reshape(z.shape[0], -1)
    raise ValueError(f"op {op.kind} is not affine")


def radius_forward(op: LayerOp, r: torch.Tensor) -> torch.Tensor:
    """Propagate a radius ``r >= 0`` through an affine op: ``|W| r``."""
    if op.kind == "linear":
        return F.linear(r, op.weight.abs())
    if op.kind == "conv":
        return F.conv2d(r, op.weight.abs(), None, **op.conv_args)
    return affine_forward(op, r, with_bias=False)  # normalize (std > 0) and flatten


class _IntervalRelu(torch.autograd.Function):
    """ReLU on a box in centre/radius form, fused: ``(c, r) -> (l, u, c', r')`` with
    ``l = c - r``, ``u = c + r`` (the pre-activation bounds) and ``c' = (relu(u) + relu(l)) / 2``,
    ``r' = (relu(u) - relu(l)) / 2``. Backward with ``p = 1[u > 0]``, ``q = 1[l > 0]``:
    ``dhi = p (gc' + gr') / 2``, ``dlo = q (gc' - gr') / 2``, ``dc = dhi + dlo + gl + gu``,
    ``dr = dhi - dlo - gl + gu`` (no ``torch.where``; differentiable again for double backward).
    """

    @staticmethod
    def forward(ctx, c, r):  # type: ignore[override]
        l, u = c - r, c + r
        hi, lo = u.clamp(min=0), l.clamp(min=0)
        c2 = torch.add(hi, lo).mul_(0.5)
        r2 = hi.sub_(lo).mul_(0.5)
        ctx.save_for_backward(l, u)
        return l, u, c2, r2

    @staticmethod
    def backward(ctx, gl, gu, gc, gr):  # type: ignore[override]
        l, u = ctx.saved_tensors
        zero = torch.zeros((), dtype=l.dtype, device=l.device)
        gc = zero if gc is None else gc
        gr = zero if gr is None else gr
        dhi = (gc + gr) * (u > 0).to(u.dtype)
        dlo = (gc - gr) * (l > 0).to(l.dtype)
        dc = (dhi + dlo) * 0.5
        dr = (dhi - dlo) * 0.5
        if gl is not None:
            dc, dr = dc + gl, dr - gl
        if gu is not None:
            dc, dr = dc + gu, dr + gu
        return dc.expand_as(l), dr.expand_as(l)


@dataclass
class IntervalResult:
    """IBP output. ``lower``/``upper``: ``[B, S]`` bounds of ``C f`` (of ``f`` when C is None).
    ``preact``: ``{op index of ReLU: (l, u)}`` with ``l, u`` ``[B, *shape]``."""

    lower: torch.Tensor
    upper: torch.Tensor
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]]


def ibp(ops: list[LayerOp], center: torch.Tensor, radius: torch.Tensor, C: Optional[torch.Tensor] = None) -> IntervalResult:
    """Interval bounds of every ReLU's input and of ``C f(x')`` over the box (``center``, ``radius``).

    ``C``: ``[B, S, n_out]`` or None. Shapes: ``center``, ``radius`` ``[B, *input_shape]``.
    """
    c, r = center, radius
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    last = len(ops) - 1
    for k, op in enumerate(ops):
        if op.kind == "relu":
            l, u, c, r = _IntervalRelu.apply(c, r)
            preact[k] = (l, u)
        elif k == last and op.kind == "linear" and C is not None:
            W = torch.matmul(C, op.weight)  # [B, S, n_in]
            mid = torch.bmm(W, c.unsqueeze(-1)).squeeze(-1)
            if op.bias is not None:
                mid = mid + torch.matmul(C, op.bias)
            rad = torch.bmm(W.abs(), r.unsqueeze(-1)).squeeze(-1)
            return IntervalResult(mid - rad, mid + rad, preact)
        else:
            c, r = affine_forward(op, c), radius_forward(op, r)
    if C is not None:
        mid = torch.bmm(C, c.unsqueeze(-1)).squeeze(-1)
        rad = torch.bmm(C.abs(), r.unsqueeze(-1)).squeeze(-1)
        return IntervalResult(mid - rad, mid + rad, preact)
    return IntervalResult(c - r, c + r, preact)

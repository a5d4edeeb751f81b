"""Interval bound propagation (IBP) in centre/radius form, and the input box.

A box ``[lo, hi]`` is carried as centre ``c = (lo + hi) / 2`` and radius ``r = (hi - lo) / 2``
(both ``[B, *shape]``). Through an affine layer ``z -> W z + b``: ``c' = W c + b``,
``r' = |W| r`` (exact for one layer). Through ReLU (monotone): ``[relu(c - r), relu(c + r)]``.
Normalize ``(z - mean) / std`` scales both by ``1 / std`` (std > 0), BatchNorm's per-channel
``w z + b`` maps them to ``w c + b`` and ``|w| r`` (exact), Flatten reshapes. A residual block
(``fork``, branch, ``swap``, shortcut, ``add``; :mod:`bounds.network`) bounds both paths from the
same box and adds their centres and radii: ``[l1 + l2, u1 + u2]`` contains every ``y1 + y2``.

After a ReLU the pass carries *twice* the centre and radius (``relu(u) + relu(l)`` and
``relu(u) - relu(l)``) and folds the factor 1/2 into the next affine layer's (small) weight
instead of scaling the (large) activations: ``W (2c) / 2 = (W / 2)(2c)`` exactly in floating
point, since halving is exact.

Layout. Image-shaped boxes enter every convolution channels-last (``[B, H, W, C]`` in memory),
where oneDNN's convolutions and their gradients are faster; a single-channel input is only
viewed so (the same memory), which makes oneDNN return the first convolution's output
channels-last instead of a tensor the next layer would have to copy. A Flatten followed by a
Linear layer flattens in that order and permutes the Linear layer's columns to match, so
nothing large is copied. The pre-activation bounds in ``preact`` are then channels-last tensors
with the usual shape.

With a specification ``C`` ``[B, S, n_out]`` and a final Linear layer, the last layer is merged
with ``C`` ("elision"): ``W' = C W`` ``[B, S, n_in]``, ``b' = C b``, then
``lower = W' c + b' - |W'| r``; this is tighter than applying ``C`` to the output interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bounds import mode
from bounds.compiled import interval_relu_forward
from bounds.network import STACK_KINDS, LayerOp


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-channel vector ``[C]`` so it broadcasts over ``[..., C, *spatial]`` (ndim = 1 + #spatial)."""
    return t.view(-1, *([1] * (ndim - 1)))


def input_bounds(
    x: torch.Tensor, eps: float | torch.Tensor, domain: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper corners ``[B, *input_shape]`` of the box ``[x - eps, x + eps]`` clipped to
    ``domain``: ``[max(x - eps, lo), min(x + eps, hi)]``, widened if needed so that it always
    contains ``x`` itself (so ``eps = 0`` is exact even for an ``x`` marginally outside the domain).

    ``eps``: float, ``[B]`` tensor, or a tensor that already broadcasts as ``[B, 1, ..., 1]``.
    """
    if isinstance(eps, torch.Tensor):
        e = eps.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
    else:
        e = float(eps)
    lo, hi = x - e, x + e
    if domain is not None:
        lo = torch.minimum(lo.clamp(min=float(domain[0])), x)
        hi = torch.maximum(hi.clamp(max=float(domain[1])), x)
    return lo, hi


def input_box(
    x: torch.Tensor, eps: float | torch.Tensor, domain: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius ``[B, *input_shape]`` of the clipped input box of :func:`input_bounds`."""
    lo, hi = input_bounds(x, eps, domain)
    return (lo + hi) * 0.5, (hi - lo) * 0.5


def affine_forward(op: LayerOp, z: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """Apply the affine op to ``z`` ``[B, *in_shape]`` (``with_bias=False``: its linear part only)."""
    if op.kind == "linear":
        return F.linear(z, op.w, op.bias if with_bias else None)
    if op.kind == "conv":
        return F.conv2d(z, op.w, op.bias if with_bias else None, **op.conv)
    if op.kind == "normalize":
        nd = z.dim() - 1
        zz = z - channel_view(op.b, nd) if with_bias else z
        return zz / channel_view(op.w, nd)
    if op.kind == "flatten":
        return z.reshape(z.shape[0], -1)
    if op.kind == "scale":
        if op.weight is None:
            raise ValueError(
                "a training-mode BatchNorm needs the clean batch for its statistics (layer_ops(..., x=x))"
            )
        nd = z.dim() - 1
        return (
            z * channel_view(op.w, nd) + channel_view(op.b, nd)
            if with_bias
            else z * channel_view(op.w, nd)
        )
    raise ValueError(f"op {op.kind} is not affine")


def radius_forward(op: LayerOp, r: torch.Tensor) -> torch.Tensor:
    """Propagate a radius ``r >= 0`` through an affine op: ``|W| r``."""
    if op.kind == "linear":
        return F.linear(r, op.w.abs())
    if op.kind == "conv":
        return F.conv2d(r, op.w.abs(), None, **op.conv)
    if op.kind == "scale":
        return r * channel_view(op.w.abs(), r.dim() - 1)
    return affine_forward(op, r, with_bias=False)  # normalize (std > 0) and flatten


def _step(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``g * 1[z > 0]`` in one pass, without a mask tensor (torch's own ReLU gradient kernel,
    itself differentiable)."""
    return torch.ops.aten.threshold_backward(g, z, 0)


class _IntervalRelu(torch.autograd.Function):
    """ReLU on a box in centre/radius form, fused: ``(c, r) -> (l, u, 2c', 2r')`` with
    ``l = c - r``, ``u = c + r`` (the pre-activation bounds) and ``2c' = relu(u) + relu(l)``,
    ``2r' = relu(u) - relu(l)`` (twice the new centre and radius; see the module doc).
    Backward (``gc``, ``gr`` the gradients of ``2c'``, ``2r'``): ``du = 1[u > 0] (gc + gr)``,
    ``dl = 1[l > 0] (gc - gr)``, ``dc = du + dl + gl + gu``, ``dr = du - dl - gl + gu`` (no
    ``torch.where``, no mask tensors; gradients that were not asked for stay None instead of
    being filled with zeros; differentiable again for double backward). In the compiled mode
    (:mod:`bounds.mode`) both run as compiled kernels (the backward with those of the forward).
    """

    @staticmethod
    def forward(ctx, c, r):
        ctx.set_materialize_grads(False)
        kernels = mode.active_kernels()
        ctx.kernels = kernels
        # one body (bounds.compiled.interval_relu_forward), run eagerly or as a compiled kernel
        fwd = interval_relu_forward if kernels is None else kernels.interval_forward
        l, u, c2, r2 = fwd(c, r)
        ctx.save_for_backward(l, u)
        return l, u, c2, r2

    @staticmethod
    def backward(ctx, gl, gu, gc, gr):
        l, u = ctx.saved_tensors
        if ctx.kernels is not None and not torch.is_grad_enabled():
            if gl is None and gu is None and gc is None and gr is None:
                return None, None
            return ctx.kernels.interval_backward(l, u, gl, gu, gc, gr)
        dc = dr = None
        if gc is not None or gr is not None:
            if gc is None:
                plus, minus = gr, -gr
            elif gr is None:
                plus, minus = gc, gc
            else:
                plus, minus = gc + gr, gc - gr
            du, dl = _step(plus, u), _step(minus, l)
            dc = du + dl
            dr = du.sub_(dl)
        for g, sign in ((gl, -1.0), (gu, 1.0)):
            if g is not None:  # (never modify an incoming gradient in place)
                dc = g.clone() if dc is None else dc.add_(g)
                dr = g * sign if dr is None else dr.add_(g, alpha=sign)
        if dc is None:
            return None, None
        return dc.expand_as(l), dr.expand_as(l)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, C, H, W]`` in channels-last memory order (``[B, H, W, C]``), where oneDNN's
    convolutions and their gradients are faster: copied unless it already is, except that a
    contiguous single-channel ``t`` is only viewed with channels-last strides (the same memory).
    That view matters: oneDNN then returns the convolution's output channels-last, which the
    next layers want, instead of a ``[B, C, H, W]`` output that must be copied into that layout."""
    if t.shape[1] == 1 and t.is_contiguous():
        B, _, H, W = t.shape
        return t.view(B, H, W, 1).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last)


def is_channels_last(t: torch.Tensor) -> bool:
    """True if ``t`` ``[B, C, H, W]`` (``C > 1``) is stored in memory order ``[B, H, W, C]``."""
    return (
        t.dim() == 4
        and t.shape[1] > 1
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def hwc_columns(weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A Linear weight ``[out, C*H*W]`` on a flattened ``[C, H, W]`` input, with its columns in
    channels-last order ``(H, W, C)``."""
    C, H, W = shape
    return weight.reshape(-1, C, H, W).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _affine_box(
    op: LayerOp, c: torch.Tensor, r: torch.Tensor, twice: bool, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box after the affine op ``op``; ``twice``: ``c``, ``r`` hold twice the centre and
    radius (the halving then goes into the weight of a linear or conv layer); ``weight``: the
    op's weight, possibly with permuted columns (see :func:`hwc_columns`)."""
    if op.kind in ("linear", "conv"):
        W = weight * 0.5 if twice else weight
        if op.kind == "linear":
            return F.linear(c, W, op.bias), F.linear(r, W.abs())
        return F.conv2d(c, W, op.bias, **op.conv), F.conv2d(r, W.abs(), None, **op.conv)
    if twice and op.kind != "flatten":
        c, r = c * 0.5, r * 0.5
    return affine_forward(op, c), radius_forward(op, r)


@dataclass
class IntervalResult:
    """IBP output. ``lower``/``upper``: ``[B, S]`` bounds of ``C f`` (of ``f`` when C is None).
    ``preact``: ``{op index of ReLU: (l, u)}`` with ``l, u`` ``[B, *shape]``."""

    lower: torch.Tensor
    upper: torch.Tensor
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]]


def ibp(
    ops: list[LayerOp],
    center: torch.Tensor,
    radius: torch.Tensor,
    C: torch.Tensor | None = None,
) -> IntervalResult:
    """Interval bounds of every ReLU's input and of ``C f(x')`` over the box (``center``, ``radius``),
    in the current mode (:mod:`bounds.mode`).

    ``C``: ``[B, S, n_out]`` or None. Shapes: ``center``, ``radius`` ``[B, *input_shape]``.
    """
    c, r = center, radius
    fast = not mode.vmapped()  # vmap mode: standard operations only (bounds/mode.py)
    twice = False  # c, r hold twice the centre and radius (after a ReLU)
    hwc: tuple[int, ...] | None = None  # c, r: a [C, H, W] flattened in channels-last order
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    stack: list[tuple[torch.Tensor, torch.Tensor]] = []  # boxes held by residual blocks
    last = len(ops) - 1
    for k, op in enumerate(ops):
        weight = op.weight
        if hwc is not None:
            weight, hwc = hwc_columns(op.w, hwc), None
        if op.kind in STACK_KINDS:
            if twice:
                c, r, twice = c * 0.5, r * 0.5, False
            if op.kind == "fork":
                stack.append((c, r))
            elif op.kind == "swap":
                (c, r), stack[-1] = stack[-1], (c, r)
            else:
                c0, r0 = stack.pop()
                c, r = c + c0, r + r0
        elif op.kind == "relu":
            if twice:
                c, r = c * 0.5, r * 0.5
            l, u, c, r = _IntervalRelu.apply(c, r) if fast else interval_relu_forward(c, r)
            twice = True
            preact[k] = (l, u)
        elif (
            op.kind == "flatten"
            and fast
            and is_channels_last(c)
            and k < last
            and ops[k + 1].kind == "linear"
        ):
            hwc = tuple(c.shape[1:])
            c, r = (t.permute(0, 2, 3, 1).reshape(t.shape[0], -1) for t in (c, r))
        elif k == last and op.kind == "linear" and C is not None:
            W = torch.matmul(C, weight)  # [B, S, n_in]
            if twice:
                W = W * 0.5
            mid = torch.bmm(W, c.unsqueeze(-1)).squeeze(-1)
            if op.bias is not None:
                mid = mid + torch.matmul(C, op.bias)
            rad = torch.bmm(W.abs(), r.unsqueeze(-1)).squeeze(-1)
            return IntervalResult(mid - rad, mid + rad, preact)
        else:
            if fast and op.kind == "conv":
                c, r = channels_last(c), channels_last(r)
            c, r = _affine_box(op, c, r, twice, weight)
            twice = twice and op.kind == "flatten"
    if twice:
        c, r = c * 0.5, r * 0.5
    if C is not None:
        mid = torch.bmm(C, c.unsqueeze(-1)).squeeze(-1)
        rad = torch.bmm(C.abs(), r.unsqueeze(-1)).squeeze(-1)
        return IntervalResult(mid - rad, mid + rad, preact)
    return IntervalResult(c - r, c + r, preact)

"""The backward linear pass (CROWN): a lower bound of ``A . f_p(x')`` over the input box.

``f_p`` is the network up to position ``p`` (the input of ``ops[p]``). Starting from
coefficients ``A`` ``[B, S, *shape_p]`` and a bias ``b = 0`` ``[B, S]``, the pass walks the ops
from ``p - 1`` down to 0 keeping ``A . f_p = A_k . z_k + b`` valid (or a lower bound of it):

- Linear ``z' = W z + c``:  ``b += A c``, ``A <- A W``;
- Conv2d: ``b += sum_hw(A) . c``, ``A <- conv2d_input(A)`` (the framework's own transpose);
- Flatten: ``A`` reshaped to the input shape;
- Normalize ``z' = (z - m) / s``: ``A <- A / s``, ``b -= (A / s) . m``;
- ReLU with lines ``a z <= relu(z) <= s z + t``: with ``A+ = max(A, 0)``, ``A- = min(A, 0)``,
  ``A <- A+ a + A- s`` and ``b += A- . t`` (positive coefficients take the lower line,
  negative ones the upper line).

At the input, with box centre ``c`` and radius ``r``: ``lower = A . c - |A| . r + b``.
An upper bound of ``A . f`` is ``-(lower bound of -A . f)``; callers stack ``[A, -A]`` to get
both in one pass.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.nn.grad import conv2d_input

from bounds.interval import channel_view
from bounds.network import LayerOp
from bounds.relaxations import Relaxation


def _dot(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, S, *shape] . [B, *shape] -> [B, S]`` (contracting all per-sample dims)."""
    return torch.bmm(A.flatten(2), v.flatten(1).unsqueeze(-1)).squeeze(-1)


class _ReluStep(torch.autograd.Function):
    """Fused ReLU step of the lower-bound pass on flat tensors, written with clamps and fused
    multiply-adds only (``torch.where`` on large broadcast tensors is several times slower).

    Forward: ``A`` ``[B, S, N]``, lines ``a, s, t`` ``[B, N]``; with ``A- = min(A, 0)``:
    ``A' = a A + (s - a) A-`` ``[B, S, N]`` and ``db = A- . t`` ``[B, S]``.
    Backward (``G = dL/dA'``, ``g = dL/db``, ``n = 1[A < 0] = -sign(A-)``):
    ``dA = a G + n ((s - a) G + g t)``, ``ds = sum_S G A-``, ``da = sum_S G A - ds``,
    ``dt = sum_S g A-``. The backward is built from differentiable ops, so double backward
    (Hessian-vector products) works.
    """

    @staticmethod
    def forward(ctx, A, a, s, t):  # type: ignore[override]
        An = A.clamp(max=0)
        new_A = torch.addcmul(A * a.unsqueeze(1), An, (s - a).unsqueeze(1))
        db = torch.bmm(An, t.unsqueeze(-1)).squeeze(-1)
        # save the input A (not A-, a non-input): double backward needs the link to A
        ctx.save_for_backward(A, a, s, t)
        return new_A, db

    @staticmethod
    def backward(ctx, G, g):  # type: ignore[override]
        A, a, s, t = ctx.saved_tensors
        need_A, need_a, need_s, need_t = ctx.needs_input_grad
        dA = da = ds = dt = None
        An = A.clamp(max=0)
        if G is None:
            G = torch.zeros_like(An)
        if g is None:
            g = An.new_zeros(An.shape[:2])
        if need_A:
            H = torch.baddbmm(G * (s - a).unsqueeze(1), g.unsqueeze(-1), t.unsqueeze(1))
            dA = torch.addcmul(G * a.unsqueeze(1), torch.sign(An), H, value=-1.0)
        if need_s or need_a:
            ds = (G * An).sum(1)
            if need_a:
                da = (G * A).sum(1) - ds
            if not need_s:
                ds = None
        if need_t:
            dt = torch.bmm(g.unsqueeze(1), An).squeeze(1)
        return dA, da, ds, dt


def relu_backward(A: torch.Tensor, relax: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """One ReLU step of the lower-bound pass. ``A`` ``[B, S, *shape]``, lines ``[B, *shape]``.

    Returns ``(A', db)``: ``A' = A+ a + A- s`` (``[B, S, *shape]``), ``db = A- . t`` (``[B, S]``):
    positive coefficients take the lower line, negative ones the upper line.
    """
    B, S = A.shape[:2]
    a, s, t = (v.reshape(B, -1) for v in relax)
    new_A, db = _ReluStep.apply(A.reshape(B, S, -1), a, s, t)
    return new_A.view(A.shape), db


def affine_backward(op: LayerOp, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pull ``A`` ``[B, S, *out_shape]`` back through an affine op: ``(A W, A . bias)``."""
    B, S = A.shape[:2]
    if op.kind == "linear":
        db = torch.matmul(A, op.bias) if op.bias is not None else None
        return torch.matmul(A, op.weight), db
    if op.kind == "conv":
        db = torch.matmul(A.sum((-2, -1)), op.bias) if op.bias is not None else None
        flat = A.reshape(B * S, *op.out_shape)
        back = conv2d_input((B * S, *op.in_shape), op.weight, flat, **op.conv_args)
        return back.reshape(B, S, *op.in_shape), db
    if op.kind == "flatten":
        return A.reshape(B, S, *op.in_shape), None
    if op.kind == "normalize":
        A = A / channel_view(op.weight, len(op.in_shape))
        db = -(A.flatten(3).sum(-1) if A.dim() > 3 else A) @ op.bias
        return A, db
    raise ValueError(f"op {op.kind} is not affine")


def backward_bound(
    ops: list[LayerOp],
    position: int,
    A: torch.Tensor,
    relax: Mapping[int, Relaxation],
    center: torch.Tensor,
    radius: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound of ``A . f_position(x')`` over the box, and the input coefficients.

    ``A``: ``[B, S, *shape_at(position)]``; ``relax``: lines for every ReLU op index below
    ``position``; ``center``, ``radius``: ``[B, *input_shape]``.
    Returns ``(lower [B, S], A_in [B, S, *input_shape])``.
    """
    bias = None
    for k in range(position - 1, -1, -1):
        op = ops[k]
        if op.kind == "relu":
            A, db = relu_backward(A, relax[k])
        else:
            A, db = affine_backward(op, A)
        if db is not None:
            bias = db if bias is None else bias + db
    lower = _dot(A, center) - _dot(A.abs(), radius)
    if bias is not None:
        lower = lower + bias
    return lower, A

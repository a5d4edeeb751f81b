"""Linear relaxations of ReLU: pre-activation bounds in, lower and upper lines out.

For a neuron with pre-activation bounds ``l <= z <= u``:

- stable active (``l >= 0 < u``): ``relu(z) = z``: lower slope 1, upper slope 1, intercept 0;
- stable dead (``u <= 0``, including ``l = u = 0``, matching torch's ``relu'(0) = 0``):
  ``relu(z) = 0``: lower slope 0, upper slope 0, intercept 0;
- unstable (``l < 0 < u``): upper line ``relu(z) <= s (z - l)`` with ``s = u / (u - l)``,
  i.e. slope ``s`` and intercept ``-s l``; lower line ``relu(z) >= a z`` with ``a in [0, 1]``
  chosen by a *lower-slope policy* (one function per policy below).

Every policy has the signature ``policy(l, u, generator=None) -> Relaxation`` with ``l, u``
``[B, *shape]`` and returns tensors of the same shape and dtype. Divisions use a safe
denominator (``u - l`` where unstable, 1 elsewhere) so nothing is NaN or infinite for finite
bounds, also when ``u == l``. ``optimized`` and ``tightest`` return their *starting* slopes
here (adaptive and uniform); the search itself lives in :mod:`bounds.slope_search`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from bounds import compiled, mode


class Relaxation(NamedTuple):
    """Lines of one ReLU layer, each ``[B, *shape]``: ``a z <= relu(z) <= s z + t``."""

    lower_slope: torch.Tensor
    upper_slope: torch.Tensor
    upper_intercept: torch.Tensor


def upper_line(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper line ``(s, t)`` of relu on ``[l, u]``: chord ``s = u / (u - l)``, ``t = -s l`` where
    unstable; ``(1, 0)`` where ``l >= 0 < u``; ``(0, 0)`` where ``u <= 0``.

    Computed without branches: ``s = u+ / max(u+ - l-, tiny)``, ``t = -s l-``
    (``u+ = max(u, 0)``, ``l- = min(l, 0)``): stable neurons come out exact, the denominator is
    never zero, and nothing overflows (``s`` is in ``[0, 1]``).

    Gradients (:class:`_UpperLine`) in closed form: with ``d = u - l`` on unstable neurons,
    ``ds/du = -l / d^2``, ``ds/dl = u / d^2``, ``dt/du = l^2 / d^2``, ``dt/dl = -u^2 / d^2``, and
    zero on stable ones, the same numbers autograd gets from the expression above (up to float
    rounding; at the kinks ``l = 0`` or ``u = 0`` exactly, the zero one-sided derivative).
    """
    if mode.vmapped():  # standard operations only (bounds/mode.py)
        s, t, _ = compiled.upper_line_forward(l, u)
        return s, t
    return _UpperLine.apply(l, u)


class _UpperLine(torch.autograd.Function):
    """:func:`upper_line` with its gradient written out (the formulas of :func:`upper_line`'s
    doc, :func:`bounds.compiled.upper_line_backward`): about half the time of autograd through
    the clamps and the division, which costs a few percent of a CROWN-IBP training step. Under
    ``create_graph`` the backward recomputes ``s`` and the denominator from ``l`` and ``u``, so
    double backward works. In the compiled mode (:mod:`bounds.mode`) the compiled kernels run
    the same two bodies as fused loops; the backward uses the kernels of the forward."""

    @staticmethod
    def forward(ctx, l, u):
        kernels = mode.active_kernels()
        fwd = compiled.upper_line_forward if kernels is None else kernels.upper_forward
        s, t, den = fwd(l, u)
        ctx.save_for_backward(l, u, s, den)
        ctx.kernels = kernels
        ctx.set_materialize_grads(False)
        return s, t

    @staticmethod
    def backward(ctx, gs, gt):
        l, u, s, den = ctx.saved_tensors
        if gs is None and gt is None:
            return None, None
        if torch.is_grad_enabled():  # double backward: s and den as functions of l and u
            s, _, den = compiled.upper_line_forward(l, u)
        elif ctx.kernels is not None:
            return ctx.kernels.upper_backward(l, u, s, den, gs, gt)
        return compiled.upper_line_backward(l, u, s, den, gs, gt)


def with_lower_slope(
    l: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    upper: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Relaxation:
    """Relaxation with lower slope ``a`` on unstable neurons and the exact lines on stable ones:
    ``a_eff = 1[l >= 0 < u] + 1[l < 0 < u] a``, computed as ``1[u > 0] (l >= 0 ? 1 : a)``.
    ``upper``: a precomputed ``upper_line(l, u)``."""
    s, t = upper_line(l, u) if upper is None else upper
    a_eff = torch.where(l >= 0, 1.0, a.to(u.dtype)) * (u > 0)
    return Relaxation(a_eff, s, t)


def adaptive(
    l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None
) -> Relaxation:
    """CROWN's default: ``a = 1`` if ``u >= -l`` else ``0`` (the lower line of smaller area).
    ``1[u + l >= 0 and u > 0]`` is also exact on stable neurons."""
    return Relaxation(((u + l >= 0) & (u > 0)).to(u.dtype), *upper_line(l, u))


def zero(l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None) -> Relaxation:
    """``a = 0`` on every unstable neuron."""
    return Relaxation(((l >= 0) & (u > 0)).to(u.dtype), *upper_line(l, u))


def one(l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None) -> Relaxation:
    """``a = 1`` on every unstable neuron."""
    return Relaxation((u > 0).to(u.dtype), *upper_line(l, u))


def same_slope(
    l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None
) -> Relaxation:
    """``a = u / (u - l)``, parallel to the upper line (Fast-Lin / CAP)."""
    s, t = upper_line(l, u)
    return with_lower_slope(l, u, s, upper=(s, t))


class ShardGenerator(torch.Generator):
    """A generator for one shard of a batch: rows ``rows`` of a batch of ``total`` rows.

    :func:`rand_rows` with it draws ``U[0, 1)`` for the whole batch, ``[total, *shape[1:]]``, and
    keeps rows ``rows``, so the random slopes (or PGD starts) of a shard equal the matching rows
    of the draw one process makes for the whole batch from an equally seeded plain generator.
    Distributed training (``train.parallel``) hands one to each process.
    """

    def __new__(cls, rows: slice, total: int, device: str | torch.device = "cpu") -> ShardGenerator:
        return super().__new__(cls, device)

    def __init__(self, rows: slice, total: int, device: str | torch.device = "cpu") -> None:
        start, stop, _ = rows.indices(int(total))
        self.rows, self.total = slice(start, stop), int(total)


def rand_rows(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``torch.rand(shape)`` from ``generator``; for a :class:`ShardGenerator` with
    ``shape[0] == len(rows)``, rows ``rows`` of ``torch.rand((total, *shape[1:]))``."""
    shape = tuple(shape)
    if (
        isinstance(generator, ShardGenerator)
        and shape
        and shape[0] == generator.rows.stop - generator.rows.start
    ):
        whole = torch.rand(
            (generator.total, *shape[1:]), generator=generator, dtype=dtype, device=device
        )
        return whole[generator.rows]
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


def uniform(
    l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None
) -> Relaxation:
    """``a ~ U[0, 1]`` independently per neuron and sample (drawn from ``generator``;
    :func:`rand_rows`)."""
    a = rand_rows(u.shape, generator, dtype=u.dtype, device=u.device)
    return with_lower_slope(l, u, a)


def binary(
    l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None
) -> Relaxation:
    """``a ~ Bernoulli(1/2)`` independently per neuron and sample."""
    a = (rand_rows(u.shape, generator, dtype=u.dtype, device=u.device) < 0.5).to(u.dtype)
    return with_lower_slope(l, u, a)


POLICIES: dict[str, Callable[..., Relaxation]] = {
    "adaptive": adaptive,
    "zero": zero,
    "one": one,
    "same-slope": same_slope,
    "uniform": uniform,
    "binary": binary,
    "optimized": adaptive,  # starting point; refined by bounds.slope_search.optimize
    "tightest": uniform,  # random start; refined by bounds.slope_search.tighten
}

"""Searches over the lower slopes of unstable neurons: ``tightest`` and ``optimized``.

Both take the *detached* pre-activation bounds of every ReLU layer, the starting relaxations
(their lower slopes are the start; their upper lines, which the search does not change, are
reused as they are), and an ``objective(relax) -> scalar loss`` that runs a (detached) final
backward pass with the given relaxations. They return new lower slopes (detached
``[B, *shape]`` per layer, only the unstable entries matter); the caller then runs the real,
differentiable pass with them.

- :func:`tighten` (the paper's method): ``g = d loss / d a`` at the start ``a0``;
  ``a = 1`` where ``g < 0``, ``a = 0`` where ``g > 0``, ``a = a0`` where ``g == 0``.
- :func:`optimize` (alpha-CROWN style): ``a`` free in ``[0, 1]``; ``steps`` Adam steps of size
  ``lr`` on the loss, each followed by projection (clamp to ``[0, 1]``); the Adam update is
  written out (the same arithmetic as ``torch.optim.Adam``) so that nothing waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from bounds.relaxations import Relaxation, with_lower_slope

Objective = Callable[[Mapping[int, Relaxation]], torch.Tensor]
Bounds = Mapping[int, tuple[torch.Tensor, torch.Tensor]]


def _relax(
    bounds: Bounds, start: Mapping[int, Relaxation], slopes: Mapping[int, torch.Tensor]
) -> dict:
    """Relaxations with lower slopes ``slopes`` and the upper lines of ``start``."""
    return {
        k: with_lower_slope(l, u, slopes[k], upper=(start[k].upper_slope, start[k].upper_intercept))
        for k, (l, u) in bounds.items()
    }


def tighten(
    bounds: Bounds, start: Mapping[int, Relaxation], objective: Objective
) -> dict[int, torch.Tensor]:
    """One signed-gradient step to the vertices: ``a = 1[g < 0] + a0 1[g == 0]``.

    ``bounds``: ``{relu op index: (l, u)}`` detached; ``start``: ``{k: Relaxation}`` with the
    start slopes ``a0`` ``[B, *shape]`` and the upper lines of ``bounds``.
    """
    with torch.enable_grad():
        leaves = {k: r.lower_slope.detach().clone().requires_grad_(True) for k, r in start.items()}
        loss = objective(_relax(bounds, start, leaves))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out = {}
    for (k, r), g in zip(start.items(), grads):
        a0 = r.lower_slope.detach()
        out[k] = a0 if g is None else torch.where(g < 0, 1.0, torch.where(g > 0, 0.0, a0))
    return out


def optimize(
    bounds: Bounds, start: Mapping[int, Relaxation], objective: Objective, steps: int, lr: float
) -> dict[int, torch.Tensor]:
    """Projected Adam on the lower slopes: ``steps`` updates minimising ``objective``, from the
    lower slopes of ``start`` (``{k: Relaxation}``, whose upper lines are kept).

    The Adam update (betas 0.9, 0.999, eps 1e-8, as ``torch.optim.Adam`` computes it, operation
    for operation) is written out so that its step count stays a Python number: nothing in the
    search waits for the device.
    """
    if steps <= 0:
        return {k: r.lower_slope.detach() for k, r in start.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    with torch.enable_grad():
        leaves = {k: r.lower_slope.detach().clone().requires_grad_(True) for k, r in start.items()}
        avg = {k: torch.zeros_like(a) for k, a in leaves.items()}
        avg_sq = {k: torch.zeros_like(a) for k, a in leaves.items()}
        for step in range(1, steps + 1):
            loss = objective(_relax(bounds, start, leaves))
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            step_size = lr / (1 - beta1**step)
            correction2 = math.sqrt(1 - beta2**step)
            with torch.no_grad():
                for (k, a), g in zip(leaves.items(), grads):
                    if g is None:
                        continue
                    g = g.nan_to_num(
                        nan=0.0, posinf=0.0, neginf=0.0
                    )  # an overflowing loss moves nothing
                    avg[k].lerp_(g, 1 - beta1)
                    avg_sq[k].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (avg_sq[k].sqrt() / correction2).add_(eps)
                    a.addcdiv_(avg[k], denom, value=-step_size)
                    a.clamp_(0.0, 1.0)
    return {k: a.detach() for k, a in leaves.items()}

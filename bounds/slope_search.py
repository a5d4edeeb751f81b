"""Searches over the lower slopes of unstable neurons: ``tightest`` and ``optimized``.

Both take the *detached* pre-activation bounds of every ReLU layer, the starting lower slopes,
and an ``objective(relax) -> scalar loss`` that runs a (detached) final backward pass with the
given relaxations. They return new lower slopes (detached ``[B, *shape]`` per layer, only the
unstable entries matter); the caller then runs the real, differentiable pass with them.

- :func:`tighten` (the paper's method): ``g = d loss / d a`` at the start ``a0``;
  ``a = 1`` where ``g < 0``, ``a = 0`` where ``g > 0``, ``a = a0`` where ``g == 0``.
- :func:`optimize` (alpha-CROWN style): ``a`` free in ``[0, 1]``; ``steps`` Adam steps of size
  ``lr`` on the loss, each followed by projection (clamp to ``[0, 1]``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from bounds.relaxations import Relaxation, upper_line, with_lower_slope

Objective = Callable[[Mapping[int, Relaxation]], torch.Tensor]
Bounds = Mapping[int, tuple[torch.Tensor, torch.Tensor]]


def _relax(bounds: Bounds, uppers: Mapping, slopes: Mapping[int, torch.Tensor]) -> dict[int, Relaxation]:
    return {k: with_lower_slope(l, u, slopes[k], upper=uppers[k]) for k, (l, u) in bounds.items()}


def tighten(bounds: Bounds, start: Mapping[int, torch.Tensor], objective: Objective) -> dict[int, torch.Tensor]:
    """One signed-gradient step to the vertices: ``a = 1[g < 0] + a0 1[g == 0]``.

    ``bounds``: ``{relu op index: (l, u)}`` detached; ``start``: ``{k: a0 [B, *shape]}``.
    """
    uppers = {k: upper_line(l, u) for k, (l, u) in bounds.items()}
    with torch.enable_grad():
        leaves = {k: a.detach().clone().requires_grad_(True) for k, a in start.items()}
        loss = objective(_relax(bounds, uppers, leaves))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out = {}
    for (k, a0), g in zip(start.items(), grads):
        if g is None:
            out[k] = a0.detach()
        else:
            a0 = a0.detach()
            out[k] = torch.where(g < 0, torch.ones_like(a0), torch.where(g > 0, torch.zeros_like(a0), a0))
    return out


def optimize(
    bounds: Bounds, start: Mapping[int, torch.Tensor], objective: Objective, steps: int, lr: float
) -> dict[int, torch.Tensor]:
    """Projected Adam on the lower slopes: ``steps`` updates minimising ``objective``."""
    if steps <= 0:
        return {k: a.detach() for k, a in start.items()}
    uppers = {k: upper_line(l, u) for k, (l, u) in bounds.items()}
    with torch.enable_grad():
        leaves = {k: a.detach().clone().requires_grad_(True) for k, a in start.items()}
        opt = torch.optim.Adam(list(leaves.values()), lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = objective(_relax(bounds, uppers, leaves))
            loss.backward()
            for a in leaves.values():  # a non-finite gradient (overflowing loss) moves nothing
                if a.grad is not None:
                    a.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
            with torch.no_grad():
                for a in leaves.values():
                    a.clamp_(0.0, 1.0)
    return {k: a.detach() for k, a in leaves.items()}

"""SABR and MTL-IBP: certified losses that combine a PGD attack with interval bounds.

Notation: ``x`` ``[B, *shape]`` inputs in the domain ``D = [lo, hi]``, ``y`` ``[B]`` labels,
``eps`` the radius (float or ``[B]``), ``B(c, r) = {x' : ||x' - c||_inf <= r}``,
``L_IBP(c, r) = CE([0, -lb(c, r)], 0)`` the robust cross-entropy of the IBP margin lower bounds
``lb`` over ``B(c, r) ∩ D`` (:func:`bounds.margin_ce`), ``CE`` the cross-entropy.

**SABR** (Müller et al. 2023, "Certified Training: Small Boxes are All You Need", ICLR 2023):
propagate a small box around an adversarial point instead of the whole ball::

    tau = lambda * eps,                    lambda in (0, 1]                  (box size)
    x'  = PGD_CE(x; [x - (eps - tau), x + (eps - tau)] ∩ D)                  (box centre)
    L_SABR = L_IBP(x', tau)                (IBP on B(x', tau) ∩ D)

Since ``||x' - x||_inf <= eps - tau``, ``B(x', tau) ⊂ B(x, eps)``: the small box is a subset of
the ball, so ``L_SABR`` bounds the worst-case CE over the small box only; it is *not* an upper
bound over the ball (SABR trades soundness of the training loss for precision). With
``lambda = 1``, ``eps - tau = 0``, ``x' = x`` and ``L_SABR = L_IBP(x, eps)`` exactly.
The attack (:func:`sabr_center`): ``attack_steps`` (default :data:`SABR_STEPS` = 8) steps of
sign-gradient ascent on ``CE(f(x'), y)`` from a uniform start in the shrunk box, step size
``0.5 (eps - tau)`` multiplied by 0.1 after steps 4 and 7 (the schedule of SABR's training attack).

**MTL-IBP** (De Palma et al. 2024, "Expressive Losses for Verified Robustness via Convex
Combinations", ICLR 2024: the MTL-IBP loss, a convex combination of an adversarial and an IBP
loss)::

    L_MTL = (1 - alpha) * CE(f(x_adv), y) + alpha * L_IBP(x, eps),          alpha in [0, 1]

with ``x_adv`` a PGD point in ``B(x, eps) ∩ D`` (:func:`mtl_point`): by default one step
(:data:`MTL_STEPS`, the single-step attack the paper's experiments mostly use) of size
``1.25 eps`` from a uniform start (random-start FGSM, Wong et al. 2020); with ``k > 1`` steps the
size is ``2.5 eps / k`` (as :func:`train.attacks.pgd_last_iterate`). ``alpha = 1`` is IBP exactly,
``alpha = 0`` the adversarial-training loss at ``x_adv``.

Every attack draws its start from the caller's ``generator`` only (on that generator's device),
so a loss repeats exactly for the same weights and seed; it runs with the model in eval mode
(batch-norm statistics are not updated by the attack) and gives the parameters no gradient:
``x'`` and ``x_adv`` are constants of the loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bounds.interval import input_bounds
from bounds.relaxations import rand_rows
from train.attacks import per_sample_eps

__all__ = ["SABR_STEPS", "MTL_STEPS", "uniform_in_box", "pgd_box", "shrunk_box", "sabr_center", "mtl_point",
           "mtl_mix"]

SABR_STEPS = 8
"""Default PGD steps of SABR's centre search."""
MTL_STEPS = 1
"""Default PGD steps of MTL-IBP's attack."""
SABR_DECAY_AT = (4, 7)
"""Steps after which SABR's attack step size is multiplied by 0.1."""


def uniform_in_box(lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``lo + U (hi - lo)``, ``U ~ U[0, 1)`` of ``lo``'s shape drawn from ``generator`` on its
    own device (the same start on any device for a CPU generator; a shard's rows of the whole
    batch's draw for a :class:`bounds.relaxations.ShardGenerator`, as distributed training
    hands out, :func:`bounds.relaxations.rand_rows`)."""
    device = generator.device if generator is not None else lo.device
    u = rand_rows(lo.shape, generator, dtype=lo.dtype, device=device).to(lo.device)
    return lo + u * (hi - lo)


def pgd_box(model: nn.Module, y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int,
            step_size: torch.Tensor | float, generator: torch.Generator | None = None,
            decay_at: Sequence[int] = ()) -> torch.Tensor:
    """PGD ascent on ``sum_i CE(f(x'_i), y_i)`` inside the box ``[lo, hi]`` (``[B, *shape]``).

    ``x'_0 ~ U[lo, hi]``; ``x'_{k+1} = clip_[lo, hi](x'_k + a_k sign(grad_x' CE))`` for
    ``k < steps``, with ``a_k = step_size * 0.1^(number of d in decay_at with d <= k)``
    (``step_size`` a number or ``[B, 1, ..., 1]``). Returns the last iterate, detached. The model
    runs in eval mode and is put back as it was.
    """
    if int(steps) < 0:
        raise ValueError(f"PGD needs steps >= 0, got {steps}")
    cur = uniform_in_box(lo, hi, generator).detach()
    was_training = model.training
    model.eval()
    try:
        for k in range(int(steps)):
            a = step_size * 0.1 ** sum(1 for d in decay_at if d <= k)
            cur = cur.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(cur), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, cur)
            cur = torch.max(torch.min(cur.detach() + a * g.sign(), hi), lo)
    finally:
        model.train(was_training)
    return cur.detach()


def shrunk_box(x: torch.Tensor, eps: float | torch.Tensor, lam: float,
               domain: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SABR's search region ``[x - (eps - tau), x + (eps - tau)] ∩ D``, ``tau = lam * eps``
    (``[B, *shape]`` each)."""
    e = per_sample_eps(eps, x)
    return input_bounds(x, e - lam * e, domain)


def sabr_center(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, lam: float,
                domain: Sequence[float] | None = (0.0, 1.0), steps: int = SABR_STEPS,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, float | torch.Tensor]:
    """SABR's small box: ``(x', tau)`` with ``x'`` ``[B, *shape]`` the PGD point in the shrunk box
    (:func:`shrunk_box`) and ``tau = lam * eps`` (a float for a float ``eps``, else ``[B]``).
    ``lam = 1`` or ``eps = 0`` gives ``x' = x`` without an attack."""
    if not 0.0 < float(lam) <= 1.0:
        raise ValueError(f"the SABR box size lambda must lie in (0, 1], got {lam}")
    tau = lam * eps if isinstance(eps, torch.Tensor) else float(lam) * float(eps)
    x = x.detach()
    if float(lam) == 1.0 or not bool(torch.as_tensor(eps).gt(0).any()) or int(steps) == 0:
        return x, tau
    lo, hi = shrunk_box(x, eps, lam, domain)
    e = per_sample_eps(eps, x)
    return pgd_box(model, y, lo, hi, steps, 0.5 * (e - lam * e), generator, SABR_DECAY_AT), tau


def mtl_point(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
              domain: Sequence[float] | None = (0.0, 1.0), steps: int = MTL_STEPS,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """MTL-IBP's adversarial point ``x_adv`` ``[B, *shape]`` in ``B(x, eps) ∩ D``: ``steps``
    PGD steps of size ``1.25 eps`` (one step) or ``2.5 eps / steps`` from a uniform start;
    ``x`` itself for ``eps = 0``."""
    x = x.detach()
    if not bool(torch.as_tensor(eps).gt(0).any()):
        return x
    e = per_sample_eps(eps, x)
    lo, hi = input_bounds(x, e, domain)
    size = 1.25 * e if int(steps) == 1 else 2.5 * e / max(int(steps), 1)
    return pgd_box(model, y, lo, hi, steps, size, generator)


def mtl_mix(adv_ce: torch.Tensor, ibp_ce: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * adv_ce + alpha * ibp_ce``; exactly ``ibp_ce`` at ``alpha = 1`` and
    ``adv_ce`` at ``alpha = 0`` (no rounding from a zero weight)."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the MTL-IBP weight alpha must lie in [0, 1], got {alpha}")
    if alpha == 1.0:
        return ibp_ce
    if alpha == 0.0:
        return adv_ce
    return (1.0 - alpha) * adv_ce + alpha * ibp_ce

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
size is ``2.5 eps / k`` (as :func:`train.attacks.pgd_last_iterate`). Both attacks run
:func:`train.attacks.pgd_box`. ``alpha = 1`` is IBP exactly,
``alpha = 0`` the adversarial-training loss at ``x_adv``.

Every attack draws its start from the caller's ``generator`` only (on that generator's device),
so a loss repeats exactly for the same weights and seed; it runs with the model in eval mode
(batch-norm statistics are not updated by the attack) and gives the parameters no gradient:
``x'`` and ``x_adv`` are constants of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bounds.interval import input_bounds
from train.attacks import per_sample_eps, pgd_box

__all__ = ["SABR_STEPS", "MTL_STEPS", "shrunk_box", "sabr_center", "mtl_point", "mtl_mix"]

SABR_STEPS = 8
"""Default PGD steps of SABR's centre search."""
MTL_STEPS = 1
"""Default PGD steps of MTL-IBP's attack."""
SABR_DECAY_AT = (4, 7)
"""Steps after which SABR's attack step size is multiplied by 0.1."""


def shrunk_box(
    x: torch.Tensor, eps: float | torch.Tensor, lam: float, domain: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SABR's search region ``[x - (eps - tau), x + (eps - tau)] ∩ D``, ``tau = lam * eps``
    (``[B, *shape]`` each)."""
    e = per_sample_eps(eps, x)
    return input_bounds(x, e - lam * e, domain)


def sabr_center(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    lam: float,
    domain: Sequence[float] | None = (0.0, 1.0),
    steps: int = SABR_STEPS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float | torch.Tensor]:
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


def mtl_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    domain: Sequence[float] | None = (0.0, 1.0),
    steps: int = MTL_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
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

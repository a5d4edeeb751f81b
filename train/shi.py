"""IBP initialisation and warm-up regularisers of Shi et al. (2021), "Fast Certified Robust
Training with Short Warmup" (NeurIPS 2021).

**Initialisation** (:func:`ibp_init`, ``train --init ibp``): every weight of a ``Linear`` or
``Conv2d`` layer except the last one is drawn as ::

    w ~ N(0, sigma^2),   sigma = sqrt(2 pi) / fan_in                   (the paper's IBP initialisation)

with ``fan_in = in_features`` (Linear) or ``in_channels * kh * kw`` (Conv2d), and its bias is set
to 0. Then ``E|w| = sigma sqrt(2 / pi) = 2 / fan_in``, so an IBP radius ``r`` entering the layer
leaves it as ``|W| r`` with ``E[(|W| r)_i] = 2 mean(r)``, which the following ReLU about halves:
the box neither explodes nor vanishes with depth at initialisation. The last layer keeps its
default initialisation. (The authors' code also halves weights that follow a residual addition;
the zoo's residual blocks are not treated specially here.)

**Warm-up regularisers** (:func:`warmup_regulariser`, ``train --warmup-reg``), added to the loss
only while eps ramps (``1e-6 <= eps_t < eps_target``) with intensity ::

    w_t = lambda * (1 - eps_t / eps_target)            (the regularisers' weight, decreasing with eps)

From the IBP pre-activation bounds ``[l, u]`` of every ReLU layer (``BoundResult.preact``),
centre ``c = (u + l) / 2`` and radius ``r = (u - l) / 2``, and the radius ``r_0`` of the input
box as the first affine layer sees it (after the model's ``Normalize``, as the authors' code
normalises outside the network), per ReLU layer ::

    L_tight = relu(tau - mean(r_0) / mean(r)) / tau
    L_relu  = (relu(tau - min(rho_m, 1 / rho_m)) + relu(tau - min(rho_v, 1 / rho_v))) / tau
    rho_m   = E[c 1(l > 0)] / E[-c 1(u < 0)]
    rho_v   = sum((c - E[c])^2 1(l > 0)) / sum((c - E[c])^2 1(u < 0))

(means over the batch and every neuron of the layer), and
``R = w_t * (mean_layers L_tight + mean_layers L_relu)``. ``L_tight`` keeps the bounds from
growing faster than the input box; ``L_relu`` keeps active and inactive neurons balanced in the
centres' first and second moments. The formulas follow the authors' code (``regularization.py``,
``compute_reg``). A layer whose active or inactive set is empty contributes 0 to ``L_relu`` (its
ratio has no gradient); the authors' code skips or fully penalises that case depending on which
set is empty. Defaults: ``lambda = 0.5``, ``tau = 0.5`` (the authors'). Under torchrun each
process regularises its shard of the batch and the ranks average the values (the ratios are not
linear in the batch, so this is close to, not equal to, the one-process value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bounds.interval import input_box
from bounds.layers import Normalize

__all__ = [
    "MIN_EPS",
    "init_weights",
    "ibp_init",
    "ibp_init_std",
    "warmup_intensity",
    "input_radius",
    "tightness_loss",
    "relu_balance_loss",
    "warmup_regulariser",
]

MIN_EPS = 1e-6
"""Below this eps the regulariser is skipped (a step at eps = 0 trains naturally)."""


def _affine_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def ibp_init_std(layer: nn.Linear | nn.Conv2d) -> float:
    """``sqrt(2 pi) / fan_in`` of a Linear or Conv2d layer (fan_in = ``weight[0].numel()``)."""
    fan_in = layer.weight[0].numel()
    return math.sqrt(2.0 * math.pi) / fan_in


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """Shi et al.'s IBP initialisation in place (module docstring): every Linear/Conv2d weight
    but the last ``~ N(0, ibp_init_std^2)`` drawn on the CPU from ``generator`` (the global RNG
    when None), biases 0. Returns the number of layers reinitialised."""
    layers = _affine_layers(model)[:-1]
    with torch.no_grad():
        for layer in layers:
            w = torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
            layer.weight.copy_(w * ibp_init_std(layer))
            if layer.bias is not None:
                layer.bias.zero_()
    return len(layers)


def init_weights(model: nn.Module, init: str, seed: int) -> None:
    """Initialise ``model`` as a run's ``init`` says: ``default`` leaves it as built, ``ibp``
    applies :func:`ibp_init` drawn from a generator seeded with ``seed``."""
    if init == "ibp":
        ibp_init(model, torch.Generator().manual_seed(int(seed)))
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose default or ibp")


def warmup_intensity(eps: float, eps_target: float, lam: float) -> float:
    """``lam * (1 - eps / eps_target)`` while ``MIN_EPS <= eps < eps_target``, else 0."""
    eps, eps_target = float(eps), float(eps_target)
    if eps_target <= 0 or eps < MIN_EPS or eps >= eps_target:
        return 0.0
    return float(lam) * (1.0 - eps / eps_target)


def input_radius(
    model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, domain: Sequence[float] | None
) -> torch.Tensor:
    """Radius ``[B, *shape]`` of the input box ``[x - eps, x + eps] ∩ D`` as the first affine
    layer sees it: divided by the per-channel std of a leading ``Normalize``."""
    _, r = input_box(x, eps, domain)
    first = next(iter(model.children()), None) if isinstance(model, nn.Sequential) else None
    if isinstance(first, Normalize):
        r = r / cast(Tensor, first.std).to(r.dtype).view(1, -1, *([1] * (r.dim() - 2)))
    return r


def tightness_loss(
    l: torch.Tensor, u: torch.Tensor, r0_mean: torch.Tensor, tol: float
) -> torch.Tensor:
    """``relu(tol - r0_mean / mean((u - l) / 2)) / tol`` (scalar) for one ReLU layer."""
    r = ((u - l) / 2).mean()
    return F.relu(tol - r0_mean / r.clamp(min=1e-12)) / tol


def relu_balance_loss(l: torch.Tensor, u: torch.Tensor, tol: float) -> torch.Tensor:
    """``L_relu`` of one ReLU layer (module docstring); 0 when no neuron is active or none is
    inactive. ``l``, ``u``: ``[B, *shape]``."""
    act, inact = (l > 0).to(l.dtype), (u < 0).to(l.dtype)
    if not bool(act.any()) or not bool(inact.any()):
        return torch.zeros((), dtype=l.dtype, device=l.device)
    c = (u + l) / 2
    mean_ratio = (c * act).mean() / (-(c * inact).mean())
    dev = (c - c.mean()) ** 2
    var_act, var_inact = (dev * act).sum(), (dev * inact).sum()
    if not bool(var_act > 0) or not bool(var_inact > 0):  # every centre equal: no spread to balance
        var_term = torch.zeros((), dtype=l.dtype, device=l.device)
    else:
        var_ratio = var_act / var_inact
        var_term = F.relu(tol - torch.minimum(var_ratio, 1 / var_ratio))
    mean_term = F.relu(tol - torch.minimum(mean_ratio, 1 / mean_ratio))
    return (mean_term + var_term) / tol


def warmup_regulariser(
    preact: Sequence[tuple[torch.Tensor, torch.Tensor]],
    r0: torch.Tensor,
    intensity: float,
    tol: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``R = intensity * (mean L_tight + mean L_relu)`` over the ReLU layers' IBP bounds
    ``preact`` (``(l, u)`` each ``[B, *shape]``) and the input radius ``r0``
    (:func:`input_radius`). Returns ``(R, {"reg_tightness": ..., "reg_relu": ...})`` (detached
    parts); R = 0 without ReLU layers."""
    if float(tol) <= 0:
        raise ValueError(f"the regulariser's tolerance must be > 0, got {tol}")
    if not preact:
        zero = r0.new_zeros(())
        return zero, {"reg_tightness": zero, "reg_relu": zero}
    r0_mean = r0.mean()
    tight = torch.stack([tightness_loss(l, u, r0_mean, tol) for l, u in preact]).mean()
    relu = torch.stack([relu_balance_loss(l, u, tol) for l, u in preact]).mean()
    return float(intensity) * (tight + relu), {
        "reg_tightness": tight.detach(),
        "reg_relu": relu.detach(),
    }

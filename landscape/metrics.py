"""Landscape and relaxation metrics, as plain functions.

Notation: theta the parameters, L a loss, g = grad L(theta), theta_t a moved point,
g_t = grad L(theta_t). Vectors may be given as one tensor or as a list of tensors (one per
parameter), which are flattened and concatenated.

Gradient metrics (Lee et al. 2021, sec. 4):

- gradient-angle similarity  cos(g, g_t) = <g, g_t> / (||g|| ||g_t||)
- RMS difference             sqrt(mean_i (g_t,i - g_i)^2)
- smoothness estimate        ||g_t - g|| / ||theta_t - theta||  (a local Lipschitz constant of grad L)
- loss variation             max_t L(theta_t) - min_t L(theta_t)

Relaxation metrics (need :mod:`bounds`):

- relaxed gradient approximation (RGA): for sample b and margin row j, r_j = d lb_j / d x
  (autograd through the bound) and t_j = d m_j / d x with m = C f(x) the true margins;
  report mean_bj cos(r_j, t_j), mean_bj ||r_j - t_j|| / ||t_j||, and the mean
  |slope - relu'(z(x))| over unstable neurons (l < 0 < u) of the lower (and upper) lines.
- sign changes of the lower bound's input coefficients A (``BoundResult.lower_A``) between two
  parameter points: ``sign_flip`` = mean [sign(A) != sign(A_t)] and the paper code's
  ``a_sign`` = mean |sign(A) - sign(A_t)| (a flip counts 2, a change to or from 0 counts 1).
- unstable-neuron fractions per ReLU layer (``BoundResult.unstable_fractions``), and bound
  tightness: the PGD margin min_j m_j(x_adv) minus the certified min_j lb_j (>= 0 for a sound
  bound).

Definitions and the paper's use of each are in ``docs/scans.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bounds.bound_spec import BoundSpec
from common.names import FIXED_SLOPES
from train.attacks import pgd_margin
from train.objective import unstable_columns

__all__ = [
    "as_vector",
    "cosine_similarity",
    "rms_difference",
    "smoothness",
    "loss_variation",
    "sign_changes",
    "lower_coefficients",
    "relu_preactivations",
    "relaxed_gradient_approximation",
    "slope_errors",
    "rga_by_slope",
    "bound_tightness",
    "bound_gaps",
]

VectorLike = Tensor | Sequence[Tensor]


def as_vector(v: VectorLike) -> Tensor:
    """One flat float64 vector from a tensor or a list of tensors."""
    if isinstance(v, Tensor):
        return v.detach().reshape(-1).double()
    return torch.cat([t.detach().reshape(-1).double() for t in v])


def cosine_similarity(a: VectorLike, b: VectorLike) -> float:
    """<a, b> / (||a|| ||b||); NaN when either vector is zero."""
    va, vb = as_vector(a), as_vector(b)
    denom = float(va.norm() * vb.norm())
    return float(va @ vb) / denom if denom > 0 else math.nan


def rms_difference(a: VectorLike, b: VectorLike) -> float:
    """sqrt(mean_i (a_i - b_i)^2)."""
    va, vb = as_vector(a), as_vector(b)
    return float((va - vb).pow(2).mean().sqrt())


def smoothness(g0: VectorLike, gt: VectorLike, step_norm: float) -> float:
    """||g_t - g_0|| / ||theta_t - theta_0||; NaN when the step is zero."""
    if not step_norm > 0:
        return math.nan
    return float((as_vector(gt) - as_vector(g0)).norm()) / float(step_norm)


def loss_variation(losses: Sequence[float] | np.ndarray | Tensor) -> float:
    """max L - min L over the finite values (NaN if none)."""
    arr = np.asarray(
        losses.detach().cpu() if isinstance(losses, Tensor) else losses, dtype=np.float64
    )
    arr = arr[np.isfinite(arr)]
    return float(arr.max() - arr.min()) if arr.size else math.nan


def sign_changes(a: Tensor, a_t: Tensor) -> dict[str, float]:
    """Sign changes between two coefficient tensors of equal shape.

    ``sign_flip`` = mean [sign(a) != sign(a_t)] (the fraction of entries whose sign changes,
    a change to or from 0 included); ``a_sign`` = mean |sign(a) - sign(a_t)| (the quantity
    the paper's code logs: a flip counts 2, a change to or from 0 counts 1).
    """
    if a.shape != a_t.shape:
        raise ValueError(
            f"coefficient tensors differ in shape: {tuple(a.shape)} vs {tuple(a_t.shape)}"
        )
    s, s_t = torch.sign(a.detach()), torch.sign(a_t.detach())
    return {
        "sign_flip": float((s != s_t).double().mean()),
        "a_sign": float((s - s_t).abs().double().mean()),
    }


def lower_coefficients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bound: BoundSpec | None,
    n_classes: int,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """The input coefficients ``A`` ``[B, n_classes - 1, *input_shape]`` of the lower bound of
    the margins ``f_y - f_j`` (``BoundResult.lower_A``) by ``bound`` (method, slope, beta,
    domain) at the model's current parameters, detached; None when the bound does not relax
    the ReLUs (natural training: ``bound`` None; IBP) or has no linear pass (CROWN-IBP at
    beta 0). ``generator`` feeds random slope policies."""
    if bound is None or not bound.relaxes:
        return None
    from bounds import bound_model, margin_spec

    with torch.no_grad():
        C = margin_spec(y, n_classes).to(x.dtype)
        res = bound_model(model, x, eps, bound, C, y, generator)
    return None if res.lower_A is None else res.lower_A.detach()


def relu_preactivations(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run an ``nn.Sequential`` on x; return its output and the input of every ReLU, in order."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"expected an nn.Sequential model, got {type(model).__name__}")
    z, pre = x, []
    for layer in model:
        if isinstance(layer, nn.ReLU):
            pre.append(z)
        z = layer(z)
    return z, pre


def slope_errors(result: Any, preacts_at_x: Sequence[Tensor]) -> dict[str, float]:
    """Mean |slope - relu'(z(x))| over unstable neurons (l < 0 < u), for the lower and upper
    lines of ``result`` (a ``BoundResult``); relu'(z) = 1[z > 0]. NaN when the method has no
    slopes (IBP); 0 when there are no unstable neurons."""
    if result.slopes is None:
        return {"slope_err": math.nan, "upper_slope_err": math.nan, "n_unstable": 0.0}
    total_lo = total_up = 0.0
    n = 0
    for i, ((l, u), z) in enumerate(zip(result.preact, preacts_at_x)):
        unstable = (l < 0) & (u > 0)
        k = int(unstable.sum())
        if k == 0:
            continue
        true = (z.detach() > 0).to(l.dtype)
        total_lo += float((result.slopes[i].detach() - true).abs()[unstable].sum())
        if result.upper_slopes is not None:
            total_up += float((result.upper_slopes[i].detach() - true).abs()[unstable].sum())
        n += k
    if n == 0:
        return {"slope_err": 0.0, "upper_slope_err": 0.0, "n_unstable": 0.0}
    return {
        "slope_err": total_lo / n,
        "upper_slope_err": total_up / n if result.upper_slopes is not None else math.nan,
        "n_unstable": float(n),
    }


def relaxed_gradient_approximation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bound: BoundSpec | None = None,
    n_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """RGA of ``bound`` (a :class:`bounds.BoundSpec`; None: CROWN-IBP with adaptive slopes at
    beta 1 on the domain ``(0, 1)``) at (x, y): how well d lb / d x approximates d m / d x.

    Returns ``rga_cos`` = mean_{b,j} cos(r_bj, t_bj), ``rga_rel_err`` = mean_{b,j}
    ||r_bj - t_bj|| / ||t_bj|| (pairs with t_bj = 0 skipped), ``slope_err`` /
    ``upper_slope_err`` (see :func:`slope_errors`), ``n_unstable`` and
    ``unstable_frac_l{i}``. Parameters get no gradient. ``generator`` feeds random slopes.
    """
    from bounds import bound_model, margin_spec

    bound = BoundSpec() if bound is None else bound
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits, pre = relu_preactivations(model, x)
        k = int(n_classes or logits.shape[-1])
        C = margin_spec(y, k).to(logits.dtype)
        res = bound_model(model, x, eps, bound, C, generator=generator)
        margins = torch.einsum("bsk,bk->bs", C, logits)
        lb = res.lower
        B, S = lb.shape
        cos = torch.full((B, S), math.nan, dtype=torch.float64)
        rel = torch.full((B, S), math.nan, dtype=torch.float64)
        for j in range(S):
            if lb.requires_grad:
                r = torch.autograd.grad(lb[:, j].sum(), x, retain_graph=True)[0]
            else:  # the bound does not depend on x (e.g. a constant bound)
                r = torch.zeros_like(x)
            t = torch.autograd.grad(margins[:, j].sum(), x, retain_graph=True)[0]
            r2, t2 = r.reshape(B, -1).double(), t.reshape(B, -1).double()
            tn, rn = t2.norm(dim=1), r2.norm(dim=1)
            ok = (tn > 0) & (rn > 0)
            cos[ok, j] = (r2 * t2).sum(1)[ok] / (rn * tn)[ok]
            okt = tn > 0
            rel[okt, j] = (r2 - t2).norm(dim=1)[okt] / tn[okt]
    out = {
        "rga_cos": float(np.nanmean(cos.numpy())) if torch.isfinite(cos).any() else math.nan,
        "rga_rel_err": float(np.nanmean(rel.numpy())) if torch.isfinite(rel).any() else math.nan,
    }
    out.update(slope_errors(res, [z.detach() for z in pre]))
    out.update(unstable_columns(res.unstable_fractions()))
    return out


def rga_by_slope(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bound: BoundSpec | None = None,
    slopes: Sequence[str] = FIXED_SLOPES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """:func:`relaxed_gradient_approximation` of ``bound`` (None: its default) with each
    lower-slope policy (relaxation) in ``slopes`` (random policies get a generator seeded with
    ``seed``): slope -> metrics."""

    bound = BoundSpec() if bound is None else bound
    out = {}
    for slope in slopes:
        gen = torch.Generator().manual_seed(int(seed))
        out[slope] = relaxed_gradient_approximation(
            model, x, y, eps, replace(bound, slope=slope), generator=gen
        )
    return out


def bound_tightness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bound: BoundSpec | None = None,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Certified lower bound of ``bound`` (None: CROWN-IBP, adaptive slopes, beta 1, on the
    domain ``(0, 1)``) against the PGD margin in the same domain, per sample:
    ``lb`` = min_j lb_j, ``pgd_margin`` = min_j m_j(x_adv) (x_adv from a margin PGD attack),
    ``gap`` = pgd_margin - lb >= 0 (smaller is tighter). Returns the means over the batch."""
    bound = BoundSpec() if bound is None else bound
    return bound_gaps(
        model,
        x,
        y,
        eps,
        {"bound": bound},
        domain=bound.domain,
        attack=(pgd_steps, pgd_restarts, seed),
        generator=generator,
    )["bound"]


def bound_gaps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bounds: Mapping[str, BoundSpec],
    domain: tuple[float, float] | None = (0.0, 1.0),
    attack: tuple[int, int, int] = (20, 1, 0),
    generator: torch.Generator | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`bound_tightness` of several bounds (name -> :class:`bounds.BoundSpec`) on the same
    model and samples, against one PGD attack in ``domain`` (``attack``: its steps, restarts and
    seed): name -> ``{"lb", "pgd_margin", "gap"}``. Measured on a common model, the gaps compare
    the bounds themselves. ``generator`` (random slopes) is reset for each bound."""
    from bounds import bound_model, margin_spec

    pgd_steps, pgd_restarts, seed = attack
    adv = pgd_margin(
        model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts, domain=domain, seed=seed
    )
    start = generator.get_state() if isinstance(generator, torch.Generator) else None
    out = {}
    with torch.no_grad():
        logits = model(x)
        C = margin_spec(y, logits.shape[-1]).to(logits.dtype)
        for name, bound in bounds.items():
            if start is not None:
                generator.set_state(start)
            res = bound_model(model, x, eps, bound, C, generator=generator)
            lb = res.lower.min(dim=1).values
            out[name] = {
                "lb": float(lb.mean()),
                "pgd_margin": float(adv.mean()),
                "gap": float((adv - lb).mean()),
            }
    return out

"""Certified training losses.

For a batch ``(x, y)``, radius ``eps`` and a bound method, the loss is

    L = kappa * CE(f(x), y) + (1 - kappa) * CE(z, y),    z_y = 0,  z_j = -lb_j  (j != y)

where ``lb_j`` is a lower bound of the margin ``f_y(x') - f_j(x')`` over the ball
``{x' : ||x' - x||_inf <= eps} ∩ domain``. ``CE(z, y) = log(1 + sum_{j != y} exp(-lb_j))`` upper
bounds the worst-case cross-entropy in the ball (Wong & Kolter 2018; Gowal et al. 2018).
With ``fused=True`` the robust term is the bound engine's fused cross-entropy bound
(DESIGN 3.1), one backward row per sample instead of ``n_classes - 1``.

Methods: ``natural`` (``L = CE(f(x), y)``), ``ibp``, ``crown-ibp`` (``beta`` mixes CROWN and
IBP lower bounds), ``crown``, ``cap`` and ``tightest`` (CROWN-IBP with the tightest slopes and
beta = 1; Lee et al. 2021). ``slope`` picks the engine's lower-slope policy for the linear
methods.

Batch statistics returned beside the loss (plain floats):
``clean_ce``, ``clean_err`` (fraction misclassified at x), ``robust_ce``, ``robust_err``
(fraction whose margin lower bounds are not all > 0; NaN when ``fused`` gives no margins) and
``unstable_frac_l{i}`` (unstable ReLUs / ReLUs of layer i, from ``BoundResult.counts``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import bounds
from train.config import TRAIN_METHODS, default_slope


def robust_ce_from_lower(lower: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the negated margin lower bounds.

    ``lower`` is ``[B, n-1]`` (rows of ``margin_spec``: ``f_y - f_j`` for ``j != y``). Returns
    ``log(1 + sum_j exp(-lower_j))``, computed as a cross-entropy of logits ``[0, -lower]``
    against class 0 (the order of the other classes does not matter).
    """
    zeros = torch.zeros_like(lower[:, :1])
    logits = torch.cat([zeros, -lower], dim=1)
    target = torch.zeros(lower.shape[0], dtype=torch.long, device=lower.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def resolve_method(method: str, slope: str | None, beta: float) -> tuple[str | None, str, float]:
    """Map a training method to the engine's ``(bound method, slope, beta)``.

    ``tightest`` -> ``("crown-ibp", "tightest", 1.0)``; ``natural`` -> ``(None, ..., beta)``.
    """
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown training method {method!r}; choose one of {', '.join(TRAIN_METHODS)}")
    if method == "tightest":
        if slope not in (None, "tightest"):
            raise ValueError(f"method 'tightest' fixes the slope to 'tightest', got slope {slope!r}")
        return "crown-ibp", "tightest", 1.0
    resolved = slope if slope is not None else default_slope(method)
    return (None if method == "natural" else method), resolved, float(beta)


def unstable_fractions(counts: list[dict[str, int]] | None) -> dict[str, float]:
    """``{"unstable_frac_l{i}": unstable / total}`` per ReLU layer ``i`` (0-based)."""
    out: dict[str, float] = {}
    for i, c in enumerate(counts or []):
        total = int(c.get("total", 0))
        out[f"unstable_frac_l{i}"] = float(c.get("unstable", 0)) / total if total else float("nan")
    return out


def certified_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    slope: str | None = None,
    beta: float = 1.0,
    kappa: float = 0.0,
    fused: bool = False,
    domain: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    **bound_kw: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Certified loss ``L = kappa * CE(f(x), y) + (1 - kappa) * robust CE`` and batch stats.

    Args:
        model: ``nn.Sequential`` the engine accepts (starts with ``Normalize``).
        x: ``[B, *input_shape]`` inputs in ``domain``; y: ``[B]`` int64 labels.
        eps: radius (float or per-sample ``[B]``), >= 0.
        method: one of :data:`train.config.TRAIN_METHODS`.
        slope: lower-slope policy (``None``: the method's default).
        beta: CROWN-IBP mixing weight (``lb = beta lb_crown + (1 - beta) lb_ibp``).
        kappa: clean-loss weight in [0, 1].
        fused: use the fused robust cross-entropy bound (DESIGN 3.1).
        generator: random source of random slope policies (``uniform``, ``binary``, ``tightest``),
            so that a loss can be evaluated again exactly.
        bound_kw: passed to the engine (e.g. ``opt_steps``, ``opt_lr``).

    Returns:
        ``(loss, stats)``: a scalar tensor with gradient, and a dict of floats (module doc).
        One bound computation per call: its lower bounds serve both the loss and the stats.
    """
    bound_method, slope_used, beta_used = resolve_method(method, slope, beta)
    if not 0.0 <= float(kappa) <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    logits_needed_grad = bound_method is None or kappa > 0.0
    with torch.set_grad_enabled(torch.is_grad_enabled() and logits_needed_grad):
        logits = model(x)
    clean_ce = F.cross_entropy(logits, y)
    stats: dict[str, float] = {
        "clean_ce": float(clean_ce.detach()),
        "clean_err": float((logits.detach().argmax(1) != y).float().mean()),
    }
    if bound_method is None:
        stats.update(robust_ce=float("nan"), robust_err=float("nan"))
        return clean_ce, stats

    common = dict(method=bound_method, slope=slope_used, beta=beta_used, domain=domain, **bound_kw)
    if generator is not None:
        common["generator"] = generator
    if fused:
        robust = bounds.robust_cross_entropy(model, x, y, eps, fused=True, reduction="mean", **common)
        robust_err = float("nan")
        counts = None
    else:
        n_classes = logits.shape[1]
        spec = bounds.margin_spec(y, n_classes)
        res = bounds.compute_bounds(model, x, eps, C=spec, y=y, need_upper=False, **common)
        lower = res.lower
        robust = robust_ce_from_lower(lower)
        robust_err = float((lower.detach() <= 0).any(dim=1).float().mean())
        counts = res.counts
    stats["robust_ce"] = float(robust.detach())
    stats["robust_err"] = robust_err
    stats.update(unstable_fractions(counts))
    if kappa > 0.0:
        loss = kappa * clean_ce + (1.0 - kappa) * robust
    else:
        loss = robust
    return loss, stats

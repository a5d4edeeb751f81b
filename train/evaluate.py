"""Honest evaluation of a classifier at radius eps: clean, PGD and verified error.

For samples ``(x_i, y_i)``, i = 1..N:

* ``clean_err``    = mean_i [argmax f(x_i) != y_i]
* ``pgd_err``      = mean_i [x_i is misclassified, or PGD finds x' in the ball that is]
  (a *lower* bound on the true robust error: an attack finds only some adversarial examples)
* ``verified_err_<m>`` = mean_i [x_i is misclassified, or not all margin lower bounds of method m are > 0]
* ``verified_err`` = mean_i [no method verifies sample i]  (the union of the methods; an
  *upper* bound on the true robust error)

For sound bounds ``clean_err <= pgd_err <= robust error <= verified_err <= verified_err_<m>``.
A clean-misclassified sample is never counted as verified.

A verification method is a bound method (``ibp``, ``crown-ibp``, ``crown``; its default slope), a
pair ``method:slope`` (e.g. ``crown-ibp:tightest``, ``crown:same-slope``), or a training method,
which verifies with the bound it trains on (``cap`` = ``crown-ibp:same-slope``, ``tightest`` =
``crown-ibp:tightest``; :func:`verifier`). Keys use underscores: ``verified_err_ibp``,
``verified_err_crown_ibp``, ``verified_err_crown_ibp_tightest``, ``verified_err_cap``. The
result's ``union`` lists the ``method:slope`` bounds the union holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from common.names import CERTIFY_METHODS, TRAIN_METHODS, bound_slope
from train.attacks import pgd_attack


def metric_key(method: str) -> str:
    """Result key of a method's verified error, e.g. ``crown-ibp`` -> ``verified_err_crown_ibp``,
    ``crown-ibp:tightest`` -> ``verified_err_crown_ibp_tightest``."""
    return "verified_err_" + method.replace("-", "_").replace(":", "_")


def verifier(name: str, default_slope: str = "adaptive") -> tuple[str, str]:
    """The ``(bound method, slope)`` a verification method names (see the module docstring);
    a bound method without a slope of its own takes ``default_slope``. ValueError for an
    unknown name."""
    if ":" in name:
        method, slope = name.split(":", 1)
        return method, bound_slope(method, slope)
    info = TRAIN_METHODS.get(name)
    if info is None or info.bound is None:
        known = ", ".join(m for m, i in TRAIN_METHODS.items() if i.bound is not None)
        raise ValueError(
            f"unknown verification method {name!r}; choose one of {known}, or a pair method:slope "
            "such as crown-ibp:tightest"
        )
    return info.bound, bound_slope(info.bound, info.slope or default_slope)


def verified_mask(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    method: str,
    slope: str = "adaptive",
    domain: tuple[float, float] = (0.0, 1.0),
    compile: bool = False,
) -> torch.Tensor:
    """``[B]`` bool: every margin lower bound ``f_y - f_j`` (j != y) of ``method`` is > 0
    (``compile``: with the engine's compiled kernels, :mod:`bounds.compiled`)."""
    import bounds

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
        spec = bounds.margin_spec(y, n_classes)
        res = bounds.compute_bounds(
            model,
            x,
            eps,
            method=method,
            slope=slope,
            C=spec,
            beta=1.0,
            domain=domain,
            y=y,
            need_upper=False,
            compile=compile,
        )
    return (res.lower > 0).all(dim=1)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    methods: Sequence[str] = CERTIFY_METHODS,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    batch_size: int = 256,
    domain: tuple[float, float] = (0.0, 1.0),
    slope: str = "adaptive",
    seed: int = 0,
    progress: bool = True,
    compile: bool = False,
) -> dict[str, Any]:
    """Clean, PGD and verified error of ``model`` on ``(x, y)`` at radius ``eps``.

    Args:
        model: classifier (``nn.Sequential`` the bound engine accepts).
        x, y: ``[N, *shape]`` inputs in ``domain`` and ``[N]`` labels.
        eps: L-inf radius >= 0 (input units).
        methods: verification methods (see the module docstring); may be empty.
            CROWN on larger convolutional nets is slow: leave it out there.
        pgd_steps, pgd_restarts: attack strength (``pgd_steps = 0`` skips the attack).
        batch_size: samples per batch.
        slope: lower-slope policy of the methods named without one (``crown-ibp``, ``crown``).
        seed: seed of the attack's random starts.
        progress: show a tqdm bar.
        compile: bound with the engine's compiled kernels (:mod:`bounds.compiled`; the same
            bounds to float rounding).

    Returns:
        ``{"n", "eps", "clean_err", "pgd_err", "verified_err", "verified_err_<m>"...}``;
        ``verified_err`` is 1.0 when ``methods`` is empty.
    """
    eps = float(eps)
    if not eps >= 0.0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    methods = list(methods)
    bounds_of = {m: verifier(m, slope) for m in methods}
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"evaluate needs as many labels as inputs (and at least one), got {len(x)} and {len(y)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    attack = (pgd_steps, pgd_restarts, torch.Generator().manual_seed(seed))
    wrong_clean = torch.zeros(len(x), dtype=torch.bool)
    wrong_pgd = torch.zeros(len(x), dtype=torch.bool)
    verified = {m: torch.zeros(len(x), dtype=torch.bool) for m in methods}
    bar = _progress(len(x), progress)
    was_training = model.training
    model.eval()  # BatchNorm with its running statistics (docs/design.md); the mode is restored below
    try:
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].to(device)
            yb = y[s : s + batch_size].to(device)
            with torch.no_grad():
                clean_wrong = model(xb).argmax(1) != yb
            wrong_clean[s : s + len(xb)] = clean_wrong.cpu()
            wrong_pgd[s : s + len(xb)] = _pgd_wrong(model, xb, yb, clean_wrong, eps, attack, domain)
            for m in methods:
                bound, chosen = bounds_of[m]
                ok = verified_mask(
                    model, xb, yb, eps, bound, slope=chosen, domain=domain, compile=compile
                )
                verified[m][s : s + len(xb)] = (ok & ~clean_wrong).cpu()
            if bar is not None:
                bar.update(len(xb))
                bar.set_postfix(
                    clean=f"{wrong_clean[: s + len(xb)].float().mean():.3f}",
                    pgd=f"{wrong_pgd[: s + len(xb)].float().mean():.3f}",
                )
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return _summary(eps, wrong_clean, wrong_pgd, verified, bounds_of)


def _pgd_wrong(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    clean_wrong: torch.Tensor,
    eps: float,
    attack: tuple[int, int, torch.Generator],
    domain: tuple[float, float],
) -> torch.Tensor:
    """``[B]`` bool on the CPU: misclassified clean or broken by PGD (``attack``: steps, restarts
    and the generator of the random starts; no attack with 0 steps or eps 0)."""
    pgd_steps, pgd_restarts, gen = attack
    if pgd_steps > 0 and eps > 0:
        _, broken = pgd_attack(
            model,
            xb,
            yb,
            eps,
            steps=pgd_steps,
            restarts=pgd_restarts,
            domain=domain,
            generator=gen,
        )
        return (broken | clean_wrong).cpu()
    return clean_wrong.cpu()


def _summary(
    eps: float,
    wrong_clean: torch.Tensor,
    wrong_pgd: torch.Tensor,
    verified: dict[str, torch.Tensor],
    bounds_of: dict[str, tuple[str, str]],
) -> dict[str, Any]:
    """:func:`evaluate`'s result from the per-sample masks: error rates per method and of the
    union of the methods, and the bounds that union holds."""
    out: dict[str, Any] = {
        "n": int(len(wrong_clean)),
        "eps": eps,
        "clean_err": float(wrong_clean.float().mean()),
        "pgd_err": float(wrong_pgd.float().mean()),
    }
    union = torch.zeros(len(wrong_clean), dtype=torch.bool)
    for m in verified:
        union |= verified[m]
        out[metric_key(m)] = float((~verified[m]).float().mean())
    out["verified_err"] = float((~union).float().mean())
    out["union"] = sorted({b if b == "ibp" else f"{b}:{sl}" for b, sl in bounds_of.values()})
    return out


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="certify", unit="sample", leave=False)

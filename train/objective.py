"""The training objective: the certified loss a training step minimises, and its batch stats.

For a batch ``(x, y)``, radius ``eps`` and a training method, the loss is

    L = kappa * CE(f(x), y) + (1 - kappa) * robust_CE(x, y; eps)

where the robust term is :func:`bounds.margin_ce` of the margin lower bounds ``lb_j`` of
``f_y(x') - f_j(x')`` over the ball ``{x' : ||x' - x||_inf <= eps} ∩ domain`` (an upper bound
of the worst-case cross-entropy there), or with ``fused=True`` the engine's fused bound of the
cross-entropy (``docs/fused-loss.md``), one backward row per sample instead of
``n_classes - 1``; ``fused="min"`` takes per sample the smaller of the fused bound and the IBP
bound (never looser than IBP).

Methods (:data:`common.names.TRAIN_METHODS`): ``natural`` (``L = CE(f(x), y)``), ``ibp``,
``crown-ibp`` (``beta`` mixes CROWN and IBP lower bounds), ``crown``, ``cap`` and ``tightest``
(CROWN-IBP with the tightest slopes and beta = 1; Lee et al. 2021). ``slope`` picks the engine's
lower-slope policy for the linear methods. ``sabr`` and ``mtl-ibp`` replace the robust term by
their own (:mod:`train.mixed_losses`): SABR's IBP robust CE on a small box ``B(x', lambda eps)``
around a PGD point, MTL-IBP's ``(1 - alpha) CE(f(x_adv), y) + alpha L_IBP``; their options
travel in a :class:`LossOptions`, which also holds Shi et al.'s warm-up regulariser
(:mod:`train.shi`), added to the loss of any bound method while eps ramps.

Batch statistics returned beside the loss (a read-only mapping of floats): ``clean_ce``,
``clean_err`` (fraction misclassified at x), ``robust_ce``, ``robust_err`` (fraction whose margin
lower bounds are not all > 0; NaN when ``fused`` gives no margins; for ``sabr`` those of the
small box), ``unstable_frac_l{i}`` (unstable ReLUs / ReLUs of layer i) and, with the warm-up
regulariser on, ``reg`` (its value, 0 outside the ramp), ``reg_tightness`` and ``reg_relu``. They
become floats when first read (:class:`LazyStats`),
so computing the loss never waits for the device: a caller that only needs the loss, or reads
the stats later, lets several steps or grid points queue up on an accelerator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import bounds
from bounds.bound_spec import BoundSpec, training_bound
from common.names import TRAIN_METHODS, resolve_method
from train import mixed_losses, shi


@dataclass(frozen=True)
class LossOptions:
    """Options of a loss beyond its bound: SABR's box size ``sabr_lambda`` in (0, 1], MTL-IBP's
    weight ``mtl_alpha`` in [0, 1], the PGD steps of their attacks ``attack_steps`` (None: the
    method's own, :data:`train.mixed_losses.SABR_STEPS` / ``MTL_STEPS``), and Shi et al.'s
    warm-up regulariser: on/off, weight ``warmup_reg_lambda``, tolerance ``warmup_reg_tol`` and
    the run's final radius ``eps_target`` (the ramp's end). Defaults equal
    :class:`train.config.TrainConfig`'s."""

    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5
    attack_steps: int | None = None
    warmup_reg: bool = False
    warmup_reg_lambda: float = 0.5
    warmup_reg_tol: float = 0.5
    eps_target: float | None = None

    @classmethod
    def of(cls, config: Any) -> LossOptions:
        """The options of a run's config (a :class:`train.config.TrainConfig` or a checkpoint's
        config dict; a missing key takes the default); ``eps_target`` is its ``eps``."""
        get = config.get if isinstance(config, Mapping) else lambda k, d: getattr(config, k, d)
        values = {f.name: get(f.name, f.default) for f in fields(cls) if f.name != "eps_target"}
        return cls(**values, eps_target=float(get("eps", 0.0)))

    def steps(self, method: str) -> int:
        """The attack's PGD steps of ``method``."""
        if self.attack_steps is not None:
            return int(self.attack_steps)
        return mixed_losses.SABR_STEPS if method == "sabr" else mixed_losses.MTL_STEPS

    def for_method(self, method: str) -> dict[str, float]:
        """The options that change ``method``'s loss at its final eps (the regulariser is 0
        there): what a scan of that loss records."""
        if method == "sabr":
            return {"sabr_lambda": float(self.sabr_lambda), "attack_steps": self.steps(method)}
        if method == "mtl-ibp":
            return {"mtl_alpha": float(self.mtl_alpha), "attack_steps": self.steps(method)}
        return {}


class LazyStats(Mapping):
    """Batch statistics that become plain floats when first read (each at most once).

    Values are floats, 0-d tensors or functions without arguments returning either; reading a
    key converts its value (a host round-trip for a tensor on an accelerator) and keeps it.
    """

    def __init__(self, values: dict[str, float | torch.Tensor | Callable[[], Any]]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> float:
        value = self._values[key]
        if not isinstance(value, float):
            value = float(value() if callable(value) else value)
            self._values[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"LazyStats({dict(self)!r})"


def _unstable_fraction(l: torch.Tensor, u: torch.Tensor) -> float:
    """Share of the neurons with ``l < 0 < u`` (NaN for a layer without neurons)."""
    return float(((l < 0) & (u > 0)).sum()) / l.numel() if l.numel() else float("nan")


def unstable_columns(fractions: Sequence[float]) -> dict[str, float]:
    """``{"unstable_frac_l{i}": fraction}`` per ReLU layer ``i`` (0-based), the column names the
    training record and the probes use."""
    return {f"unstable_frac_l{i}": float(f) for i, f in enumerate(fractions)}


def step_bound(method: str, bound: BoundSpec | None) -> BoundSpec | None:
    """The bound training method ``method`` minimises: ``bound`` (a :class:`bounds.BoundSpec`,
    its slope and beta made those the method fixes, :func:`common.names.resolve_method`), or
    the method's own default bound when None; None for natural training. ValueError for an
    unknown method, a slope the method does not allow, or a bound of another method."""
    own = training_bound(method)
    if own is None or bound is None:
        return own
    if bound.method != own.method:
        raise ValueError(
            f"method {method!r} bounds with {own.method!r}, got a bound of {bound.method!r}"
        )
    _, slope, beta = resolve_method(method, bound.slope, bound.beta)
    return replace(bound, slope=slope, beta=beta)


def certified_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    bound: BoundSpec | None = None,
    kappa: float = 0.0,
    generator: torch.Generator | None = None,
    options: LossOptions | None = None,
) -> tuple[torch.Tensor, LazyStats]:
    """Certified loss ``L = kappa * CE(f(x), y) + (1 - kappa) * robust term (+ R)`` and batch stats.

    The robust term is the bound's robust CE (module docstring), SABR's or MTL-IBP's
    (:mod:`train.mixed_losses`); ``R`` is Shi et al.'s warm-up regulariser when
    ``options.warmup_reg`` is on and eps ramps (:mod:`train.shi`).

    Args:
        model: ``nn.Sequential`` the engine accepts (starts with ``Normalize``).
        x: ``[B, *input_shape]`` inputs in ``bound.domain``; y: ``[B]`` int64 labels.
        eps: radius (float or per-sample ``[B]``), >= 0.
        method: a key of :data:`common.names.TRAIN_METHODS`.
        bound: how the robust term is bounded (:class:`bounds.BoundSpec`: slope, beta, domain,
            ``fused``, ``compile``, the slope search's options), e.g.
            ``bounds.training_bound(method, slope, beta, domain=..., fused=...)``; None: the
            method's own bound on the domain ``(0, 1)`` (:func:`step_bound`).
        kappa: clean-loss weight in [0, 1].
        generator: random source of random slope policies (``uniform``, ``binary``, ``tightest``)
            and of the attacks' starts (``sabr``, ``mtl-ibp``), so that a loss can be evaluated
            again exactly.
        options: SABR, MTL-IBP and regulariser options (:class:`LossOptions`; None: defaults).

    Returns:
        ``(loss, stats)``: a scalar tensor with gradient, and the stats (module doc), read lazily.
        One bound computation per call: its lower bounds serve both the loss and the stats.
    """
    spec = step_bound(method, bound)
    if not 0.0 <= float(kappa) <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    opts = options if options is not None else LossOptions()
    logits_needed_grad = spec is None or kappa > 0.0
    with torch.set_grad_enabled(torch.is_grad_enabled() and logits_needed_grad):
        logits = model(x)
    clean_ce = F.cross_entropy(logits, y)
    wrong = logits.detach().argmax(1) != y
    stats: dict[str, Any] = {
        "clean_ce": clean_ce.detach(),
        "clean_err": lambda: wrong.float().mean(),
    }
    if spec is None:
        stats.update(robust_ce=float("nan"), robust_err=float("nan"))
        return clean_ce, LazyStats(stats)
    n_classes = logits.shape[1]
    robust, preact = _method_term(model, x, y, eps, method, spec, generator, opts, stats, n_classes)
    if kappa > 0.0:
        loss = kappa * clean_ce + (1.0 - kappa) * robust
    else:
        loss = robust
    if opts.warmup_reg:
        own_ibp = TRAIN_METHODS[method].bound in ("ibp", "crown-ibp") and method != "sabr"
        own = preact if own_ibp else None
        reg = _warmup_term(model, x, eps, spec.domain, own, opts, stats)
        if reg is not None:
            loss = loss + reg
    return loss, LazyStats(stats)


def _method_term(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str,
    spec: BoundSpec,
    generator: torch.Generator | None,
    opts: LossOptions,
    stats: dict[str, Any],
    n_classes: int,
) -> tuple[torch.Tensor, Any]:
    """The robust term of ``method``: the bound's robust CE over ``B(x, eps)``, SABR's over its
    small box, or MTL-IBP's mix with the adversarial CE; and the pre-activation bounds the
    warm-up regulariser may reuse (None when fused)."""
    center, radius = x, eps
    if method == "sabr":
        center, radius = mixed_losses.sabr_center(
            model, x, y, eps, opts.sabr_lambda, spec.domain, opts.steps(method), generator
        )
    robust, preact = _robust_term(model, center, y, radius, spec, generator, n_classes, stats)
    if method == "mtl-ibp" and float(opts.mtl_alpha) < 1.0:
        x_adv = mixed_losses.mtl_point(model, x, y, eps, spec.domain, opts.steps(method), generator)
        adv_ce = F.cross_entropy(model(x_adv), y)
        stats["adv_ce"] = adv_ce.detach()
        robust = mixed_losses.mtl_mix(adv_ce, robust, opts.mtl_alpha)
    return robust, preact


def _robust_term(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    generator: torch.Generator | None,
    n_classes: int,
    stats: dict[str, Any],
) -> tuple[torch.Tensor, Any]:
    """The bound's robust CE over ``B(x, eps) ∩ domain`` (mean over the batch), its stats into
    ``stats``, and the ReLU layers' pre-activation bounds (None when fused)."""
    if spec.fused:
        robust = bounds.robust_loss(model, x, y, eps, spec, generator, reduction="mean")
        stats.update(robust_ce=robust.detach(), robust_err=float("nan"))
        return robust, None
    C = bounds.margin_spec(y, n_classes)
    res = bounds.bound_model(model, x, eps, spec, C, y, generator, need_upper=False)
    lower = res.lower
    robust = bounds.margin_ce(lower, reduction="mean")
    failed = (lower.detach() <= 0).any(dim=1)
    stats.update(robust_ce=robust.detach(), robust_err=lambda: failed.float().mean())
    for i, (l, u) in enumerate(res.preact):
        stats[f"unstable_frac_l{i}"] = functools.partial(_unstable_fraction, l.detach(), u.detach())
    return robust, res.preact


def _warmup_term(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    domain: tuple[float, float] | None,
    preact: Any,
    opts: LossOptions,
    stats: dict[str, Any],
) -> torch.Tensor | None:
    """Shi et al.'s regulariser at this eps (None outside the ramp), from the step's own IBP
    pre-activation bounds ``preact`` or, when None, from an IBP pass over ``B(x, eps)``."""
    e = float(eps) if not isinstance(eps, torch.Tensor) else float(eps.detach().float().mean())
    target = opts.eps_target if opts.eps_target is not None else e
    intensity = shi.warmup_intensity(e, target, opts.warmup_reg_lambda)
    if intensity == 0.0:
        stats.update(reg=0.0, reg_tightness=float("nan"), reg_relu=float("nan"))
        return None
    if preact is None:
        preact = bounds.compute_bounds(
            model, x, eps, method="ibp", domain=domain, need_upper=False
        ).preact
    reg, parts = shi.warmup_regulariser(
        preact, shi.input_radius(model, x, eps, domain), intensity, opts.warmup_reg_tol
    )
    stats.update(reg=reg.detach(), **parts)
    return reg

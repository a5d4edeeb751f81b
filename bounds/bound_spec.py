"""``BoundSpec``: how a bound is computed, in one frozen object.

A bound over the ball ``{x' : |x' - x|_inf <= eps} n domain`` is set by the engine method,
the lower-slope policy, the CROWN-IBP mixing weight ``beta``, the input ``domain``, the kind of
certified loss (``fused``), the execution (``compile``) and the options of the slope search
(``opt_steps``, ``opt_lr``, ``loss_fn``), or lower slopes given outright (``lower_slopes``).
The engine (:func:`bounds.compute.bound_model`,
:func:`bounds.robust_ce.robust_loss`), the training objective, the scans, the probes and the
certification pass one :class:`BoundSpec` along instead of these as loose arguments;
:func:`bounds.compute_bounds` and :func:`bounds.robust_cross_entropy` build one from their
keywords.

What changes per call stays an argument: the radius ``eps``, the specification ``C``, the
labels, the random ``generator`` and whether the upper bound is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import names

#: the values of ``fused``: the margin bound, the one-row fused bound, their per-sample minimum
#: with IBP (:mod:`bounds.fused`)
FUSED = (False, True, "min")


def check_beta(beta: float) -> float:
    """``beta`` as a float in ``[0, 1]`` (ValueError otherwise)."""
    b = float(beta)
    if not (0.0 <= b <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return b


def check_domain(domain: Sequence[float] | None) -> tuple[float, float] | None:
    """``domain`` as a pair of floats ``(low, high)`` with ``low <= high``, or None."""
    if domain is None:
        return None
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise ValueError(f"domain must be None or a pair (low, high), got {domain!r}") from None
    if not (lo <= hi) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"domain must satisfy low <= high, got {domain!r}")
    return lo, hi


def check_opt(opt_steps: int, opt_lr: float) -> tuple[int, float]:
    """``optimized``'s Adam settings: ``opt_steps >= 0`` and ``opt_lr > 0``; returns them as int
    and float."""
    steps, lr = int(opt_steps), float(opt_lr)
    if steps < 0 or not lr > 0:
        raise ValueError(f"opt_steps must be >= 0 and opt_lr > 0, got {opt_steps} and {opt_lr}")
    return steps, lr


def check_fused(fused: Any) -> bool | str:
    """``fused``: one of :data:`FUSED`."""
    if fused not in FUSED:
        raise ValueError(f"fused must be one of {', '.join(map(repr, FUSED))}, got {fused!r}")
    return fused


def check_slope_list(slopes: Any) -> tuple[Any, ...] | None:
    """``lower_slopes`` as a tuple (one entry per ReLU layer), or None; a mapping or a single
    tensor is refused here, the shapes and values by the engine, which knows the layers."""
    if slopes is None:
        return None
    if isinstance(slopes, (str, bytes, dict)) or not isinstance(slopes, Sequence):
        raise ValueError(
            "lower_slopes must be a sequence of tensors, one [B, *shape] per ReLU layer, "
            f"got {type(slopes).__name__}"
        )
    return tuple(slopes)


@dataclass(frozen=True)
class BoundSpec:
    """The settings of a bound (module doc). Construction validates and resolves them:

    - ``method``: a key of :data:`common.names.BOUND_METHODS`; ``slope``: one of
      :data:`common.names.SLOPES`, None for the method's own (``adaptive``, ``same-slope`` for
      ``cap``). ``cap`` is stored as the bound the engine computes, CROWN-IBP with same-slope
      lines at beta 1 (:func:`common.names.engine_method`), so ``BoundSpec("cap").method`` is
      ``"crown-ibp"``.
    - ``beta`` in ``[0, 1]``: ``lower = beta crown + (1 - beta) ibp`` for ``crown-ibp``.
    - ``domain``: ``(low, high)`` the ball is clipped to, or None.
    - ``fused``: False, True or ``"min"`` (:mod:`bounds.fused`; used by the certified loss).
    - ``compile``: run the element-wise kernels compiled (:mod:`bounds.mode`).
    - ``opt_steps``, ``opt_lr``: Adam steps and step size of ``optimized``; ``loss_fn``: what the
      slope search of ``tightest``/``optimized`` minimises (None: the default, see
      :func:`bounds.compute_bounds`).
    - ``lower_slopes``: the lower slopes ``a`` of ``relu(z) >= a z`` given outright, one tensor
      ``[B, *shape]`` with values in ``[0, 1]`` per ReLU layer, in the order of the network (the
      order of :attr:`bounds.BoundResult.slopes`), used in every pass instead of the policy
      ``slope`` (no random draw, no search; stable neurons keep their exact lines whatever is
      given there). Any values in ``[0, 1]`` give sound lines, so the bound stays sound; the
      slopes :attr:`bounds.BoundResult.slopes` reports for a policy, given back with the same
      settings, reproduce that policy's bound exactly (for ``crown``: except the searched
      policies, whose intermediate passes use adaptive lines while given slopes are used in
      every pass). Gradients flow into given slopes that require them. Shapes and values are
      checked by the engine (:func:`bounds.compute.check_lower_slopes`); a tuple here, left
      out of equality, hashing and ``repr``.
    """

    method: str = "crown-ibp"
    slope: str | None = None
    beta: float = 1.0
    domain: tuple[float, float] | None = (0.0, 1.0)
    fused: bool | str = False
    compile: bool = False
    opt_steps: int = 20
    opt_lr: float = 0.1
    loss_fn: Callable[..., Any] | None = None
    lower_slopes: Sequence[Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        slope = names.bound_slope(self.method, self.slope)
        method, slope, beta = names.engine_method(self.method, slope, check_beta(self.beta))
        domain = check_domain(self.domain)
        steps, lr = check_opt(self.opt_steps, self.opt_lr)
        resolved = dict(
            method=method,
            slope=slope,
            beta=beta,
            domain=domain,
            fused=check_fused(self.fused),
            compile=bool(self.compile),
            opt_steps=steps,
            opt_lr=lr,
            lower_slopes=check_slope_list(self.lower_slopes),
        )
        for key, value in resolved.items():
            object.__setattr__(self, key, value)

    @property
    def relaxes(self) -> bool:
        """True where the bound relaxes the ReLUs (slopes, a CROWN-type bound): not ``ibp``."""
        return self.method != "ibp"

    @property
    def linear_pass(self) -> bool:
        """True where the bound runs the final backward linear pass. The one place the rule
        "CROWN-IBP with beta 0 is IBP" is written: its linear part has weight 0, so the engine
        skips the pass and returns the IBP bound (with the relaxations, for analyses)."""
        return self.relaxes and not (self.method == "crown-ibp" and self.beta == 0.0)

    @property
    def searched(self) -> bool:
        """True for the slope policies searched per bound (:data:`common.names.SEARCHED_SLOPES`),
        unless the slopes are given (``lower_slopes``)."""
        return self.lower_slopes is None and self.slope in names.SEARCHED_SLOPES


def training_bound(
    method: str, slope: str | None = None, beta: float = 1.0, **settings: Any
) -> BoundSpec | None:
    """The :class:`BoundSpec` of training method ``method`` (a key of
    :data:`common.names.TRAIN_METHODS`): its bound method, its own slope or ``slope``, its fixed
    beta or ``beta`` (:func:`common.names.resolve_method`); ``settings``: the other fields. None
    for natural training."""
    bound, used_slope, used_beta = names.resolve_method(method, slope, beta)
    if bound is None:
        return None
    return BoundSpec(bound, used_slope, used_beta, **settings)

"""``compute_bounds``: certified bounds of ``C f(x')`` over ``{x' : |x' - x|_inf <= eps} n domain``.

Methods (``f`` the network, ``C`` ``[B, S, n_out]``):

- ``ibp``: interval propagation (:mod:`bounds.interval`), last Linear merged with ``C``.
- ``crown-ibp``: IBP bounds for every ReLU's input, one backward linear pass from ``C``
  (:mod:`bounds.linear`); ``lower = beta * crown + (1 - beta) * ibp`` and likewise
  ``upper = beta * crown_upper + (1 - beta) * ibp_upper`` (a convex combination of two sound
  bounds is sound). ``beta = 0`` skips the backward pass (result equals ``ibp``).
- ``crown``: every ReLU layer's input bounds by backward passes too (spec = identity over its
  neurons, in row chunks), intersected with the IBP bounds (both are sound; the tighter wins).
  Only neurons IBP leaves unstable in some sample of the batch get a pass (a neuron stable in
  every sample has exact lines whatever its bounds, so its reported bounds stay IBP's; one
  unstable in some sample gets CROWN bounds in every sample, so the reported ``preact`` of a
  sample can depend on the rest of the batch, while the final bounds do not). The first ReLU layer
  (one affine layer from the input) keeps its IBP bounds, which are exact there.
  ``beta`` is ignored.
  Before it allocates, it estimates the memory those passes keep for the backward pass
  (:func:`bounds.memory.crown_memory_estimate`) and refuses with one clear error when it exceeds what the
  machine has.
- ``cap``: CROWN-IBP with the same-slope relaxation and beta = 1, the bound the training method
  ``cap`` minimises and Lee et al. (2021) compare (:func:`common.names.engine_method`); full
  CROWN with same slopes is ``crown`` with ``slope="same-slope"``.

Slopes: a policy from :mod:`bounds.relaxations`, one slope per neuron and sample shared by every
row of ``C`` and by the lower and upper passes. For ``crown`` the intermediate passes use
the policy's slopes, except ``optimized`` and ``tightest``, whose intermediate passes use
``adaptive`` slopes; those two search the slopes of every ReLU layer for the *final* pass only
(:mod:`bounds.slope_search`), on detached copies, and the final differentiable pass uses the
found slopes as constants. Slopes given outright (``BoundSpec.lower_slopes``, one ``[B, *shape]``
tensor in ``[0, 1]`` per ReLU layer) replace the policy in every pass, with no draw or search:
any such line ``a z`` lies below ``relu(z)`` on ``[l, u]``, so the bound stays sound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from bounds import mode, slope_search
from bounds.bound_spec import BoundSpec
from bounds.interval import IntervalResult, ibp, input_box
from bounds.linear import backward_bound
from bounds.memory import check_crown_memory
from bounds.network import (
    LayerOp,
    affine_layers_before,
    cut_graph,
    layer_ops,
    relu_indices,
    shape_at,
)
from bounds.relaxations import POLICIES, Relaxation, with_lower_slope
from bounds.spec import check_C, check_eps, check_x, margin_ce, margin_spec

#: elements of one backward-pass coefficient tensor per chunk of identity rows (crown's
#: intermediate bounds); 2**24 float32 entries = 64 MiB.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class BoundResult:
    """Bounds and what produced them.

    ``lower``, ``upper``: ``[B, S]``. ``preact``: per ReLU layer ``(l, u)`` ``[B, *shape]``.
    ``slopes`` / ``upper_slopes``: per ReLU layer lower / upper slopes ``[B, *shape]`` (None for
    ibp). ``counts``: per ReLU layer ``dict(unstable, active, dead, total)`` over the batch
    (dead: ``u <= 0``, so also ``l = u = 0``; active: ``l >= 0 < u``; unstable: ``l < 0 < u``).
    ``lower_A``: ``[B, S, *input_shape]`` coefficients of the CROWN lower bound w.r.t. the input
    (None for ibp and for crown-ibp with beta = 0).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    preact: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    slopes: list[torch.Tensor] | None = None
    upper_slopes: list[torch.Tensor] | None = None
    lower_A: torch.Tensor | None = None

    @cached_property
    def counts(self) -> list[dict[str, int]]:
        """Per ReLU layer ``dict(unstable, active, dead, total)`` (computed on first access)."""
        return [_counts(l, u) for l, u in self.preact]

    def unstable_fractions(self) -> list[float]:
        """Per ReLU layer, the share of its neurons (over the batch) that are unstable
        (``l < 0 < u``); NaN for a layer without neurons."""
        return [c["unstable"] / c["total"] if c["total"] else float("nan") for c in self.counts]


def _counts(l: torch.Tensor, u: torch.Tensor) -> dict[str, int]:
    dead = u <= 0
    active = (l >= 0) & ~dead
    n_active, n_dead, total = int(active.sum()), int(dead.sum()), l.numel()
    return dict(unstable=total - n_active - n_dead, active=n_active, dead=n_dead, total=total)


@dataclass
class Prepared:
    """Everything up to (not including) the final backward pass.

    ``center``/``radius``: input box ``[B, *input_shape]``; ``ibp``: the IBP result (for ``C``);
    ``preact``: ``{relu op index: (l, u)}`` used for the relaxations; ``relax``: static
    relaxations of every ReLU layer (for optimized/tightest: their start slopes).
    """

    ops: list[LayerOp]
    center: torch.Tensor
    radius: torch.Tensor
    ibp: IntervalResult
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]]
    relax: dict[int, Relaxation]

    def detached(self) -> Prepared:
        """A copy cut from the autograd graph (and made of normal tensors under inference mode)."""
        return Prepared(
            [op.detached() for op in self.ops],
            cut_graph(self.center),
            cut_graph(self.radius),
            self.ibp,
            {k: (cut_graph(l), cut_graph(u)) for k, (l, u) in self.preact.items()},
            {k: Relaxation(*(cut_graph(t) for t in r)) for k, r in self.relax.items()},
        )

    def final_pass(
        self, A: torch.Tensor, relax: dict[int, Relaxation] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bound ``[B, S]`` of ``A . f`` and input coefficients, with ``relax`` (default: static)."""
        relax = self.relax if relax is None else relax
        return backward_bound(self.ops, len(self.ops), A, relax, self.center, self.radius)


def _layer_bounds(
    ops: list[LayerOp],
    k: int,
    relax: dict[int, Relaxation],
    center: torch.Tensor,
    radius: torch.Tensor,
    l_ibp: torch.Tensor,
    u_ibp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds ``(l, u)`` ``[B, *shape]`` of the input of ReLU op ``k``, intersected with the
    IBP bounds ``l_ibp, u_ibp``.

    Only neurons that IBP leaves unstable in some sample get a backward pass: a neuron stable in
    every sample has exact lines whatever its bounds, so tighter bounds there change nothing
    downstream (its reported bounds stay IBP's). Spec: identity rows over those neurons, in chunks of rows sized
    by :data:`CHUNK_ELEMENTS`, lower and upper of each row in one pass (rows ``[I; -I]``).
    """
    shape = shape_at(ops, k)
    B = center.shape[0]
    l_flat, u_flat = l_ibp.reshape(B, -1), u_ibp.reshape(B, -1)
    idx = ((l_flat < 0) & (u_flat > 0)).any(0).nonzero().flatten()
    if idx.numel() == 0:
        return l_ibp, u_ibp
    n = int(l_flat.shape[1])
    widest = max(int(torch.Size(shape_at(ops, p)).numel()) for p in range(k + 1))
    rows = max(1, CHUNK_ELEMENTS // (2 * B * widest))
    lows, ups = [], []
    for start in range(0, idx.numel(), rows):
        chunk = idx[start : start + rows]
        m = chunk.numel()
        block = center.new_zeros(m, n)  # identity rows of the chunk (no n x n identity)
        block[torch.arange(m, device=chunk.device), chunk] = 1
        A = torch.cat([block, -block]).reshape(1, 2 * m, *shape).expand(B, 2 * m, *shape)
        bound, _ = backward_bound(ops, k, A, relax, center, radius)
        lows.append(bound[:, :m])
        ups.append(-bound[:, m:])
    low, up = torch.cat(lows, 1), torch.cat(ups, 1)
    low = torch.maximum(low, l_flat[:, idx])
    up = torch.minimum(up, u_flat[:, idx])
    return l_flat.index_copy(1, idx, low).reshape(l_ibp.shape), u_flat.index_copy(
        1, idx, up
    ).reshape(u_ibp.shape)


def prepare(
    ops: list[LayerOp],
    x: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    C: torch.Tensor | None,
    generator: torch.Generator | None,
) -> Prepared:
    """Input box, IBP, intermediate bounds (IBP, or CROWN for ``spec.method == "crown"``) and the
    static relaxations of ``spec.slope`` (for the searched slopes: their start), or of the
    slopes ``spec.lower_slopes`` gives (:func:`check_lower_slopes`), in every pass."""
    center, radius = input_box(x, eps, spec.domain)
    res = ibp(ops, center, radius, C)
    policy = POLICIES[spec.slope]
    inner_policy = POLICIES["adaptive"] if spec.searched else policy
    linear_inner = spec.method == "crown"
    preact: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    relax: dict[int, Relaxation] = {}
    inner: dict[int, Relaxation] = {}  # relaxations of the intermediate passes (crown)
    if linear_inner:
        check_crown_memory(ops, res.preact, center)
    ks = relu_indices(ops)
    given = None if spec.lower_slopes is None else check_lower_slopes(spec.lower_slopes, ops, ks, x)
    for i, k in enumerate(ks):
        l, u = res.preact[k]
        if linear_inner and affine_layers_before(ops, k) > 1:
            l, u = _layer_bounds(ops, k, inner, center, radius, l, u)
        preact[k] = (l, u)
        relax[k] = policy(l, u, generator) if given is None else with_lower_slope(l, u, given[i])
        if linear_inner:
            inner[k] = relax[k] if inner_policy is policy else inner_policy(l, u)
    return Prepared(ops, center, radius, res, preact, relax)


def check_lower_slopes(
    slopes: Sequence[torch.Tensor], ops: list[LayerOp], ks: Sequence[int], x: torch.Tensor
) -> list[torch.Tensor]:
    """Given lower slopes (:attr:`bounds.BoundSpec.lower_slopes`) checked against the network
    ``ops`` (ReLU op indices ``ks``) and the batch ``x`` ``[B, *input_shape]``: one tensor
    ``[B, *shape_k]`` per ReLU layer ``k``, every value in ``[0, 1]`` (a line ``relu(z) >= a z``
    is below ``relu`` on every interval around 0 exactly for those). Returns them as tensors of
    ``x``'s dtype and device; one ValueError naming the first bad layer otherwise."""
    if len(slopes) != len(ks):
        raise ValueError(
            f"lower_slopes: expected one tensor per ReLU layer ({len(ks)}), got {len(slopes)}"
        )
    out = []
    for i, (a, k) in enumerate(zip(slopes, ks)):
        want = (x.shape[0], *shape_at(ops, k))
        if not isinstance(a, torch.Tensor) or tuple(a.shape) != want:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"lower_slopes[{i}]: expected a tensor of shape {want}, got {got}")
        a = a.to(dtype=x.dtype, device=x.device)
        if not bool(((a >= 0) & (a <= 1)).all()):
            raise ValueError(f"lower_slopes[{i}]: every slope must lie in [0, 1]")
        out.append(a)
    return out


def final_relaxations(
    prep: Prepared,
    spec: BoundSpec,
    objective: Callable[[Prepared, dict[int, Relaxation]], torch.Tensor],
) -> dict[int, Relaxation]:
    """Relaxations for the final pass: the static ones, or those found by the slope search of
    ``spec.slope`` (with ``spec.opt_steps``, ``spec.opt_lr`` for ``optimized``).

    ``objective(detached_prep, relax) -> scalar loss`` (minimised / sign-followed)."""
    if not spec.searched or not prep.relax:
        return prep.relax
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
    ):  # the search reuses prepare's upper lines
        det = prep.detached()

        def obj(relax: dict[int, Relaxation]) -> torch.Tensor:
            return objective(det, relax)

        if spec.slope == "tightest":
            found = slope_search.tighten(det.preact, det.relax, obj)
        else:
            found = slope_search.optimize(det.preact, det.relax, obj, spec.opt_steps, spec.opt_lr)
    out = {}
    for k, (l, u) in prep.preact.items():
        s, t = prep.relax[k].upper_slope, prep.relax[k].upper_intercept
        out[k] = with_lower_slope(l, u, found[k], upper=(s, t))
    return out


def _default_objective(
    spec: BoundSpec, C: torch.Tensor
) -> Callable[[Prepared, dict[int, Relaxation]], torch.Tensor]:
    """Loss of the lower bounds ``[B, S]`` of ``C f`` minimised by the slope search:
    ``spec.loss_fn(lower).sum()``, else ``-sum(lower)`` for ``optimized`` and the robust
    cross-entropy ``sum_b logsumexp([0, -lower_b])`` for ``tightest``."""
    loss_fn, slope = spec.loss_fn, spec.slope

    def objective(det: Prepared, relax: dict[int, Relaxation]) -> torch.Tensor:
        lower, _ = det.final_pass(cut_graph(C), relax)
        if loss_fn is not None:
            return loss_fn(lower).sum()
        if slope == "optimized":
            return -lower.sum()
        return margin_ce(lower).sum()

    return objective


def _preact_only(prep: Prepared, ks: list[int]) -> BoundResult:
    """The IBP bounds with the relaxations of ``prep`` (a bound without a linear pass)."""
    return BoundResult(
        prep.ibp.lower,
        prep.ibp.upper,
        [prep.preact[k] for k in ks],
        [prep.relax[k].lower_slope for k in ks],
        [prep.relax[k].upper_slope for k in ks],
        None,
    )


def bounds_from(
    ops: list[LayerOp],
    x: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    C: torch.Tensor | None,
    generator: torch.Generator | None = None,
    need_upper: bool = True,
    search_C: torch.Tensor | None = None,
) -> BoundResult:
    """The engine behind :func:`bound_model`, on validated arguments, in the current mode.

    ``C`` ``[B, S, n_out]`` (None: the logits). ``need_upper=False`` skips the CROWN upper pass
    (``upper`` is then the IBP upper bound). ``search_C``: the specification the slope
    search's objective uses (default ``C``). For ``crown-ibp``,
    ``lower = beta crown + (1 - beta) ibp`` (likewise ``upper``).
    """
    B = x.shape[0]
    n_out = ops[-1].out_shape[0]
    if C is None:
        C = torch.eye(n_out, dtype=x.dtype, device=x.device).unsqueeze(0).expand(B, n_out, n_out)
    S = C.shape[1]
    ks = relu_indices(ops)
    if not spec.relaxes:
        center, radius = input_box(x, eps, spec.domain)
        res = ibp(ops, center, radius, C)
        preact = [res.preact[k] for k in ks]
        return BoundResult(res.lower, res.upper, preact, None, None, None)
    prep = prepare(ops, x, eps, spec, C, generator)
    if not spec.linear_pass:  # pure IBP; slopes reported for analysis only
        return _preact_only(prep, ks)
    objective = _default_objective(spec, C if search_C is None else search_C)
    relax = final_relaxations(prep, spec, objective)
    A = torch.cat([C, -C], dim=1) if need_upper else C
    bound, A_in = prep.final_pass(A, relax)
    lower = bound[:, :S]
    upper = -bound[:, S:] if need_upper else prep.ibp.upper
    beta = spec.beta
    if spec.method == "crown-ibp" and beta < 1.0:
        lower = beta * lower + (1.0 - beta) * prep.ibp.lower
        if need_upper:
            upper = beta * upper + (1.0 - beta) * prep.ibp.upper
    return BoundResult(
        lower,
        upper,
        [prep.preact[k] for k in ks],
        [relax[k].lower_slope for k in ks],
        [relax[k].upper_slope for k in ks],
        A_in[:, :S],
    )


def bound_model(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    C: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    need_upper: bool = True,
) -> BoundResult:
    """Certified bounds ``lower <= C f(x') <= upper`` ``[B, S]`` of ``model`` for every ``x'`` in
    the ball ``{x' : |x' - x|_inf <= eps} n spec.domain``, computed as ``spec`` says, in the
    mode ``spec.compile`` selects (:func:`bounds.mode.engine`).

    ``x`` ``[B, *input_shape]``; ``eps`` float or ``[B]``; ``C`` ``[B, S, n_out]`` or
    ``[S, n_out]`` (None: the logits); ``y`` ``[B]`` labels: with ``C`` None and a searched
    slope, the search's objective uses the margins ``margin_spec(y)``; ``generator``: the random
    source of ``uniform``, ``binary`` and ``tightest``; ``need_upper`` False: ``upper`` is IBP's.
    The keyword form is :func:`compute_bounds`.
    """
    check_x(x)
    eps = check_eps(eps, x.shape[0])
    ops = layer_ops(model, tuple(x.shape[1:]), x.dtype, x.device, x=x)
    n_out = ops[-1].out_shape[0]
    C = check_C(C, x.shape[0], n_out, x)
    search_C = None
    if C is None and y is not None and spec.searched:
        search_C = margin_spec(y, n_out).to(dtype=x.dtype, device=x.device)
        if search_C.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must have one label per sample ({x.shape[0]}), got {search_C.shape[0]}"
            )
    with mode.engine(spec.compile):
        return bounds_from(ops, x, eps, spec, C, generator, bool(need_upper), search_C)


def compute_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "crown-ibp",
    slope: str | None = None,
    C: torch.Tensor | None = None,
    beta: float = 1.0,
    domain: Sequence[float] | None = (0.0, 1.0),
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    y: torch.Tensor | None = None,
    opt_steps: int = 20,
    opt_lr: float = 0.1,
    generator: torch.Generator | None = None,
    need_upper: bool = True,
    compile: bool = False,
    lower_slopes: Sequence[torch.Tensor] | None = None,
) -> BoundResult:
    """Certified bounds ``lower <= C f(x') <= upper`` for every ``x'`` in the clipped L-inf ball.

    Args:
        model: ``nn.Sequential`` of Normalize, Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d,
            AvgPool2d and Residual blocks (``docs/design.md``).
        x: ``[B, *input_shape]`` float32/float64 (results follow its dtype), before normalisation.
        eps: radius, float or ``[B]`` tensor (>= 0).
        method: a key of ``common.names.BOUND_METHODS``. slope: one of ``common.names.SLOPES``;
            None means ``adaptive`` (``same-slope`` for ``cap``, the only slope ``cap`` accepts;
            ``cap`` is CROWN-IBP with those lines at beta = 1, and ignores ``beta``).
        C: ``[B, S, n_out]`` specification (None: the logits, ``S = n_out``).
        beta: crown-ibp mixing weight in ``[0, 1]`` (``lower = beta crown + (1 - beta) ibp``).
        domain: ``(low, high)`` the ball is clipped to, or None.
        loss_fn: for ``tightest``/``optimized``: a function of ``lower`` ``[B, S]`` to minimise
            (default: ``tightest`` the robust cross-entropy ``logsumexp([0, -lower])`` per sample,
            ``optimized`` ``-sum(lower)``).
        y: labels ``[B]``; when ``C`` is None the margin specification ``margin_spec(y)`` is
            used as the slope-search objective's spec (the returned bounds stay on the logits).
        opt_steps, opt_lr: Adam steps and step size of ``optimized``.
        generator: random source of ``uniform``, ``binary`` and ``tightest``.
        need_upper: False skips the linear upper pass, halving a CROWN-type pass when only
            lower bounds are needed (training); ``upper`` is then IBP's (still sound).
        compile: True runs the element-wise steps of the passes as kernels compiled by
            ``torch.compile`` and cached on disk (:mod:`bounds.compiled`): the same bounds and
            gradients to float rounding, faster after the first call of a shape.
        lower_slopes: the lower slopes of every ReLU layer given outright, ``[B, *shape]`` in
            ``[0, 1]`` each, used instead of ``slope``'s (:class:`bounds.BoundSpec`).

    Returns:
        :class:`BoundResult`; all tensors differentiable w.r.t. the parameters and ``x``.

    The keyword form of :func:`bound_model`: the settings become one :class:`bounds.BoundSpec`.
    """
    spec = BoundSpec(
        method,
        slope,
        beta,
        domain,
        compile=compile,
        opt_steps=opt_steps,
        opt_lr=opt_lr,
        loss_fn=loss_fn,
        lower_slopes=lower_slopes,
    )
    return bound_model(model, x, eps, spec, C, y, generator, need_upper)

"""Complete verification: the exact worst margin of a ReLU network over the clipped L-inf ball,
as a mixed-integer linear program (Tjeng, Xiao and Tedrake 2019), solved by HiGHS through
``scipy.optimize.milp``.

The network, flattened to affine maps between its ReLU layers (:func:`affine_net`)::

    z_1 = W_1 x + b_1,   a_k = relu(z_k),   z_{k+1} = W_{k+1} a_k + b_{k+1},   f(x) = W_L a_{L-1} + b_L

over ``x`` in the box ``[lo, hi]`` (the ball clipped to the domain). Given sound bounds
``l <= z <= u`` of every pre-activation (the engine's tightest: CROWN with ``optimized``
slopes), each ReLU becomes:

- ``u <= 0`` (dead): ``a = 0``, the neuron drops out of the next layer;
- ``l >= 0`` (active): ``a = z``;
- ``l < 0 < u`` (unstable): one binary ``d`` and ``a >= 0, a >= z, a <= u d, a <= z - l (1 - d)``
  (the big-M formulation with the tightest constants ``M = u, -l``).

The margin of class ``j`` is ``m_j(x) = f_y(x) - f_j(x)``; the exact minimum margin is
``min_j min_x m_j``, one MILP per wrong class (same constraints, a different objective). A class
whose sound lower bound already reaches the smallest margin found so far (the attack's, then
the solved classes') cannot hold the minimum and is skipped.

This module imports neither torch nor the rest of the engine at load (worker processes solve
with numpy and scipy only); :func:`affine_net` imports torch when called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from bounds.milp_net import AffineNet, UnsupportedLayerError, affine_net, milp_inputs

__all__ = [
    "AffineNet",
    "MarginResult",
    "MilpOptions",
    "UnsupportedLayerError",
    "affine_net",
    "exact_min_margin",
    "milp_inputs",
    "margins_of",
    "init_worker",
    "solve_task",
    "VERIFIED",
    "FALSIFIED",
    "TIMEOUT",
    "STATUS_NAMES",
]

#: the per-sample outcomes (``status`` columns of a certify file).
VERIFIED, FALSIFIED, TIMEOUT = 1, 2, 3
STATUS_NAMES = {0: "pending", VERIFIED: "verified", FALSIFIED: "falsified", TIMEOUT: "timeout"}

#: relative widening of the pre-activation bounds before they become MILP variable bounds (the
#: engine's float64 rounding; a wider box is still a sound relaxation).
BOUND_SLACK = 1e-9


@dataclass
class MarginResult:
    """Outcome of :func:`exact_min_margin` for one sample.

    ``status``: :data:`VERIFIED` (every class's margin is provably > 0), :data:`FALSIFIED`
    (``counterexample`` ``[n_in]``, inside the box, has a margin < 0 in a float64 forward pass)
    or :data:`TIMEOUT`. ``margin``: the smallest margin at a point found (an upper bound of the
    exact minimum), ``margin_lower``: a proven lower bound of it; ``optimal``: every class was
    solved to optimality or skipped, so ``margin`` is the exact minimum (to the MIP gap,
    ``margin - margin_lower``). ``point``: the input attaining ``margin``. ``milps``: programs
    solved, ``seconds``: time spent.
    """

    status: int
    margin: float
    margin_lower: float
    optimal: bool
    point: np.ndarray | None
    counterexample: np.ndarray | None = None
    milps: int = 0
    seconds: float = 0.0
    per_class: dict[int, tuple[float, float]] = field(default_factory=dict)


def _layout(
    net: AffineNet, preact: Sequence[tuple[np.ndarray, np.ndarray]], n0: int
) -> tuple[list[tuple[np.ndarray, ...]], int]:
    """The variables of :func:`_build` after the ``n0`` inputs: per ReLU layer ``(l, u,
    unstable, z, a, d)``, its bounds ``[n_k]`` (widened by :data:`BOUND_SLACK`), its unstable
    mask and the indices of its pre-activations ``z``, unstable outputs ``a`` and binaries
    ``d``; and the number of variables."""
    layers = []
    n_vars = n0
    for k in range(net.n_relu_layers):
        l = np.asarray(preact[k][0], dtype=np.float64).reshape(-1)
        u = np.asarray(preact[k][1], dtype=np.float64).reshape(-1)
        if l.size != net.weights[k].shape[0]:
            raise ValueError(
                f"ReLU layer {k}: {l.size} bounds for {net.weights[k].shape[0]} neurons"
            )
        slack = BOUND_SLACK * (1.0 + np.maximum(np.abs(l), np.abs(u)))
        l, u = np.minimum(l - slack, u), u + slack  # widened, and never crossed
        unstable = (l < 0) & (u > 0)
        n, n_u = l.size, int(unstable.sum())
        z = np.arange(n_vars, n_vars + n)
        a = np.arange(n_vars + n, n_vars + n + n_u)
        d = np.arange(n_vars + n + n_u, n_vars + n + 2 * n_u)
        n_vars += n + 2 * n_u
        layers.append((l, u, unstable, z, a, d))
    return layers, n_vars


def _build(
    net: AffineNet, lo: np.ndarray, hi: np.ndarray, preact: Sequence[tuple[np.ndarray, np.ndarray]]
):
    """The big-M program's constraints (module docstring). Returns ``(A, lb_c, ub_c, lb_v, ub_v,
    integrality, last, zs)``, ``A`` a CSR matrix over the variables, ``last`` ``[n_last, n_vars]``
    the last ReLU layer's activations as linear maps of the variables (logits ``W_L last v + b_L``)
    and ``zs`` per ReLU layer the indices of its pre-activation variables.

    Variables: ``x`` (in ``[lo, hi]``), then per ReLU layer its pre-activations ``z`` (in
    ``[l, u]``), the outputs ``a`` of its unstable neurons (in ``[0, u]``) and their binaries."""
    n0 = lo.size
    layers, n_vars = _layout(net, preact, n0)
    lb_v = [np.asarray(lo, np.float64).reshape(-1)]
    ub_v = [np.asarray(hi, np.float64).reshape(-1)]
    integ = [np.zeros(n0)]
    act = sp.csr_matrix((np.ones(n0), (np.arange(n0), np.arange(n0))), shape=(n0, n_vars))
    blocks, lbc, ubc = [], [], []
    for k, (l, u, unstable, z, a, d) in enumerate(layers):
        n, n_u = l.size, a.size
        lb_v += [l, np.zeros(n_u), np.zeros(n_u)]
        ub_v += [u, u[unstable], np.ones(n_u)]
        integ += [np.zeros(n + n_u), np.ones(n_u)]
        # z - W act(v) = b
        zsel = sp.csr_matrix((np.ones(n), (np.arange(n), z)), shape=(n, n_vars))
        blocks.append(zsel - net.weights[k] @ act)
        lbc.append(net.biases[k])
        ubc.append(net.biases[k])
        if n_u:
            r = np.arange(n_u)
            zu, lu, uu = z[unstable], l[unstable], u[unstable]
            one = np.ones(n_u)

            def rows(
                cols: list[np.ndarray], vals: list[np.ndarray], r: np.ndarray = r, n_u: int = n_u
            ) -> sp.csr_matrix:
                return sp.csr_matrix(
                    (np.concatenate(vals), (np.tile(r, len(cols)), np.concatenate(cols))),
                    shape=(n_u, n_vars),
                )

            blocks.append(rows([a, zu], [one, -one]))  # a - z >= 0
            lbc.append(np.zeros(n_u))
            ubc.append(np.full(n_u, np.inf))
            blocks.append(rows([a, d], [one, -uu]))  # a - u d <= 0
            lbc.append(np.full(n_u, -np.inf))
            ubc.append(np.zeros(n_u))
            blocks.append(rows([a, zu, d], [one, -one, -lu]))  # a - z - l d <= -l
            lbc.append(np.full(n_u, -np.inf))
            ubc.append(-lu)
        # this layer's activations: z where active, a where unstable, nothing where dead
        active = l >= 0
        ia, iu = np.nonzero(active)[0], np.nonzero(unstable)[0]
        act = sp.csr_matrix(
            (
                np.ones(ia.size + iu.size),
                (np.concatenate([ia, iu]), np.concatenate([z[active], a])),
            ),
            shape=(n, n_vars),
        )
    A = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, n_vars))
    lbc_all = np.concatenate(lbc) if lbc else np.zeros(0)
    ubc_all = np.concatenate(ubc) if ubc else np.zeros(0)
    return (
        A,
        lbc_all,
        ubc_all,
        np.concatenate(lb_v),
        np.concatenate(ub_v),
        np.concatenate(integ),
        act,
        [layer[3] for layer in layers],
    )


def tighten(
    net: AffineNet,
    lo: np.ndarray,
    hi: np.ndarray,
    preact: Sequence[tuple[np.ndarray, np.ndarray]],
    deadline: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation bounds of ReLU layers 2, 3, ... tightened by linear programs: for each
    unstable neuron, min and max of its ``z`` over the program of :func:`_build` with the binaries
    relaxed to ``[0, 1]`` (a relaxation of the reachable set, so the results are sound), layer by
    layer, intersected with the given bounds. Stops (keeping what it has) at ``deadline``
    (``time.perf_counter()`` seconds)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    pre = [
        (np.asarray(l, np.float64).reshape(-1).copy(), np.asarray(u, np.float64).reshape(-1).copy())
        for l, u in preact
    ]
    for k in range(1, len(pre)):
        l, u = pre[k]
        idx = np.nonzero((l < 0) & (u > 0))[0]
        if idx.size == 0:
            continue
        A, lbc, ubc, lbv, ubv, _, _, zs = _build(net, lo, hi, pre)
        cons = [LinearConstraint(A, lbc, ubc)]
        bnds = Bounds(lbv, ubv)
        for i in idx:
            for sign in (1.0, -1.0):
                if time.perf_counter() > deadline:
                    return pre
                c = np.zeros(lbv.size)
                c[zs[k][i]] = sign
                res = milp(c, bounds=bnds, constraints=cons, options={"disp": False})
                if res.status == 0:
                    if sign > 0:
                        l[i] = max(l[i], float(res.fun) - 1e-9 * (1 + abs(res.fun)))
                    else:
                        u[i] = min(u[i], -float(res.fun) + 1e-9 * (1 + abs(res.fun)))
    return pre


def margins_of(net: AffineNet, x: np.ndarray, y: int) -> np.ndarray:
    """Margins ``f_y - f_j`` ``[n_out]`` of one flattened input (``0`` at ``j = y``), float64."""
    logits = net.forward(np.asarray(x, np.float64).reshape(1, -1))[0]
    return logits[y] - logits


@dataclass(frozen=True)
class MilpOptions:
    """How :func:`exact_min_margin` searches one sample.

    ``time_limit``: seconds for the whole sample (all its programs). ``mip_rel_gap``: HiGHS's
    relative optimality gap. ``need_margin``: False stops at the first class proven negative
    (falsified) instead of solving the rest for the minimum. ``tighten_lp``: first tighten the
    bounds of ReLU layers 2, 3, ... by linear programs (:func:`tighten`, at most a quarter of
    ``time_limit``). ``cutoff``: add ``m_j <= best`` (the smallest margin attained so far) to
    class ``j``'s program: only values below it can change the minimum, and an infeasible
    program proves ``m_j >= best``.
    """

    time_limit: float = 10.0
    mip_rel_gap: float = 1e-6
    need_margin: bool = True
    tighten_lp: bool = True
    cutoff: bool = True


@dataclass
class _Search:
    """One sample's search so far: the smallest margin attained (``best``, at ``best_point``),
    per class a proven lower bound of its margin (``proven``) and ``(dual bound, margin at the
    program's solution)`` (``per_class``), the programs solved, and whether every class was
    solved to optimality or skipped."""

    best: float
    best_point: np.ndarray
    proven: dict[int, float]
    per_class: dict[int, tuple[float, float]] = field(default_factory=dict)
    milps: int = 0
    solved_all: bool = True


@dataclass
class _Program:
    """One sample's big-M program (:func:`_build`): the network, the box ``[lo, hi]``, the label,
    the constraints, the variable bounds, the integrality and ``out_map`` (logits
    ``= out_map v + b_out``)."""

    net: AffineNet
    lo: np.ndarray
    hi: np.ndarray
    y: int
    constraints: list
    bounds: object
    integrality: np.ndarray
    out_map: sp.csr_matrix


def _solve_class(prog: _Program, j: int, left: float, opts: MilpOptions, search: _Search) -> None:
    """Minimise the margin ``m_j = f_y - f_j`` over ``prog`` within ``left`` seconds and fold the
    outcome into ``search``: a proven lower bound of ``m_j`` (the dual bound; ``best`` when the
    cutoff makes the program infeasible) and, at the solution found, a new smallest margin."""
    from scipy.optimize import LinearConstraint, milp

    net, y, b_out = prog.net, prog.y, prog.net.biases[-1]
    c = np.asarray((prog.out_map[y] - prog.out_map[j]).todense()).reshape(-1)
    const = float(b_out[y] - b_out[j])
    cons = prog.constraints
    if opts.cutoff and np.isfinite(search.best):  # only values below it matter: m_j <= best
        cons = cons + [LinearConstraint(sp.csr_matrix(c[None]), -np.inf, search.best - const)]
    res = milp(
        c,
        integrality=prog.integrality,
        bounds=prog.bounds,
        constraints=cons,
        options={"time_limit": left, "mip_rel_gap": opts.mip_rel_gap, "disp": False},
    )
    search.milps += 1
    dual = getattr(res, "mip_dual_bound", None)
    if res.status == 2 and opts.cutoff:  # infeasible below the cutoff: m_j >= best everywhere
        search.proven[j] = max(search.proven[j], search.best)
        search.per_class[j] = (search.best, np.nan)
        return
    has_dual = dual is not None and np.isfinite(dual)
    if res.status == 0:
        dual_bound = float(dual) + const if has_dual else float(res.fun) + const
    else:
        search.solved_all = False
        dual_bound = float(dual) + const if has_dual else -np.inf
    search.proven[j] = max(search.proven[j], dual_bound)
    if res.x is not None:
        cand = np.clip(res.x[: prog.lo.size], prog.lo, prog.hi)
        m = margins_of(net, cand, y)
        m[y] = np.inf
        if m.min() < search.best:
            search.best, search.best_point = float(m.min()), cand
        search.per_class[j] = (dual_bound, float(m[j]))
    else:
        search.per_class[j] = (dual_bound, np.nan)
    if res.status not in (0, 1):  # infeasible / unbounded / error: the program is wrong here
        raise RuntimeError(f"HiGHS failed on class {j}: {res.message}")


def _result(search: _Search, any_class: bool, t0: float) -> MarginResult:
    """The :class:`MarginResult` of a finished search (started at ``t0``)."""
    margin_lower = float(min(search.proven.values())) if any_class else np.inf
    best = search.best
    if best < 0:
        status = FALSIFIED
    elif margin_lower > 0:
        status = VERIFIED
    else:
        status = TIMEOUT
    return MarginResult(
        status,
        best,
        min(margin_lower, best),
        search.solved_all,  # every class solved to optimality or skipped by its bound
        search.best_point,
        search.best_point if status == FALSIFIED else None,
        search.milps,
        time.perf_counter() - t0,
        search.per_class,
    )


def exact_min_margin(
    net: AffineNet,
    lo: np.ndarray,
    hi: np.ndarray,
    y: int,
    preact: Sequence[tuple[np.ndarray, np.ndarray]],
    lower: np.ndarray | None = None,
    start: np.ndarray | None = None,
    options: MilpOptions | None = None,
) -> MarginResult:
    """Decide one sample exactly: is ``f_y(x) - f_j(x) > 0`` for every ``j != y`` and every ``x``
    in ``[lo, hi]`` (``[n_in]`` each, flattened)?

    Args:
        net: :func:`affine_net` of the model.
        lo, hi: the input box (the ball ``[x - eps, x + eps]`` clipped to the domain).
        y: the label.
        preact: per ReLU layer sound bounds ``(l, u)`` ``[n_k]`` of its pre-activations over the box.
        lower: ``[n_out]`` sound lower bounds of the margins (entry ``y`` ignored); classes whose
            bound reaches the best margin found are skipped, and they order the search.
        start: a point of the box (the attack's); its margins start the search.
        options: time limit, gap and search options (:class:`MilpOptions`; None: defaults).

    Returns:
        :class:`MarginResult`.
    """
    from scipy.optimize import Bounds, LinearConstraint

    opts = MilpOptions() if options is None else options
    t0 = time.perf_counter()
    lo = np.asarray(lo, np.float64).reshape(-1)
    hi = np.asarray(hi, np.float64).reshape(-1)
    n_out = net.biases[-1].size
    lower = np.full(n_out, -np.inf) if lower is None else np.asarray(lower, np.float64).reshape(-1)
    point = (
        np.clip(np.asarray(start, np.float64).reshape(-1), lo, hi)
        if start is not None
        else (lo + hi) / 2
    )
    m0 = margins_of(net, point, y)
    m0[y] = np.inf
    if opts.tighten_lp:
        preact = tighten(net, lo, hi, preact, t0 + opts.time_limit / 4)
    A, lbc, ubc, lbv, ubv, integ, last, _ = _build(net, lo, hi, preact)
    constraints = [LinearConstraint(A, lbc, ubc)] if A.shape[0] else []
    out_map = (net.weights[-1] @ last).tocsr()  # logits = out_map v + b_out
    prog = _Program(net, lo, hi, y, constraints, Bounds(lbv, ubv), integ, out_map)
    others = [j for j in range(n_out) if j != y]
    # classes a bound cannot settle first (most likely to break), then the rest by their bound
    order = sorted(others, key=lambda j: (lower[j] > 0, m0[j] if lower[j] <= 0 else lower[j]))
    search = _Search(float(m0.min()), point, {j: float(lower[j]) for j in others})
    for j in order:
        if search.best < 0 and not opts.need_margin:
            search.solved_all = False
            break
        if lower[j] >= search.best:  # cannot be below the smallest margin already attained
            continue
        left = opts.time_limit - (time.perf_counter() - t0)
        if left <= 0.01:
            search.solved_all = False
            break
        _solve_class(prog, j, left, opts, search)
    return _result(search, bool(others), t0)


_NET: AffineNet | None = None


def init_worker(net: AffineNet) -> None:
    """Hold ``net`` for :func:`solve_task` (a process pool's initializer; the pool's workers
    import numpy and scipy, not torch)."""
    global _NET
    _NET = net


def solve_task(task: tuple) -> tuple[int, MarginResult]:
    """``(i, lo, hi, y, preact, lower, start, time_limit)`` -> ``(i, exact_min_margin(...))`` on
    the network :func:`init_worker` set."""
    if _NET is None:
        raise RuntimeError("solve_task needs init_worker(net) first")
    i, lo, hi, y, pre, lower, start, limit = task
    options = MilpOptions(time_limit=limit)
    return i, exact_min_margin(_NET, lo, hi, y, pre, lower=lower, start=start, options=options)

"""Relations every correct bound engine satisfies exactly, and its contract's shapes and errors.

Each relation below follows from the definitions in docs/design.md and docs/fused-loss.md (none is a mere
"usually tighter" observation):

- eps = 0 (float or per-sample zeros): every method returns the margins, lower = upper = C f(x);
  the robust cross-entropy, fused or not, is the clean cross-entropy.
- ``ibp`` equals plain interval arithmetic (reference implementation in ``bounds_helpers``,
  last Linear merged with C), and IBP intervals are nested when eps grows.
- ``crown-ibp`` uses IBP intermediate bounds; with beta = 0 its lower bound *is* ibp's, and its
  lower bound is affine in beta: ``lower(beta) = beta lower(1) + (1 - beta) lower(0)``.
- The first ReLU layer's input bounds are exact for every method (one affine map of a box).
- With one hidden ReLU layer, crown and crown-ibp (beta = 1) coincide, and cap equals crown
  with same-slope.
- Slope policies: zero -> 0, one -> 1, adaptive -> 1[u >= -l], same-slope -> u / (u - l),
  binary in {0, 1}, uniform / optimized in [0, 1] on unstable neurons; exact lines on stable
  ones; upper slopes u / (u - l) (0 / 1 when stable).
- Deterministic slopes: each sample's bound is independent of the rest of the batch, each
  row's of the other rows of C, and bounds scale with a positive scaling of C.
- Unfused robust CE = logsumexp([0, -lower]); reductions mean/sum match ``none``.
- ``lower_A`` is the real coefficient: shape [B, S, *input_shape]; at eps = 0 it is the
  Jacobian C df/dx; and ``lower_A . x' + c`` (``c`` recovered from ``lower`` by concretising
  over the box) is itself a lower bound of ``C f(x')`` at every point we can find.
- Counts add up and agree with the reported pre-activation bounds.
- Finite values and gradients (params and x) also with zero-width boxes, huge weights, float64.
- Bad inputs raise ValueError with a clear message.
"""

from __future__ import annotations

import pytest
import torch
from bounds_helpers import (
    ALL_SLOPES,
    COMBOS,
    Case,
    assert_close,
    assert_le,
    cases,
    corner_points,
    input_box,
    make_cnn,
    make_mlp,
    margin_matrix,
    pgd_minimise,
    reference_crown,
    reference_ibp,
    reference_slopes,
    spec_values,
    tolerance,
    uniform_points,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import bounds
from bounds import METHODS, SLOPES, Normalize, compute_bounds, margin_spec, robust_cross_entropy

DETERMINISTIC = ["adaptive", "zero", "one", "same-slope"]
DET_COMBOS = (
    [("ibp", "adaptive")]
    + [("crown-ibp", s) for s in DETERMINISTIC]
    + [("crown", s) for s in DETERMINISTIC]
    + [("cap", "same-slope")]
)
LINEAR_COMBOS = [c for c in COMBOS if c[0] != "ibp"]


def _bounds(
    case: Case,
    method: str,
    slope: str,
    C=None,
    eps=None,
    beta: float = 1.0,
    seed: int = 0,
    x=None,
    **kw,
):
    return compute_bounds(
        case.model,
        case.x if x is None else x,
        case.eps if eps is None else eps,
        method=method,
        slope=slope,
        C=C,
        y=case.y,
        beta=beta,
        domain=case.domain,
        opt_steps=kw.pop("opt_steps", 3),
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def _spec(case: Case) -> torch.Tensor:
    return margin_spec(case.y, case.n_classes).to(case.x.dtype)


# ------------------------------------------------------------------ exports and spec


def test_exported_names_match_the_contract() -> None:
    assert tuple(METHODS) == ("ibp", "crown-ibp", "crown", "cap")
    assert tuple(SLOPES) == tuple(ALL_SLOPES)
    assert bounds.Normalize is Normalize
    assert hasattr(bounds, "BoundResult")


@given(y=st.lists(st.integers(0, 5), min_size=1, max_size=6), extra=st.integers(0, 3))
def test_margin_spec_rows(y: list[int], extra: int) -> None:
    n = max(y) + 1 + extra
    n = max(n, 2)
    C = margin_spec(torch.tensor(y), n)
    assert C.shape == (len(y), n - 1, n)
    assert torch.equal(C.to(torch.float64), margin_matrix(torch.tensor(y), n))


# ------------------------------------------------------------------ eps = 0


@given(case=cases(eps_choices=(0.0,)))
def test_eps_zero_gives_the_margins_and_the_clean_loss(case: Case) -> None:
    C = _spec(case)
    with torch.no_grad():
        logits = case.model(case.x)
    m = torch.einsum("bsn,bn->bs", C, logits)
    clean = nn.functional.cross_entropy(logits, case.y, reduction="none")
    tol = tolerance(case.x.dtype, m, logits)
    for method, slope in COMBOS:
        for spec, target in ((C, m), (None, logits)):
            res = _bounds(case, method, slope, C=spec)
            assert_close(
                res.lower,
                target,
                tol,
                f"{method}/{slope} eps=0 lower (C={'m' if spec is not None else 'None'})",
            )
            assert_close(
                res.upper,
                target,
                tol,
                f"{method}/{slope} eps=0 upper (C={'m' if spec is not None else 'None'})",
            )
        for fused in (False, True):
            loss = robust_cross_entropy(
                case.model,
                case.x,
                case.y,
                case.eps,
                method=method,
                slope=slope,
                domain=case.domain,
                fused=fused,
                reduction="none",
                opt_steps=2,
            )
            assert_close(
                loss,
                clean,
                tolerance(case.x.dtype, clean, logits),
                f"{method}/{slope} fused={fused} eps=0 loss",
            )


# ------------------------------------------------------------------ IBP and crown-ibp


@given(case=cases(), scale=st.sampled_from([1.5, 2.0, 10.0]))
def test_ibp_is_interval_arithmetic_and_nested_in_eps(case: Case, scale: float) -> None:
    C = _spec(case)
    lo, hi = input_box(case.x, case.eps, case.domain)
    rl, ru, rpre = reference_ibp(case.model, lo, hi, C)
    res = _bounds(case, "ibp", "adaptive", C=C)
    tol = tolerance(case.x.dtype, rl, ru)
    assert_close(res.lower, rl, tol, "ibp lower vs interval arithmetic")
    assert_close(res.upper, ru, tol, "ibp upper vs interval arithmetic")
    for (l, u), (a, b) in zip(res.preact, rpre):
        t = tolerance(case.x.dtype, a, b)
        assert_close(l, a, t, "ibp preact lower")
        assert_close(u, b, t, "ibp preact upper")
    # crown-ibp uses exactly these intermediate bounds
    for slope in ("adaptive", "tightest"):
        res2 = _bounds(case, "crown-ibp", slope, C=C)
        for (l, u), (a, b) in zip(res2.preact, rpre):
            t = tolerance(case.x.dtype, a, b)
            assert_close(l, a, t, f"crown-ibp/{slope} preact lower = IBP")
            assert_close(u, b, t, f"crown-ibp/{slope} preact upper = IBP")
    # nested boxes -> nested intervals
    big_eps = case.eps * scale + 0.01
    big = _bounds(case, "ibp", "adaptive", C=C, eps=big_eps)
    assert_le(big.lower, res.lower, tol, "ibp lower must not rise when eps grows")
    assert_le(res.upper, big.upper, tol, "ibp upper must not fall when eps grows")
    for (l, u), (bl, bu) in zip(res.preact, big.preact):
        t = tolerance(case.x.dtype, bl, bu)
        assert_le(bl, l, t, "ibp preact lower nested")
        assert_le(u, bu, t, "ibp preact upper nested")


@given(case=cases(), beta=st.floats(0.0, 1.0))
def test_crown_ibp_beta_mixes_linearly_and_beta_zero_is_ibp(case: Case, beta: float) -> None:
    C = _spec(case)
    ibp = _bounds(case, "ibp", "adaptive", C=C)
    for slope in DETERMINISTIC:
        r0 = _bounds(case, "crown-ibp", slope, C=C, beta=0.0)
        r1 = _bounds(case, "crown-ibp", slope, C=C, beta=1.0)
        rb = _bounds(case, "crown-ibp", slope, C=C, beta=beta)
        tol = tolerance(case.x.dtype, r0.lower, r1.lower)
        assert_close(r0.lower, ibp.lower, tol, f"crown-ibp/{slope} beta=0 lower = ibp lower")
        assert_close(
            rb.lower,
            beta * r1.lower + (1 - beta) * r0.lower,
            tol,
            f"crown-ibp/{slope} lower affine in beta",
        )


@given(case=cases())
def test_first_relu_layer_bounds_are_exact_for_every_method(case: Case) -> None:
    lo, hi = input_box(case.x, case.eps, case.domain)
    _, _, rpre = reference_ibp(case.model, lo, hi, None)
    if not rpre:
        return
    a, b = rpre[0]
    t = tolerance(case.x.dtype, a, b)
    for method, slope in COMBOS:
        res = _bounds(case, method, slope, C=_spec(case))
        l, u = res.preact[0]
        assert_close(l, a, t, f"{method}/{slope} first-layer preact lower is exact")
        assert_close(u, b, t, f"{method}/{slope} first-layer preact upper is exact")


@given(case=cases(kinds=("mlp", "cnn"), eps_choices=(0.02, 0.1, 0.3)))
def test_one_hidden_layer_crown_equals_crown_ibp_and_cap_equals_same_slope(case: Case) -> None:
    n_relu = sum(isinstance(m, nn.ReLU) for m in case.model)
    if n_relu != 1:
        return
    C = _spec(case)
    for slope in DETERMINISTIC:
        a = _bounds(case, "crown", slope, C=C)
        b = _bounds(case, "crown-ibp", slope, C=C, beta=1.0)
        tol = tolerance(case.x.dtype, a.lower, a.upper)
        assert_close(
            a.lower, b.lower, tol, f"1 hidden layer: crown/{slope} lower = crown-ibp lower"
        )
        assert_close(
            a.upper, b.upper, tol, f"1 hidden layer: crown/{slope} upper = crown-ibp upper"
        )
    a = _bounds(case, "cap", "same-slope", C=C, beta=0.3)  # cap fixes beta = 1
    b = _bounds(case, "crown-ibp", "same-slope", C=C, beta=1.0)
    assert_close(
        a.lower, b.lower, tolerance(case.x.dtype, a.lower), "cap = crown-ibp + same-slope, beta 1"
    )
    assert_close(
        a.upper, b.upper, tolerance(case.x.dtype, a.upper), "cap = crown-ibp + same-slope, beta 1"
    )


# ------------------------------------------------------------------ slopes and counts


@given(case=cases(eps_choices=(0.02, 0.1, 0.3, 1.5)))
def test_slope_policies_and_counts(case: Case) -> None:
    C = _spec(case)
    for method, slope in LINEAR_COMBOS:
        res = _bounds(case, method, slope, C=C)
        assert len(res.slopes) == len(res.upper_slopes) == len(res.preact) == len(res.counts)
        for i, ((l, u), a, s, cnt) in enumerate(
            zip(res.preact, res.slopes, res.upper_slopes, res.counts)
        ):
            what = f"{method}/{slope} layer {i}"
            assert a.shape == s.shape == l.shape, what
            unst = (l < 0) & (u > 0)
            act = (l >= 0) & (u > 0)
            dead = (u <= 0) & (l < 0)
            tie = (l >= 0) & (u <= 0)  # l = u = 0: active and dead at once, either count is right
            # counts
            assert cnt["unstable"] + cnt["active"] + cnt["dead"] == cnt["total"], what
            assert cnt["total"] in (l.numel(), l[0].numel()), what
            if cnt["total"] == l.numel():
                assert cnt["unstable"] == int(unst.sum()), what
                assert int(act.sum()) <= cnt["active"] <= int(act.sum()) + int(tie.sum()), what
                assert int(dead.sum()) <= cnt["dead"] <= int(dead.sum()) + int(tie.sum()), what
            assert bool(((a[tie] >= 0) & (a[tie] <= 1)).all()), what
            # stable neurons: exact lines
            assert torch.equal(a[act], torch.ones_like(a[act])) and torch.equal(
                s[act], torch.ones_like(s[act])
            ), what
            assert torch.equal(a[dead], torch.zeros_like(a[dead])) and torch.equal(
                s[dead], torch.zeros_like(s[dead])
            ), what
            # unstable neurons
            au, su, lu, uu = a[unst], s[unst], l[unst], u[unst]
            t = tolerance(case.x.dtype, su)
            assert_close(su, uu / (uu - lu), t, f"{what}: upper slope u/(u-l)")
            assert bool(((au >= 0) & (au <= 1)).all()), f"{what}: lower slope outside [0, 1]"
            if slope == "zero":
                assert bool((au == 0).all()), what
            elif slope == "one":
                assert bool((au == 1).all()), what
            elif slope == "adaptive":
                assert torch.equal(au, (uu >= -lu).to(au.dtype)), what
            elif slope == "same-slope":
                assert_close(au, su, t, f"{what}: same-slope lower slopes equal the upper slopes")
            elif slope == "binary":
                assert bool(((au == 0) | (au == 1)).all()), f"{what}: binary slopes not in {{0, 1}}"


def test_tightest_slopes_are_vertices_where_the_gradient_is_nonzero() -> None:
    """A 1-hidden-layer net with many unstable neurons: most tightest slopes are 0 or 1."""
    model, _ = make_mlp(4, [16], 3, seed=3)
    x = torch.rand(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0])
    res = compute_bounds(
        model,
        x,
        0.3,
        method="crown-ibp",
        slope="tightest",
        C=margin_spec(y, 3),
        y=y,
        generator=torch.Generator().manual_seed(0),
    )
    (l, u), a = res.preact[0], res.slopes[0]
    au = a[(l < 0) & (u > 0)]
    assert au.numel() > 5
    assert float(((au == 0) | (au == 1)).double().mean()) > 0.5


# ------------------------------------------------------------------ independence and scaling


@given(case=cases(max_batch=3), k=st.sampled_from([0.5, 3.0]))
def test_batch_row_independence_and_scaling(case: Case, k: float) -> None:
    C = _spec(case)
    b = case.x.shape[0]
    eps_t = (
        case.eps
        if isinstance(case.eps, torch.Tensor)
        else torch.full((b,), case.eps, dtype=case.x.dtype)
    )
    for method, slope in DET_COMBOS:
        full = _bounds(case, method, slope, C=C)
        tol = tolerance(case.x.dtype, full.lower, full.upper)
        # float eps == the same eps as a per-sample tensor
        as_t = _bounds(case, method, slope, C=C, eps=eps_t)
        assert_close(as_t.lower, full.lower, tol, f"{method}/{slope}: tensor eps vs float eps")
        # each sample on its own
        for i in range(b):
            one = compute_bounds(
                case.model,
                case.x[i : i + 1],
                eps_t[i : i + 1],
                method=method,
                slope=slope,
                C=C[i : i + 1],
                domain=case.domain,
            )
            assert_close(
                one.lower,
                full.lower[i : i + 1],
                tol,
                f"{method}/{slope}: sample {i} alone vs in batch",
            )
            assert_close(
                one.upper,
                full.upper[i : i + 1],
                tol,
                f"{method}/{slope}: sample {i} alone vs in batch (upper)",
            )
        # first row of C on its own
        row = _bounds(case, method, slope, C=C[:, :1])
        assert_close(
            row.lower,
            full.lower[:, :1],
            tol,
            f"{method}/{slope}: row 0 alone vs with the other rows",
        )
        # positive scaling of C
        sc = _bounds(case, method, slope, C=C * k)
        assert_close(
            sc.lower, k * full.lower, tol * max(k, 1), f"{method}/{slope}: lower(kC) = k lower(C)"
        )
        assert_close(
            sc.upper, k * full.upper, tol * max(k, 1), f"{method}/{slope}: upper(kC) = k upper(C)"
        )
    # ibp is symmetric: upper(C) = -lower(-C)
    ibp = _bounds(case, "ibp", "adaptive", C=C)
    neg = _bounds(case, "ibp", "adaptive", C=-C)
    assert_close(
        ibp.upper, -neg.lower, tolerance(case.x.dtype, ibp.upper), "ibp: upper(C) = -lower(-C)"
    )


# ------------------------------------------------------------------ the loss


@given(case=cases(eps_choices=(0.0, 0.02, 0.1, 0.3)))
def test_unfused_loss_is_logsumexp_of_negated_lower_bounds_and_reductions(case: Case) -> None:
    C = _spec(case)
    for method, slope in DET_COMBOS:
        res = _bounds(case, method, slope, C=C)
        want = torch.logsumexp(torch.cat([torch.zeros_like(res.lower[:, :1]), -res.lower], 1), 1)
        kw = dict(method=method, slope=slope, domain=case.domain)
        got = robust_cross_entropy(case.model, case.x, case.y, case.eps, reduction="none", **kw)
        assert_close(
            got,
            want,
            tolerance(case.x.dtype, want),
            f"{method}/{slope}: unfused loss = CE([0, -lower])",
        )
        for fused in (False, True):
            none = robust_cross_entropy(
                case.model, case.x, case.y, case.eps, fused=fused, reduction="none", **kw
            )
            mean = robust_cross_entropy(
                case.model, case.x, case.y, case.eps, fused=fused, reduction="mean", **kw
            )
            tot = robust_cross_entropy(
                case.model, case.x, case.y, case.eps, fused=fused, reduction="sum", **kw
            )
            t = tolerance(case.x.dtype, none) * none.numel()
            assert mean.dim() == 0 and tot.dim() == 0
            none, mean, tot = none.detach(), mean.detach(), tot.detach()
            assert abs(float(mean) - float(none.mean())) <= float(t) and abs(
                float(tot) - float(none.sum())
            ) <= float(t)


# ------------------------------------------------------------------ lower_A


@given(case=cases(eps_choices=(0.0,)))
def test_lower_A_is_the_jacobian_at_eps_zero(case: Case) -> None:
    C = _spec(case)
    x = case.x.clone().requires_grad_(True)
    out = torch.einsum("bsn,bn->bs", C, case.model(x))
    jac = torch.stack(
        [
            torch.autograd.grad(out[:, s].sum(), x, retain_graph=True)[0]
            for s in range(out.shape[1])
        ],
        1,
    )
    for method, slope in LINEAR_COMBOS:
        res = _bounds(case, method, slope, C=C)
        assert res.lower_A is not None, f"{method}/{slope}: lower_A missing"
        assert res.lower_A.shape == (case.x.shape[0], C.shape[1], *case.x.shape[1:]), (
            f"{method}/{slope}: lower_A shape"
        )
        assert_close(
            res.lower_A,
            jac,
            tolerance(case.x.dtype, jac),
            f"{method}/{slope}: lower_A at eps=0 vs Jacobian",
        )
    assert _bounds(case, "ibp", "adaptive", C=C).lower_A is None


@pytest.mark.parametrize(
    "method,slope",
    [
        ("crown-ibp", "adaptive"),
        ("crown", "adaptive"),
        ("cap", "same-slope"),
        ("crown-ibp", "tightest"),
        ("crown", "zero"),
    ],
)
@given(case=cases(eps_choices=(0.02, 0.1, 0.3, 1.5)), seed=st.integers(0, 1000))
def test_lower_A_with_recovered_constant_is_a_valid_linear_lower_bound(
    method: str, slope: str, case: Case, seed: int
) -> None:
    """With ``c = lower - min_box(lower_A . x')`` the plane ``lower_A . x' + c`` lies below ``C f(x')``
    at samples, corners and PGD minimisers of ``C f(x') - lower_A . x'`` (beta = 1)."""
    C = _spec(case)
    res = _bounds(case, method, slope, C=C, beta=1.0, seed=seed)
    A = res.lower_A.detach()
    assert A.shape == (case.x.shape[0], C.shape[1], *case.x.shape[1:])
    lo, hi = input_box(case.x, case.eps, case.domain)
    Af = A.flatten(2)
    box_min = torch.minimum(Af * lo.flatten(1).unsqueeze(1), Af * hi.flatten(1).unsqueeze(1)).sum(
        -1
    )  # [B, S]
    c = res.lower.detach() - box_min
    gen = torch.Generator().manual_seed(seed)
    pts = torch.cat(
        [uniform_points(lo, hi, 16, gen), corner_points(lo, hi, 16, gen)], 1
    )  # [B, K, *in]
    with torch.no_grad():
        gap = (
            spec_values(case.model, pts, C)
            - torch.einsum("bsi,bki->bks", Af, pts.flatten(2))
            - c.unsqueeze(1)
        )
    b, s = c.shape
    in_shape = lo.shape[1:]
    rows = C.reshape(b * s, -1)
    Ar = Af.reshape(b * s, -1)
    lo_r = lo.unsqueeze(1).expand(b, s, *in_shape).reshape(b * s, *in_shape)
    hi_r = hi.unsqueeze(1).expand(b, s, *in_shape).reshape(b * s, *in_shape)
    val, _ = pgd_minimise(
        lambda z: (case.model(z) * rows).sum(-1) - (Ar * z.flatten(1)).sum(-1),
        lo_r,
        hi_r,
        steps=20,
        gen=gen,
    )
    worst = torch.minimum(gap.min(1).values, val.view(b, s) - c)
    tol = tolerance(case.x.dtype, res.lower, c, A.abs().sum(-1))
    assert_le(
        torch.zeros_like(worst), worst, tol, f"{method}/{slope}: lower_A . x' + c above C f(x')"
    )


# ------------------------------------------------------------------ finiteness and gradients


def _finite_cases() -> list[tuple[str, nn.Sequential, torch.Tensor, object, tuple | None]]:
    out = []
    m, shape = make_mlp(3, [4, 4], 3, seed=1)
    out.append(("eps0", m, torch.rand(2, *shape, dtype=torch.float64), 0.0, (0.0, 1.0)))
    # zero-width box by clipping: x on the domain's edge, domain of zero width
    out.append(
        ("zero-width-domain", m, torch.full((2, *shape), 0.5, dtype=torch.float64), 0.3, (0.5, 0.5))
    )
    # huge weights
    big, shape = make_mlp(3, [4, 4], 3, seed=2, weight_scale=1e6, bias_scale=1e6)
    out.append(("huge-weights", big, torch.rand(2, *shape, dtype=torch.float64), 0.1, (0.0, 1.0)))
    big32, _ = make_mlp(3, [4, 4], 3, seed=2, weight_scale=1e6, bias_scale=1e6, dtype=torch.float32)
    out.append(("huge-weights-f32", big32, torch.rand(2, *shape), 0.1, (0.0, 1.0)))
    cnn = make_cnn((1, 5, 5), [(2, 3, 2, 1)], [4], 3, seed=3, dtype=torch.float32)
    out.append(
        ("cnn-f32-tensor-eps", cnn, torch.rand(2, 1, 5, 5), torch.tensor([0.0, 0.2]), (0.0, 1.0))
    )
    out.append(("cnn-f32-eps-huge", cnn, torch.rand(2, 1, 5, 5), 1e3, None))
    return out


FINITE = _finite_cases()


@pytest.mark.parametrize("name,model,x,eps,domain", FINITE, ids=[c[0] for c in FINITE])
def test_finite_values_and_gradients(
    name: str, model: nn.Sequential, x: torch.Tensor, eps, domain
) -> None:
    y = torch.tensor([0, 2])
    C = margin_spec(y, 3).to(x.dtype)
    for method, slope in COMBOS:
        for fused in (False, True):
            model.zero_grad(set_to_none=True)
            xx = x.clone().requires_grad_(True)
            loss = robust_cross_entropy(
                model,
                xx,
                y,
                eps,
                method=method,
                slope=slope,
                domain=domain,
                fused=fused,
                opt_steps=2,
                generator=torch.Generator().manual_seed(0),
            )
            assert torch.isfinite(loss), f"{name} {method}/{slope} fused={fused}: loss {loss}"
            loss.backward()
            assert xx.grad is not None and torch.isfinite(xx.grad).all(), (
                f"{name} {method}/{slope} fused={fused}: x grad"
            )
            for p_name, p in model.named_parameters():
                assert p.grad is not None, (
                    f"{name} {method}/{slope} fused={fused}: no gradient for {p_name}"
                )
                assert torch.isfinite(p.grad).all(), (
                    f"{name} {method}/{slope} fused={fused}: non-finite grad {p_name}"
                )
        res = compute_bounds(
            model, x, eps, method=method, slope=slope, C=C, y=y, domain=domain, opt_steps=2
        )
        for t in (res.lower, res.upper, *(v for lu in res.preact for v in lu)):
            assert torch.isfinite(t).all(), f"{name} {method}/{slope}: non-finite bounds"
        assert bool((res.lower <= res.upper).all()), f"{name} {method}/{slope}: lower > upper"
        if res.lower_A is not None:
            assert torch.isfinite(res.lower_A).all()


# ------------------------------------------------------------------ validation


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        Normalize([0.5, 0.5], [0.2, 0.3]), nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)
    )


@pytest.mark.parametrize(
    "bad,name",
    [
        (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), "Tanh"),
        (nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2)), "Sigmoid"),
        (nn.Sequential(nn.Linear(2, 3), nn.Dropout(), nn.Linear(3, 2)), "Dropout"),
        (
            nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
            "MaxPool2d",
        ),
    ],
)
def test_unsupported_layers_are_named(bad: nn.Sequential, name: str) -> None:
    x = torch.rand(1, 1, 2, 2) if name == "MaxPool2d" else torch.rand(1, 2)
    with pytest.raises(ValueError, match=name):
        compute_bounds(bad, x, 0.1)
    with pytest.raises(ValueError, match=name):
        robust_cross_entropy(bad, x, torch.tensor([0]), 0.1)


def test_non_sequential_model_is_refused() -> None:
    with pytest.raises(ValueError):
        compute_bounds(nn.Linear(2, 2), torch.rand(1, 2), 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="bogus"),
        dict(slope="bogus"),
        dict(method="ibp", slope="steepest"),
        dict(eps=-0.1),
        dict(eps=float("nan")),
        dict(eps=torch.tensor([0.1, -0.1])),
        dict(eps=torch.tensor([0.1, 0.1, 0.1])),
        dict(C=torch.ones(2, 1, 5)),
        dict(method="cap", slope="adaptive"),
    ],
    ids=[
        "method",
        "slope",
        "ibp-slope",
        "eps<0",
        "eps-nan",
        "eps-tensor<0",
        "eps-wrong-length",
        "C-shape",
        "cap-adaptive",
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    args = dict(eps=0.1, method="crown-ibp", slope="adaptive")
    args.update(kwargs)
    eps = args.pop("eps")
    with pytest.raises(ValueError):
        compute_bounds(_mlp(), torch.rand(2, 2), eps, **args)
    args.pop("C", None)
    if "C" not in kwargs:
        with pytest.raises(ValueError):
            robust_cross_entropy(_mlp(), torch.rand(2, 2), torch.tensor([0, 1]), eps, **args)


def test_bad_loss_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        robust_cross_entropy(_mlp(), torch.rand(2, 2), torch.tensor([0, 1]), 0.1, reduction="avg")
    with pytest.raises(ValueError):
        robust_cross_entropy(_mlp(), torch.rand(2, 2), torch.tensor([0, 5]), 0.1)
    with pytest.raises(ValueError):
        robust_cross_entropy(_mlp(), torch.rand(2, 2), torch.tensor([0]), 0.1)


# ------------------------------------------------------------------ fused loss internals


def _chord():
    from bounds import fused

    return fused.chord


@given(
    lows=st.lists(st.floats(-60.0, 60.0), min_size=1, max_size=6),
    widths=st.lists(
        st.sampled_from([0.0, 1e-12, 1e-6, 0.3, 0.999, 1.0, 1.001, 5.0, 40.0]),
        min_size=6,
        max_size=6,
    ),
    offset=st.sampled_from([0.0, 1e4, -1e4]),
)
def test_fused_chord_lies_above_exp_and_touches_it_at_the_ends(
    lows: list[float], widths: list[float], offset: float
) -> None:
    """``s d + t >= exp(d - m)`` on ``[l, u]`` (m = max(0, max u), the shift), equality at both ends
    (tangent when ``u = l``); ``s, t`` and their gradients are finite, also for huge ``l, u``."""
    chord = _chord()
    l = torch.tensor(lows, dtype=torch.float64).unsqueeze(0) + offset
    u = l + torch.tensor(widths[: l.shape[1]], dtype=torch.float64).unsqueeze(0)
    l.requires_grad_(True)
    u.requires_grad_(True)
    m = u.detach().amax(1, keepdim=True).clamp(min=0)
    s, t = chord(l, u, m)
    assert s.shape == t.shape == l.shape
    assert torch.isfinite(s).all() and torch.isfinite(t).all()
    (gl, gu) = torch.autograd.grad((s + t).sum(), [l, u])
    assert torch.isfinite(gl).all() and torch.isfinite(gu).all(), "chord gradients must be finite"
    s, t, l0, u0 = s.detach(), t.detach(), l.detach(), u.detach()
    frac = torch.linspace(0, 1, 101, dtype=torch.float64).view(-1, 1, 1)
    d = l0 + frac * (u0 - l0)  # [101, 1, k]
    line = s * (d - l0) + (
        s * l0 + t
    )  # evaluate as s (d - l) + value at l, to avoid cancellation in the test
    tol = 1e-9 * (1 + (s * d).abs() + t.abs())
    assert_le(torch.exp(d - m), line + tol, 0.0, "exp(d - m) above the chord")
    # touching at the ends: s l + t = e^{l-m}, s u + t = e^{u-m}
    el, eu = torch.exp(l0 - m), torch.exp(u0 - m)
    assert_close(
        s * l0 + t, el, 1e-9 * (1 + (s * l0).abs().max() + el.max()), "chord meets exp at l"
    )
    assert_close(
        s * u0 + t, eu, 1e-8 * (1 + (s * u0).abs().max() + eu.max()), "chord meets exp at u"
    )


@given(case=cases(eps_choices=(0.0, 0.02, 0.1, 0.3)))
def test_fused_ibp_equals_unfused_ibp_and_crown_ibp_beta_zero(case: Case) -> None:
    """Fused IBP uses the interval bound ``sum_j e^{u_j}``: the same number as the unfused IBP
    loss; crown-ibp with beta = 0 is that bound as well."""
    kw = dict(domain=case.domain, reduction="none")
    ibp_u = robust_cross_entropy(
        case.model, case.x, case.y, case.eps, method="ibp", fused=False, **kw
    )
    ibp_f = robust_cross_entropy(
        case.model, case.x, case.y, case.eps, method="ibp", fused=True, **kw
    )
    cib_f = robust_cross_entropy(
        case.model, case.x, case.y, case.eps, method="crown-ibp", beta=0.0, fused=True, **kw
    )
    tol = tolerance(case.x.dtype, ibp_u)
    assert_close(ibp_f, ibp_u, tol, "fused ibp vs unfused ibp")
    assert_close(cib_f, ibp_u, tol, "fused crown-ibp beta=0 vs ibp")


@pytest.mark.parametrize("slope", ["adaptive", "same-slope"])
def test_crown_intermediate_bounds_do_not_depend_on_chunking(
    slope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Identity specifications are split into row chunks for memory; any chunk size gives the
    same bounds (checked with chunks of one row or a few rows on a small CNN)."""
    from bounds import compute as bc

    model = make_cnn((1, 6, 6), [(2, 3, 1, 1), (2, 3, 2, 1)], [5], 3, seed=7)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 2])
    method = "crown"
    ref = compute_bounds(model, x, 0.05, method=method, slope=slope, C=margin_spec(y, 3))
    for elements in (1, 200, 1000):
        monkeypatch.setattr(bc, "CHUNK_ELEMENTS", elements)
        res = compute_bounds(model, x, 0.05, method=method, slope=slope, C=margin_spec(y, 3))
        tol = tolerance(torch.float64, ref.lower, ref.upper)
        assert_close(res.lower, ref.lower, tol, f"chunk {elements}: lower")
        assert_close(res.upper, ref.upper, tol, f"chunk {elements}: upper")
        for (l, u), (rl, ru) in zip(res.preact, ref.preact):
            assert_close(l, rl, tol, f"chunk {elements}: preact lower")
            assert_close(u, ru, tol, f"chunk {elements}: preact upper")


# ------------------------------------------------------------------ grad modes and gradients


@pytest.mark.parametrize(
    "ctx", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"]
)
@pytest.mark.parametrize(
    "method,slope", [("crown-ibp", "tightest"), ("crown", "optimized"), ("crown", "tightest")]
)
def test_searched_slopes_work_under_no_grad_and_inference_mode(
    method: str, slope: str, ctx
) -> None:
    """Certification code runs under ``torch.no_grad()`` / ``torch.inference_mode()``: the slope
    searches must still work there and give the same bounds and losses as with autograd on."""
    model, _ = make_mlp(3, [5, 5], 3, seed=1)
    x = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1])
    C = margin_spec(y, 3)
    kw = dict(method=method, slope=slope, opt_steps=3)
    want = compute_bounds(
        model, x, 0.2, C=C, y=y, generator=torch.Generator().manual_seed(0), **kw
    ).lower.detach()
    want_f = robust_cross_entropy(
        model,
        x,
        y,
        0.2,
        fused=True,
        reduction="none",
        generator=torch.Generator().manual_seed(0),
        **kw,
    ).detach()
    with ctx():
        got = compute_bounds(
            model, x, 0.2, C=C, y=y, generator=torch.Generator().manual_seed(0), **kw
        ).lower
        got_f = robust_cross_entropy(
            model,
            x,
            y,
            0.2,
            fused=True,
            reduction="none",
            generator=torch.Generator().manual_seed(0),
            **kw,
        )
    assert_close(got.clone(), want, 1e-10, f"{method}/{slope} under {ctx.__name__}")
    assert_close(got_f.clone(), want_f, 1e-10, f"{method}/{slope} fused under {ctx.__name__}")


GRAD_COMBOS = [
    ("ibp", "adaptive"),
    ("crown-ibp", "adaptive"),
    ("crown-ibp", "same-slope"),
    ("crown", "adaptive"),
    ("crown", "zero"),
    ("cap", "same-slope"),
    ("crown-ibp", "tightest"),
    ("crown", "optimized"),
]


@pytest.mark.parametrize("method,slope", GRAD_COMBOS, ids=[f"{m}-{s}" for m, s in GRAD_COMBOS])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_gradients_match_finite_differences(method: str, slope: str, fused: bool) -> None:
    """``torch.autograd.gradcheck`` of the certified loss w.r.t. ``x`` and the first layer's
    weight, in float64, at a generic point (no box edge on the domain's edge), so that a custom
    backward (e.g. a fused ``autograd.Function``) with a wrong gradient is caught. The searched
    slopes are constants of the final pass by design; their search restarts from the same seed."""
    model = make_cnn((1, 4, 4), [(2, 3, 1, 1)], [4], 3, seed=11)
    x0 = 0.3 + 0.4 * torch.rand(
        2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    y = torch.tensor([1, 2])
    conv = model[1]
    w0 = conv.weight.detach().clone()
    x = x0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)
    try:
        assert torch.autograd.gradcheck(
            lambda xx, ww: _loss_with_weight(model, conv, ww, xx, y, method, slope, fused),
            (x, w),
            eps=1e-6,
            atol=1e-5,
            rtol=1e-4,
        )
    finally:
        del conv.weight
        conv.weight = nn.Parameter(w0)


def _loss_with_weight(model, conv, w, x, y, method, slope, fused):
    """The certified loss with ``conv.weight`` replaced by the tensor ``w`` (kept in the graph)."""
    del conv.weight
    conv.weight = w  # a plain tensor attribute: the engine reads it like a parameter
    try:
        return robust_cross_entropy(
            model,
            x,
            y,
            0.05,
            method=method,
            slope=slope,
            fused=fused,
            reduction="sum",
            opt_steps=2,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        del conv.weight
        conv.weight = nn.Parameter(w.detach().clone())


# ------------------------------------------------------------------ against a reference CROWN pass


@given(case=cases(eps_choices=(0.02, 0.1, 0.3, 1.5)), seed=st.integers(0, 1000))
def test_final_pass_is_the_crown_formula_with_the_reported_bounds_and_slopes(
    case: Case, seed: int
) -> None:
    """Given the reported pre-activation bounds and lower slopes, the lower bound, the upper bound
    (deterministic slopes: the same slopes on ``-C``) and ``lower_A`` are exactly those of one CROWN
    backward pass (dense reference in ``bounds_helpers.reference_crown``). Together with the sampled
    soundness of ``preact`` and slopes in [0, 1], this proves the reported lower bound sound; it
    also shows that ``res.slopes`` really are the slopes used."""
    C = _spec(case)
    lo, hi = input_box(case.x, case.eps, case.domain)
    for method, slope in LINEAR_COMBOS:
        res = _bounds(case, method, slope, C=C, beta=1.0, seed=seed)
        ref, ref_A = reference_crown(case.model, lo, hi, C, res.preact, res.slopes)
        tol = tolerance(case.x.dtype, ref, res.lower) * 10
        assert_close(res.lower, ref, tol, f"{method}/{slope}: lower vs reference CROWN pass")
        assert_close(
            res.lower_A.flatten(2),
            ref_A,
            tolerance(case.x.dtype, ref_A),
            f"{method}/{slope}: lower_A",
        )
        if slope in DETERMINISTIC:
            neg, _ = reference_crown(case.model, lo, hi, -C, res.preact, res.slopes)
            assert_close(
                res.upper, -neg, tol, f"{method}/{slope}: upper vs reference CROWN pass on -C"
            )
            if method == "crown-ibp":  # the slopes are the policy's on the IBP bounds
                for (l, u), a in zip(res.preact, res.slopes):
                    unst = (l < 0) & (u > 0)
                    want = reference_slopes(slope, l, u)
                    assert_close(
                        a[unst],
                        want[unst],
                        tolerance(case.x.dtype, want),
                        f"{method}/{slope}: slopes",
                    )


def _reference_fused(case: Case, method: str, slope: str, beta: float) -> torch.Tensor:
    """docs/fused-loss.md written out: chord of exp over the IBP intervals of d_j = f_j - f_y, one
    reference CROWN pass on the row sum_j s_j (e_y - e_j), log(1 + U + T), beta-mixed for crown-ibp."""
    C = _spec(case).to(torch.float64)
    lo, hi = input_box(case.x, case.eps, case.domain)
    ml, mu, _ = reference_ibp(case.model, lo, hi, C)  # margin intervals
    dl, du = -mu, -ml
    m = du.amax(1, keepdim=True).clamp(min=0)
    el, eu = torch.exp(dl - m), torch.exp(du - m)
    width = du - dl
    s = torch.where(
        width > 1e-9, (eu - el) / torch.where(width > 1e-9, width, torch.ones_like(width)), el
    )
    t = el - s * dl
    row = (s.unsqueeze(-1) * C).sum(1, keepdim=True)  # [B, 1, n]
    res = _bounds(case, method, slope, C=C, beta=1.0)
    low, _ = reference_crown(case.model, lo, hi, row, res.preact, res.slopes)
    s_lin = -low + t.sum(1, keepdim=True)
    s_ibp = eu.sum(1, keepdim=True)
    s_all = beta * s_lin + (1 - beta) * s_ibp if method == "crown-ibp" else s_lin
    return (m + torch.log(torch.exp(-m) + s_all.clamp(min=0))).squeeze(1)


@given(case=cases(eps_choices=(0.0, 0.02, 0.1, 0.3, 1.5)), beta=st.floats(0.0, 1.0))
def test_fused_loss_is_the_design_formula(case: Case, beta: float) -> None:
    for method, slope in [
        ("crown-ibp", "adaptive"),
        ("crown-ibp", "zero"),
        ("crown", "adaptive"),
        ("crown", "same-slope"),
        ("cap", "same-slope"),
    ]:
        b = beta if method == "crown-ibp" else 1.0
        want = _reference_fused(case, method, slope, b)
        got = robust_cross_entropy(
            case.model,
            case.x,
            case.y,
            case.eps,
            method=method,
            slope=slope,
            beta=b,
            domain=case.domain,
            fused=True,
            reduction="none",
        )
        assert_close(
            got,
            want,
            tolerance(case.x.dtype, want) * 100,
            f"{method}/{slope} beta={b}: fused loss vs docs/fused-loss.md",
        )


@pytest.mark.parametrize("method,slope", [("crown-ibp", "adaptive"), ("crown", "same-slope")])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_second_derivatives_match_finite_differences(method: str, slope: str, fused: bool) -> None:
    """Hessian-vector products (landscape curvature) need double backward through the bound:
    ``gradgradcheck`` of the certified loss w.r.t. the first conv's weight. (Searched slopes are
    constants of the pass by design, so ``optimized`` is left out: its numerical Hessian also sees
    the search move.)"""
    model = make_cnn((1, 4, 4), [(2, 3, 1, 1)], [4], 3, seed=11)
    x = 0.3 + 0.4 * torch.rand(
        2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    y = torch.tensor([1, 2])
    conv = model[1]
    w0 = conv.weight.detach().clone()
    w = w0.clone().requires_grad_(True)
    try:
        assert torch.autograd.gradgradcheck(
            lambda ww: _loss_with_weight(model, conv, ww, x, y, method, slope, fused),
            (w,),
            eps=1e-6,
            atol=1e-5,
            rtol=1e-4,
        )
    finally:
        del conv.weight
        conv.weight = nn.Parameter(w0)

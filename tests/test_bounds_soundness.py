"""Soundness of every bound method and slope policy, property-tested on random tiny networks.

A certified bound that is not sound is worse than none. For random networks of the zoo's layer
types (Normalize, Linear, Conv2d, ReLU, Flatten), random radii (0, tiny, large, per-sample
tensors) and domains (None or [0, 1]), and every method x slope combination, we search the
perturbation box for counterexamples: uniform samples, random corners and a projected
sign-gradient attack (PGD) on each spec row in both directions. For every point ``x'`` found:

    lower <= C f(x') <= upper                           (C = margin_spec(y, n) and C = None)
    l_k <= z_k(x') <= u_k  for every ReLU input z_k     (res.preact)
    CE(f(x'), y) <= robust_cross_entropy(..., reduction="none")   (fused and not)

Networks are float64 so that a violation beyond ``1e-8 * scale`` is real unsoundness, not
rounding; one test repeats the check in float32 with a ``1e-5`` relative allowance.
"""

from __future__ import annotations

import pytest
import torch
from bounds_helpers import (
    ALL_SLOPES,
    COMBOS,
    Case,
    assert_le,
    cases,
    empirical_margin_range,
    empirical_max_ce,
    input_box,
    make_cnn,
    relu_inputs,
    tolerance,
)
from hypothesis import given
from hypothesis import strategies as st

from bounds import compute_bounds, margin_spec, robust_cross_entropy

BETAS = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))

PGD_STEPS = 20
N_POINTS = 24


def _kwargs(method: str, slope: str, beta: float, case: Case, seed: int) -> dict:
    return dict(
        method=method,
        slope=slope,
        beta=beta,
        domain=case.domain,
        opt_steps=3,
        generator=torch.Generator().manual_seed(seed),
    )


def check_bounds_sound(
    case: Case, method: str, slope: str, beta: float, seed: int, spec: bool
) -> None:
    """Bounds of ``C f`` (or of the logits) and of every ReLU input contain every point we find."""
    C = margin_spec(case.y, case.n_classes).to(case.x.dtype) if spec else None
    kw = _kwargs(method, slope, beta, case, seed)
    res = compute_bounds(case.model, case.x, case.eps, C=C, y=case.y, **kw)
    b = case.x.shape[0]
    s = case.n_classes - 1 if spec else case.n_classes
    assert res.lower.shape == (b, s) and res.upper.shape == (b, s)
    assert torch.isfinite(res.lower).all() and torch.isfinite(res.upper).all(), "non-finite bounds"
    lo, hi = input_box(case.x, case.eps, case.domain)
    vmin, vmax, pts = empirical_margin_range(
        case.model,
        C,
        lo,
        hi,
        n_uniform=N_POINTS,
        n_corners=N_POINTS,
        pgd_steps=PGD_STEPS,
        restarts=2 if spec else 1,
        seed=seed,
        return_points=True,
    )
    tol = tolerance(case.x.dtype, vmin, vmax, res.lower, res.upper)
    what = f"{method}/{slope} beta={beta} C={'margins' if spec else 'None'}"
    assert_le(res.lower, vmin, tol, f"{what}: lower bound above a value attained in the box")
    assert_le(vmax, res.upper, tol, f"{what}: upper bound below a value attained in the box")
    # every ReLU input at every point tried lies in the reported pre-activation bounds
    k = pts.shape[1]
    with torch.no_grad():
        acts = relu_inputs(case.model, pts.reshape(b * k, *pts.shape[2:]))
    assert len(res.preact) == len(acts), "one (l, u) pair per ReLU layer"
    for i, ((l, u), a) in enumerate(zip(res.preact, acts)):
        a = a.view(b, k, *a.shape[1:])
        assert l.shape == u.shape == (b, *a.shape[2:]), f"preact[{i}] shape"
        t = tolerance(case.x.dtype, a, l, u)
        assert_le(
            l.unsqueeze(1).expand_as(a), a, t, f"{what}: preact[{i}] lower above a ReLU input"
        )
        assert_le(
            a, u.unsqueeze(1).expand_as(a), t, f"{what}: preact[{i}] upper below a ReLU input"
        )


def check_loss_sound(case: Case, method: str, slope: str, beta: float, seed: int) -> None:
    """The certified cross-entropy, fused and not, is >= the cross-entropy at every point we find."""
    lo, hi = input_box(case.x, case.eps, case.domain)
    worst = empirical_max_ce(
        case.model,
        case.y,
        lo,
        hi,
        n_uniform=N_POINTS,
        n_corners=N_POINTS,
        pgd_steps=PGD_STEPS,
        restarts=1,
        seed=seed,
    )
    for fused in (False, True):
        kw = _kwargs(method, slope, beta, case, seed)
        loss = robust_cross_entropy(
            case.model, case.x, case.y, case.eps, fused=fused, reduction="none", **kw
        )
        assert loss.shape == (case.x.shape[0],), (
            f"reduction='none' gives one loss per sample, got {tuple(loss.shape)}"
        )
        assert torch.isfinite(loss).all(), f"{method}/{slope} fused={fused}: non-finite loss {loss}"
        tol = tolerance(case.x.dtype, worst, loss)
        assert_le(
            worst,
            loss,
            tol,
            f"{method}/{slope} beta={beta} fused={fused}: cross-entropy above its bound",
        )


@pytest.mark.parametrize("method,slope", COMBOS, ids=[f"{m}-{s}" for m, s in COMBOS])
@given(case=cases(), beta=BETAS, seed=st.integers(0, 2**16))
def test_bounds_contain_every_attained_value(
    method: str, slope: str, case: Case, beta: float, seed: int
) -> None:
    beta = beta if method == "crown-ibp" else 1.0
    check_bounds_sound(case, method, slope, beta, seed, spec=True)
    check_bounds_sound(case, method, slope, beta, seed, spec=False)
    check_loss_sound(case, method, slope, beta, seed)


@given(
    case=cases(dtype=torch.float32),
    combo=st.sampled_from(COMBOS),
    beta=BETAS,
    seed=st.integers(0, 2**16),
)
def test_bounds_sound_in_float32(
    case: Case, combo: tuple[str, str], beta: float, seed: int
) -> None:
    method, slope = combo
    beta = beta if method == "crown-ibp" else 1.0
    check_bounds_sound(case, method, slope, beta, seed, spec=True)
    check_loss_sound(case, method, slope, beta, seed)


@pytest.mark.parametrize("slope", [s for s in ALL_SLOPES if s != "same-slope"])
def test_cap_refuses_other_slopes(slope: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError):
        compute_bounds(model, torch.zeros(1, 2), 0.1, method="cap", slope=slope)


@pytest.mark.parametrize(
    "method,slope", [("crown", "tightest"), ("crown-ibp", "tightest"), ("crown-ibp", "optimized")]
)
@given(case=cases(kinds=("mlp",), eps_choices=(0.1, 0.3, 1.5)), seed=st.integers(0, 2**16))
def test_searched_slopes_sound_with_custom_loss(
    method: str, slope: str, case: Case, seed: int
) -> None:
    """``loss_fn`` steers the slope search; whatever it asks for, the result stays sound.

    The loss here rewards *loose* lower bounds on the first row (a perverse objective), so a
    search that forgot to keep slopes in [0, 1] or reused them inconsistently would show."""
    C = margin_spec(case.y, case.n_classes).to(case.x.dtype)
    res = compute_bounds(
        case.model,
        case.x,
        case.eps,
        method=method,
        slope=slope,
        C=C,
        y=case.y,
        domain=case.domain,
        loss_fn=lambda lower: lower[:, 0].sum(),
        opt_steps=3,
        generator=torch.Generator().manual_seed(seed),
    )
    lo, hi = input_box(case.x, case.eps, case.domain)
    vmin, vmax = empirical_margin_range(case.model, C, lo, hi, pgd_steps=PGD_STEPS, seed=seed)
    tol = tolerance(case.x.dtype, vmin, vmax, res.lower, res.upper)
    assert_le(res.lower, vmin, tol, f"{method}/{slope} with custom loss_fn: lower")
    assert_le(vmax, res.upper, tol, f"{method}/{slope} with custom loss_fn: upper")
    for a in res.slopes:
        assert bool(((a >= 0) & (a <= 1)).all()), "lower slopes must lie in [0, 1]"


ZOO = [
    ("mlp", dict(widths=(16, 16)), ["ibp", "crown-ibp", "crown"]),
    ("cnn-tiny", dict(linear_size=16), ["ibp", "crown-ibp"]),
]


@pytest.mark.parametrize("name,options,methods", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_models_sound_in_float32(name: str, options: dict, methods: list[str]) -> None:
    """The model zoo's real networks (float32, default init, 8x8 digits-sized input, 10 classes)."""
    from train import models

    model = models.build_model(
        name, input_shape=(1, 8, 8), n_classes=10, mean=(0.3,), std=(0.3,), **options
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=gen)
    y = torch.tensor([3, 8])
    case = Case(model.eval(), x, y, torch.tensor([0.02, 0.1]), (0.0, 1.0), 10, name)
    for method in methods:
        for slope in ["adaptive", "tightest"] if method != "ibp" else ["adaptive"]:
            check_bounds_sound(case, method, slope, 1.0, 0, spec=True)
            check_loss_sound(case, method, slope, 1.0, 0)


# Rectangular windows: a kernel, stride or padding whose height and width differ, in a Conv2d and
# an AvgPool2d. At eps = 0 every method must give back the network's own value exactly, which a
# bound that mixes up the two dimensions (a pool kernel of 1 / kh^2 instead of 1 / (kh kw), a
# stride taken from the wrong axis) cannot; at eps > 0 the bounds must hold.
RECT_NETS = [
    ((1, 6, 5), [(2, (3, 1), (1, 2), (1, 0)), (0, (2, 1), (2, 1), 0)]),
    ((2, 5, 7), [(2, (1, 3), (2, 1), (0, 1)), (0, (1, 3), (1, 2), (0, 1))]),
    ((1, 7, 6), [(3, (2, 3), (1, 1), 0), (0, (3, 2), (2, 2), (1, 1)), (2, (2, 1), (1, 2), (1, 0))]),
    ((1, 4, 8), [(2, 3, (1, 2), 1), (0, (2, 4), (2, 4), 0)]),
]


@pytest.mark.parametrize(
    "method,slope",
    [("ibp", "adaptive"), ("crown-ibp", "adaptive"), ("crown", "adaptive"), ("cap", "same-slope")],
)
@pytest.mark.parametrize("net", range(len(RECT_NETS)))
def test_rectangular_conv_and_pool_windows(method: str, slope: str, net: int) -> None:
    shape, convs = RECT_NETS[net]
    model = make_cnn(shape, convs, [4], 3, seed=net).eval()
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in model)
    x = torch.rand((3, *shape), generator=torch.Generator().manual_seed(net), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    C = margin_spec(y, 3).to(torch.float64)
    res = compute_bounds(model, x, 0.0, method=method, slope=slope, C=C, y=y, domain=(0.0, 1.0))
    exact = torch.einsum("bsn,bn->bs", C, model(x).detach())
    torch.testing.assert_close(res.lower, exact, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.upper, exact, rtol=1e-9, atol=1e-9)
    case = Case(model, x, y, 0.05, (0.0, 1.0), 3, f"rectangular net {net}")
    check_bounds_sound(case, method, slope, 1.0, seed=net, spec=True)

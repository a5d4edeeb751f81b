"""``fused="min"``: per sample, the smaller of the fused (chord) bound and the IBP bound of the
worst-case cross-entropy (:mod:`bounds.fused`).

Property-tested on the random tiny networks of ``tests/bounds_helpers.py``:

- never above IBP's certified loss (the fused IBP value, and the unfused IBP loss it equals);
- sound: at least the cross-entropy at every point that sampling, corners and PGD find;
- equal to the chord bound (``fused=True``) wherever that one is the tighter, and to IBP's
  elsewhere;
- its gradient is the gradient of the bound that is taken.
"""

from __future__ import annotations

import pytest
import torch
from bounds_helpers import COMBOS, Case, assert_le, cases, empirical_max_ce, input_box, tolerance
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bounds import Normalize, robust_cross_entropy

LINEAR_COMBOS = [(m, s) for m, s in COMBOS if m != "ibp"]


def _loss(case: Case, method: str, slope: str, beta: float, seed: int, fused) -> torch.Tensor:
    return robust_cross_entropy(
        case.model,
        case.x,
        case.y,
        case.eps,
        method,
        slope,
        beta=beta,
        domain=case.domain,
        fused=fused,
        reduction="none",
        opt_steps=3,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("method,slope", LINEAR_COMBOS, ids=[f"{m}-{s}" for m, s in LINEAR_COMBOS])
@given(case=cases(), beta=st.sampled_from([1.0, 0.5, 0.0]), seed=st.integers(0, 2**16))
def test_fused_min_is_sound_never_above_ibp_and_the_chord_where_tighter(
    method, slope, case, beta, seed
):
    beta = beta if method == "crown-ibp" else 1.0
    got = _loss(case, method, slope, beta, seed, "min")
    chord = _loss(case, method, slope, beta, seed, True)
    ibp_fused = _loss(case, "ibp", None, 1.0, seed, True)
    ibp_plain = _loss(case, "ibp", None, 1.0, seed, False)
    assert got.shape == (case.x.shape[0],) and torch.isfinite(got).all()
    tol = tolerance(case.x.dtype, got, chord, ibp_fused, ibp_plain)
    what = f"{method}/{slope} beta={beta}"
    # never above IBP (its own IBP value exactly, the unfused IBP loss up to rounding)
    assert_le(got, ibp_fused, 0.0, f"{what}: fused=min above the fused IBP bound")
    assert_le(got, ibp_plain, tol, f"{what}: fused=min above the unfused IBP loss")
    # the smaller of the two bounds, sample by sample
    expected = torch.minimum(chord, ibp_fused)
    assert torch.allclose(got, expected, rtol=0, atol=float(tol)), f"{what}: not min(chord, IBP)"
    tighter = chord < ibp_fused
    assert torch.equal(got[tighter], chord[tighter]), (
        f"{what}: differs from the chord where the chord is tighter"
    )
    # sound: at least the cross-entropy anywhere we look in the box
    lo, hi = input_box(case.x, case.eps, case.domain)
    worst = empirical_max_ce(
        case.model, case.y, lo, hi, n_uniform=16, n_corners=16, pgd_steps=15, restarts=1, seed=seed
    )
    assert_le(
        worst,
        got,
        tolerance(case.x.dtype, worst, got),
        f"{what}: cross-entropy above the fused=min bound",
    )


def _model() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(
        Normalize([0.2], [0.5]),
        nn.Flatten(),
        nn.Linear(9, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).double()


def _grads(model, x, y, eps, fused, method="crown-ibp"):
    model.zero_grad(set_to_none=True)
    loss = robust_cross_entropy(model, x, y, eps, method, fused=fused, reduction="none")
    loss.sum().backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_gradient_follows_the_bound_taken_per_sample():
    model = _model()
    x = torch.rand(8, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    for eps in (0.01, 0.3):  # small: the chord is tighter; large: IBP wins for some samples
        got, g_min = _grads(model, x, y, eps, "min")
        chord, _ = _grads(model, x, y, eps, True)
        ibp, _ = _grads(model, x, y, eps, True, method="ibp")
        take_chord = chord < ibp
        # the gradient of the sum equals that of the chord losses where taken plus IBP's elsewhere
        model.zero_grad(set_to_none=True)
        lc = robust_cross_entropy(model, x, y, eps, "crown-ibp", fused=True, reduction="none")
        li = robust_cross_entropy(model, x, y, eps, "ibp", fused=True, reduction="none")
        (lc[take_chord].sum() + li[~take_chord].sum()).backward()
        for a, p in zip(g_min, model.parameters()):
            assert torch.allclose(a, p.grad, atol=1e-10)
        assert torch.allclose(got, torch.where(take_chord, chord, ibp))


def test_fused_value_is_checked():
    model = _model()
    x, y = torch.rand(2, 1, 3, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="fused must be one of"):
        robust_cross_entropy(model, x, y, 0.1, fused="max")

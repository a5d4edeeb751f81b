"""Several grid points per pass: ``DirectionEvaluator(..., vmap_batch=k)`` evaluates the clean loss
and the certified losses of IBP and of CROWN-IBP with fixed slopes with ``torch.func.vmap`` over
stacked parameter sets, through the engine's vmap mode (:mod:`bounds.mode`). The values equal
the point-by-point loop's, and the vmap mode equals the engine's fast paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bounds import Normalize, compute_bounds, margin_spec, mode, robust_cross_entropy
from landscape import directions as D
from landscape.evaluators import DirectionEvaluator, batchable
from landscape.scan_losses import make_loss


def cnn(channels: int = 1) -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(
        Normalize([0.3] * channels, [0.4] * channels),
        nn.Conv2d(channels, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10),
        nn.ReLU(),
        nn.Linear(10, 4),
    )


def batch(channels: int = 1, n: int = 6):
    g = torch.Generator().manual_seed(2)
    return torch.rand(n, channels, 7, 7, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "method,slope",
    [("ibp", None), ("crown-ibp", "adaptive"), ("crown-ibp", "same-slope"), ("crown-ibp", "zero")],
)
def test_plain_mode_equals_the_fast_paths(channels, method, slope):
    model, (x, y) = cnn(channels), batch(channels)
    C = margin_spec(y, 4)
    fast = compute_bounds(model, x, 0.05, method, slope, C=C)
    with mode.vmappable():
        ref = compute_bounds(model, x, 0.05, method, slope, C=C)
    assert torch.allclose(fast.lower, ref.lower, atol=1e-5) and torch.allclose(
        fast.upper, ref.upper, atol=1e-5
    )
    for (l0, u0), (l1, u1) in zip(fast.preact, ref.preact):
        assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(u0, u1, atol=1e-5)
    if fast.lower_A is not None:
        assert torch.allclose(fast.lower_A, ref.lower_A, atol=1e-5)
    for fused in (False, True, "min"):
        a = robust_cross_entropy(model, x, y, 0.05, method, slope, fused=fused, reduction="none")
        with mode.vmappable():
            b = robust_cross_entropy(
                model, x, y, 0.05, method, slope, fused=fused, reduction="none"
            )
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kind,method,slope,fused",
    [
        ("clean", "ibp", None, False),
        ("certified", "ibp", None, False),
        ("certified", "crown-ibp", None, False),
        ("certified", "crown-ibp", "same-slope", True),
        ("certified", "natural", None, False),
    ],
)
def test_batched_scan_equals_the_loop(kind, method, slope, fused):
    model, (x, y) = cnn(), batch()
    fn = make_loss(model, x, y, kind=kind, method=method, slope=slope, eps=0.05, fused=fused)
    assert batchable(fn)
    d = D.random_direction(model, seed=0)
    coeffs = np.linspace(-0.5, 0.5, 7)[:, None]
    before = [p.detach().clone() for p in model.parameters()]
    loop = DirectionEvaluator(model, [fn], [d], coeffs)(list(range(7)))
    ev = DirectionEvaluator(model, [fn], [d], coeffs, vmap_batch=3)
    assert ev.batch_size == 3
    batched = ev(list(range(7)))
    got = np.array([v[fn.label]["loss"] for v in batched])
    ref = np.array([v[fn.label]["loss"] for v in loop])
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "parameters restored"


@pytest.mark.parametrize(
    "kind,method,slope",
    [
        ("pgd", "ibp", None),
        ("certified", "tightest", None),
        ("certified", "crown-ibp", "uniform"),
        ("certified", "crown-ibp", "optimized"),
        ("certified", "crown", None),
    ],
)
def test_losses_vmap_cannot_run_stay_point_by_point(kind, method, slope):
    model, (x, y) = cnn(), batch()
    fn = make_loss(model, x, y, kind=kind, method=method, slope=slope, eps=0.05)
    assert not batchable(fn)
    ev = DirectionEvaluator(
        model, [fn], [D.random_direction(model, seed=0)], np.zeros((2, 1)), vmap_batch=4
    )
    assert ev.batch_size is None

"""BatchNorm, AvgPool2d and residual blocks in the bound engine: soundness, exactness, errors.

- Soundness (as ``test_bounds_soundness.py``): on random tiny networks with BatchNorm (eval mode,
  random statistics, negative gammas), AvgPool2d and residual blocks, for every method x slope,
  float64 and float32, the bounds of ``C f``, of every ReLU input (nested ones included) and the
  certified cross-entropy (fused and not) contain every value found by samples, corners and PGD.
- True extrema: on a BatchNorm network, every method's bounds contain the extrema found by
  enumerating activation patterns (``bounds_helpers.exact_margin_range``).
- Exactness: eval-mode BatchNorm gives the bounds of the network with BatchNorm folded into the
  layer in front (ibp, crown-ibp, crown; float64, tight tolerance); AvgPool2d gives the bounds of
  the equivalent grouped convolution; eps = 0 gives the outputs themselves.
- Training mode: the bounds contain ``C f_affine(x')``, where ``f_affine`` uses the clean batch's
  statistics (``bn_helpers.batch_stat_copy``); at eps = 0 they equal the training-mode forward;
  bounding leaves the running statistics alone.
- Errors: unsupported AvgPool2d options and mismatched shapes name the layer.
- The vmap mode (``bounds/mode.py``) equals the fast paths, and a batched (vmap) scan of a
  BatchNorm network equals the point-by-point loop.
"""

from __future__ import annotations

import pytest
import torch
from bn_helpers import batch_stat_copy, bn_cases, fold_bn, make_net, relu_inputs_hooked
from bounds_helpers import (
    COMBOS,
    Case,
    assert_close,
    assert_le,
    empirical_margin_range,
    empirical_max_ce,
    exact_batch,
    input_box,
    tolerance,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bounds import compute_bounds, margin_spec, robust_cross_entropy
from bounds.layers import Residual

N_POINTS, PGD_STEPS = 16, 12
EXAMPLES = 5  # per (method, slope): 18 combinations


def _kw(method: str, slope: str, case: Case, seed: int, beta: float = 1.0) -> dict:
    return dict(
        method=method,
        slope=slope,
        beta=beta,
        domain=case.domain,
        opt_steps=3,
        generator=torch.Generator().manual_seed(seed),
    )


def check_sound(
    case: Case,
    method: str,
    slope: str,
    beta: float,
    seed: int,
    spec: bool = True,
    reference: nn.Module | None = None,
    loss: bool = True,
) -> None:
    """Bounds of ``C f``, of every ReLU input and the certified CE contain every point found;
    ``reference``: the function the bounds are about (default ``case.model``)."""
    ref = case.model if reference is None else reference
    C = margin_spec(case.y, case.n_classes).to(case.x.dtype) if spec else None
    res = compute_bounds(
        case.model, case.x, case.eps, C=C, y=case.y, **_kw(method, slope, case, seed, beta)
    )
    assert torch.isfinite(res.lower).all() and torch.isfinite(res.upper).all()
    lo, hi = input_box(case.x, case.eps, case.domain)
    vmin, vmax, pts = empirical_margin_range(
        ref,
        C,
        lo,
        hi,
        n_uniform=N_POINTS,
        n_corners=N_POINTS,
        pgd_steps=PGD_STEPS,
        restarts=1,
        seed=seed,
        return_points=True,
    )
    tol = tolerance(case.x.dtype, vmin, vmax, res.lower, res.upper)
    what = f"{method}/{slope} beta={beta} {case.description}"
    assert_le(res.lower, vmin, tol, f"{what}: lower bound above an attained value")
    assert_le(vmax, res.upper, tol, f"{what}: upper bound below an attained value")
    b, k = pts.shape[:2]
    with torch.no_grad():
        acts = relu_inputs_hooked(ref, pts.reshape(b * k, *pts.shape[2:]))
    assert len(acts) == len(res.preact), "one (l, u) per ReLU layer, nested ones included"
    for i, ((l, u), a) in enumerate(zip(res.preact, acts)):
        a = a.view(b, k, *a.shape[1:])
        t = tolerance(case.x.dtype, a, l, u)
        assert_le(l.unsqueeze(1).expand_as(a), a, t, f"{what}: preact[{i}] lower")
        assert_le(a, u.unsqueeze(1).expand_as(a), t, f"{what}: preact[{i}] upper")
    if not loss:
        return
    worst = empirical_max_ce(
        ref,
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
        ce = robust_cross_entropy(
            case.model,
            case.x,
            case.y,
            case.eps,
            fused=fused,
            reduction="none",
            **_kw(method, slope, case, seed, beta),
        )
        assert_le(
            worst,
            ce,
            tolerance(case.x.dtype, worst, ce),
            f"{what} fused={fused}: CE above its bound",
        )


@pytest.mark.parametrize("method,slope", COMBOS, ids=[f"{m}-{s}" for m, s in COMBOS])
@settings(max_examples=EXAMPLES)
@given(case=bn_cases(), beta=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_bn_pool_residual_bounds_sound(
    method: str, slope: str, case: Case, beta: float, seed: int
) -> None:
    beta = beta if method == "crown-ibp" else 1.0
    check_sound(case, method, slope, beta, seed, spec=True)
    check_sound(case, method, slope, beta, seed, spec=False, loss=False)


@settings(max_examples=15)
@given(
    case=bn_cases(dtype=torch.float32), combo=st.sampled_from(COMBOS), seed=st.integers(0, 2**16)
)
def test_bn_pool_residual_bounds_sound_in_float32(
    case: Case, combo: tuple[str, str], seed: int
) -> None:
    check_sound(case, *combo, 1.0, seed)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", ["mlp-bn", "cnn-bn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_bn_equals_folded_network(kind: str, seed: int) -> None:
    model, shape = make_net(kind, seed, pool=False)
    folded = fold_bn(model).eval()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded)
    x = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-12, rtol=0)
    C = margin_spec(torch.tensor([0, 1, 2]), 3).double()
    for method in ("ibp", "crown-ibp", "crown"):
        for eps in (0.01, 0.1, 0.5):
            a = compute_bounds(model, x, eps, method=method, C=C)
            b = compute_bounds(folded, x, eps, method=method, C=C)
            assert torch.allclose(a.lower, b.lower, atol=1e-10, rtol=1e-10), (
                f"{method} eps={eps} lower"
            )
            assert torch.allclose(a.upper, b.upper, atol=1e-10, rtol=1e-10), (
                f"{method} eps={eps} upper"
            )
            for (l1, u1), (l2, u2) in zip(a.preact, b.preact):
                assert torch.allclose(l1, l2, atol=1e-10) and torch.allclose(u1, u2, atol=1e-10), (
                    f"{method} preact"
                )


def test_avgpool_equals_grouped_conv() -> None:
    model, shape = make_net("cnn-bn", 3, pool=True)
    twin = nn.Sequential(*[_as_conv(m) if isinstance(m, nn.AvgPool2d) else m for m in model]).eval()
    x = torch.rand(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), twin(x), atol=1e-14, rtol=0)
    for method, slope in COMBOS:
        a = compute_bounds(
            model,
            x,
            0.2,
            method=method,
            slope=slope,
            opt_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
        b = compute_bounds(
            twin,
            x,
            0.2,
            method=method,
            slope=slope,
            opt_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
        assert torch.allclose(a.lower, b.lower, atol=1e-12) and torch.allclose(
            a.upper, b.upper, atol=1e-12
        ), method


def _as_conv(pool: nn.AvgPool2d) -> nn.Conv2d:
    """The grouped convolution with weight ``1 / k^2`` that computes ``pool`` on 2 channels."""
    conv = nn.Conv2d(
        2, 2, pool.kernel_size, stride=pool.stride, padding=pool.padding, groups=2, bias=False
    ).double()
    with torch.no_grad():
        conv.weight.fill_(1.0 / conv.weight[0].numel())
    return conv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bn_network_brackets_the_true_extrema(seed: int) -> None:
    """Against the true extrema by activation-pattern enumeration (``bounds_helpers``): every
    method's bounds on an eval-mode BatchNorm network contain them."""
    model, shape = make_net("mlp-bn", seed, weight_scale=2.0)
    gen = torch.Generator().manual_seed(seed)
    x, y = (
        torch.rand(2, *shape, dtype=torch.float64, generator=gen),
        torch.tensor([seed % 3, (seed + 1) % 3]),
    )
    C = margin_spec(y, 3).double()
    lo, hi = input_box(x, 0.15, (0.0, 1.0))
    tmin, tmax, _ = exact_batch(model, lo, hi, C)
    for method, slope in COMBOS:
        res = compute_bounds(
            model,
            x,
            0.15,
            method=method,
            slope=slope,
            C=C,
            y=y,
            opt_steps=3,
            generator=torch.Generator().manual_seed(seed),
        )
        tol = tolerance(x.dtype, tmin, tmax) + 1e-7  # LP tolerance
        assert_le(res.lower, tmin, tol, f"{method}/{slope}: lower bound above the true minimum")
        assert_le(tmax, res.upper, tol, f"{method}/{slope}: upper bound below the true maximum")
    gap = (tmin - compute_bounds(model, x, 0.15, method="crown", C=C).lower.detach()).max()
    assert 0 <= float(gap) < float("inf")


@settings(max_examples=10)
@given(case=bn_cases())
def test_eps_zero_gives_the_outputs(case: Case) -> None:
    C = margin_spec(case.y, case.n_classes).to(case.x.dtype)
    with torch.no_grad():
        m = torch.einsum("bsn,bn->bs", C, case.model(case.x))
    for method, slope in COMBOS:
        res = compute_bounds(
            case.model,
            case.x,
            0.0,
            method=method,
            slope=slope,
            C=C,
            y=case.y,
            domain=case.domain,
            opt_steps=2,
        )
        assert_close(res.lower, m, tolerance(case.x.dtype, m), f"{method}/{slope} eps=0 lower")
        assert_close(res.upper, m, tolerance(case.x.dtype, m), f"{method}/{slope} eps=0 upper")


# ----------------------------------------------------------------------------- training mode


@settings(max_examples=6)
@given(
    case=bn_cases(kinds=("mlp-bn", "cnn-bn", "res"), eps_choices=(0.01, 0.1, 0.3)),
    combo=st.sampled_from(COMBOS),
    seed=st.integers(0, 2**16),
)
def test_training_mode_bn_bounds_the_batch_statistics_network(
    case: Case, combo: tuple[str, str], seed: int
) -> None:
    """Training-mode BatchNorm: the affine map with the clean batch's statistics is what is bounded."""
    if case.x.shape[0] < 2:
        case.x = torch.cat([case.x, 1 - case.x])  # batch statistics need a batch
        case.y = torch.cat([case.y, case.y])
        if isinstance(case.eps, torch.Tensor):
            case.eps = torch.cat([case.eps, case.eps])
    case.model.train()
    before = [b.clone() for b in case.model.buffers()]
    fixed = batch_stat_copy(case.model, case.x)
    check_sound(case, *combo, 1.0, seed, reference=fixed, loss=False)
    assert all(torch.equal(a, b) for a, b in zip(before, case.model.buffers())), (
        "bounding moved the running stats"
    )
    # eps = 0: the bounds are the training-mode forward pass itself
    res = compute_bounds(case.model, case.x, 0.0, method=combo[0], slope=combo[1], opt_steps=2)
    with torch.no_grad():
        out = fixed(case.x)
    assert_close(res.lower, out, tolerance(case.x.dtype, out), "train-mode eps=0 lower")
    assert_close(res.upper, out, tolerance(case.x.dtype, out), "train-mode eps=0 upper")


def test_training_mode_bn_statistics_get_gradients() -> None:
    """The batch statistics stay in the graph: at eps = 0 the bound's gradients w.r.t. the batch
    and the BatchNorm parameters equal those of torch's training-mode forward."""
    import copy

    model, shape = make_net("cnn-bn", 0)
    model.train()
    x = torch.rand(
        4,
        *shape,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
        requires_grad=True,
    )
    twin = copy.deepcopy(model)
    (gx_ref, gg_ref) = torch.autograd.grad(twin(x).sum(), [x, twin[2].weight])
    for method in ("ibp", "crown-ibp"):
        lower = compute_bounds(model, x, 0.0, method=method).lower.sum()
        gx, gg = torch.autograd.grad(lower, [x, model[2].weight])
        assert torch.allclose(gx, gx_ref, atol=1e-10) and torch.allclose(gg, gg_ref, atol=1e-10), (
            method
        )


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "pool,message",
    [
        (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
        (nn.AvgPool2d(3, padding=1, count_include_pad=False), "count_include_pad"),
        (nn.AvgPool2d(5), "too small for its kernel"),
    ],
)
def test_unsupported_avgpool_options_are_refused(pool: nn.AvgPool2d, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), pool, nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=rf"layer 1 \(AvgPool2d\).*{message}"):
        compute_bounds(model, torch.rand(1, 1, 6, 6), 0.1)


@pytest.mark.parametrize(
    "model,x,message",
    [
        (
            nn.Sequential(nn.Linear(4, 3), nn.BatchNorm2d(3)),
            torch.rand(2, 4),
            r"layer 1 \(BatchNorm2d\)",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.BatchNorm1d(5), nn.Linear(4, 2)),
            torch.rand(2, 4),
            r"layer 1 \(BatchNorm1d\)",
        ),
        (
            nn.Sequential(Residual(nn.Sequential(nn.Linear(4, 3))), nn.Linear(3, 2)),
            torch.rand(2, 4),
            "layer 0 .*Residual.*shortcut",
        ),
        (
            nn.Sequential(Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh())), nn.Linear(4, 2)),
            torch.rand(2, 4),
            r"layer 0.branch.1 \(Tanh\) is not supported",
        ),
    ],
)
def test_bad_bn_and_residual_shapes_are_refused(
    model: nn.Sequential, x: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_bounds(model.eval(), x, 0.1)


# ----------------------------------------------------------------------------- the vmap mode and batched scans


@pytest.mark.parametrize("kind,train", [("cnn-bn", False), ("res", False), ("cnn-bn", True)])
def test_plain_mode_and_batched_scans(kind: str, train: bool) -> None:
    """The vmap mode (``bounds/mode.py``, what ``torch.func.vmap`` scans run) gives the fast
    paths' bounds, and a batched scan of a BatchNorm network equals the point-by-point loop."""
    import numpy as np

    from bounds import mode
    from landscape import directions as D
    from landscape.evaluators import DirectionEvaluator
    from landscape.scan_losses import make_loss

    model, shape = make_net(kind, 5, shortcut=True)
    model.train(train)
    x = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    for method, slope in (("ibp", None), ("crown-ibp", "adaptive"), ("crown-ibp", "same-slope")):
        fast = compute_bounds(model, x, 0.05, method, slope, C=margin_spec(y, 3).double())
        with mode.vmappable():
            ref = compute_bounds(model, x, 0.05, method, slope, C=margin_spec(y, 3).double())
        assert torch.allclose(fast.lower, ref.lower, atol=1e-10) and torch.allclose(
            fast.upper, ref.upper, atol=1e-10
        )
    if train:
        return
    fn = make_loss(
        model, x, y, kind="certified", method="crown-ibp", slope="same-slope", eps=0.05, fused=True
    )
    d = D.random_direction(model, seed=0)
    coeffs = np.linspace(-0.5, 0.5, 5)[:, None]
    loop = DirectionEvaluator(model, [fn], [d], coeffs)(list(range(5)))
    batched = DirectionEvaluator(model, [fn], [d], coeffs, vmap_batch=3)(list(range(5)))
    got = np.array([v[fn.label]["loss"] for v in batched])
    ref_vals = np.array([v[fn.label]["loss"] for v in loop])
    assert np.allclose(got, ref_vals, rtol=1e-8, atol=1e-10)

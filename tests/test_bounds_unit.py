"""Unit tests of the bound engine's pieces (fast; the heavy property tests live elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bounds import (
    METHODS,
    SLOPES,
    BoundResult,
    Normalize,
    compute_bounds,
    margin_spec,
    robust_cross_entropy,
)
from bounds import relaxations as rx
from bounds.fused import chord
from bounds.interval import ibp, input_box
from bounds.linear import affine_backward
from bounds.network import layer_ops

PAIRS = [(m, s) for m in METHODS for s in SLOPES if m != "cap" or s == "same-slope"]


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        Normalize([0.4], [0.3]),
        nn.Conv2d(1, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=1, padding=0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 12),
        nn.ReLU(),
        nn.Linear(12, 4),
    )


def small_mlp() -> nn.Sequential:
    return nn.Sequential(
        Normalize([0.5, 0.2, 0.1], [0.5, 2.0, 1.0]),
        nn.Linear(3, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def margins(model: nn.Module, x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bk,bsk->bs", model(x), C)


# ---------------------------------------------------------------- relaxations (hand values)


def test_relaxations_hand_values():
    l = torch.tensor([[-1.0, -3.0, 0.5, -2.0, -1.0]])
    u = torch.tensor([[3.0, 1.0, 2.0, -0.5, 1.0]])
    s, t = rx.upper_line(l, u)
    assert torch.allclose(s, torch.tensor([[0.75, 0.25, 1.0, 0.0, 0.5]]))
    assert torch.allclose(t, torch.tensor([[0.75, 0.75, 0.0, 0.0, 0.5]]))
    assert rx.adaptive(l, u).lower_slope.tolist() == [
        [1.0, 0.0, 1.0, 0.0, 1.0]
    ]  # u >= -l -> 1 (tie -> 1)
    assert rx.zero(l, u).lower_slope.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]
    assert rx.one(l, u).lower_slope.tolist() == [[1.0, 1.0, 1.0, 0.0, 1.0]]
    ss = rx.same_slope(l, u)
    assert torch.equal(ss.lower_slope, ss.upper_slope)
    g = torch.Generator().manual_seed(0)
    a = rx.uniform(l, u, g).lower_slope
    assert a[0, 2] == 1 and a[0, 3] == 0 and 0 <= a[0, 0] <= 1 and 0 <= a[0, 1] <= 1
    b = rx.binary(l.expand(50, 5), u.expand(50, 5), g).lower_slope
    assert set(b[:, 0].tolist()) == {0.0, 1.0}


def test_upper_line_gradient_equals_autograd_of_its_expression():
    """The closed-form gradient of the upper line (and its double backward) equals autograd
    through the plain expression, on unstable, active and dead neurons."""
    from bounds.relaxations import _UpperLine

    def reference(l, u):  # the doc's expression, differentiated by autograd
        upos, lneg = u.clamp(min=0), l.clamp(max=0)
        s = (upos / (upos - lneg).clamp(min=torch.finfo(u.dtype).tiny)).clamp(max=1)
        return s, -s * lneg

    torch.manual_seed(0)
    l = (torch.randn(60, dtype=torch.float64) * 2).requires_grad_()
    u = (l.detach() + torch.rand(60, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(_UpperLine.apply, (l, u))
    assert torch.autograd.gradgradcheck(_UpperLine.apply, (l, u))
    gs, gt = torch.randn(60, dtype=torch.float64), torch.randn(60, dtype=torch.float64)
    got = []
    for fn in (rx.upper_line, reference):
        s, t = fn(l, u)
        g = torch.autograd.grad((s * gs).sum() + (t * gt).sum(), (l, u), create_graph=True)
        h = torch.autograd.grad(sum((x**2).sum() for x in g), (l, u))
        got.append((s, t, *g, *h))
    for a, b in zip(*got):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_relaxation_degenerate_intervals_are_finite():
    l = torch.tensor([0.0, -1e-30, -5.0, 2.0, 0.0])
    u = torch.tensor([0.0, 1e-30, -5.0, 2.0, 1e-38])
    for policy in rx.POLICIES.values():
        r = policy(l, u)
        for t in r:
            assert torch.isfinite(t).all()
    s, t = rx.upper_line(l, u)
    assert (
        s.tolist()[0] == 0.0 and s.tolist()[2] == 0.0
    )  # l = u = 0 counts as dead (torch: relu'(0) = 0)
    assert rx.adaptive(l, u).lower_slope[0] == 0 and rx.zero(l, u).lower_slope[3] == 1


def test_relaxation_lines_are_sound():
    torch.manual_seed(1)
    l = torch.randn(200) * 2
    u = l + torch.rand(200) * 3
    z = l + (u - l) * torch.rand(64, 200)
    for policy in rx.POLICIES.values():
        a, s, t = policy(l, u)
        assert (a * z <= F.relu(z) + 1e-6).all()
        assert (F.relu(z) <= s * z + t + 1e-6).all()


# ---------------------------------------------------------------- network description


def test_validation_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 2 \(Tanh\)"):
        layer_ops(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Tanh()), (3,))
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\)"):
        layer_ops(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), (3,))
    with pytest.raises(ValueError, match="nn.Sequential"):
        layer_ops(nn.Linear(3, 3), (3,))
    m = small_mlp()
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="unknown method"):
        compute_bounds(m, x, 0.1, method="deeppoly")
    with pytest.raises(ValueError, match="unknown slope"):
        compute_bounds(m, x, 0.1, slope="steep")
    with pytest.raises(ValueError, match="cap"):
        compute_bounds(m, x, 0.1, method="cap", slope="adaptive")
    with pytest.raises(ValueError, match="eps"):
        compute_bounds(m, x, -0.1)
    with pytest.raises(ValueError, match="beta"):
        compute_bounds(m, x, 0.1, beta=1.5)
    with pytest.raises(ValueError, match="C must"):
        compute_bounds(m, x, 0.1, C=torch.ones(2, 1, 5))
    with pytest.raises(ValueError, match="reduction"):
        robust_cross_entropy(m, x, torch.tensor([0, 1]), 0.1, reduction="max")
    with pytest.raises(ValueError, match="NaN"):
        compute_bounds(m, torch.full((2, 3), float("nan")), 0.1)


def test_describe_shapes():
    ops = layer_ops(small_cnn(), (1, 8, 8))
    assert [op.kind for op in ops] == [
        "normalize",
        "conv",
        "relu",
        "conv",
        "relu",
        "flatten",
        "linear",
        "relu",
        "linear",
    ]
    assert (
        ops[1].out_shape == (3, 4, 4)
        and ops[3].out_shape == (4, 2, 2)
        and ops[5].out_shape == (16,)
    )


# ---------------------------------------------------------------- the backward transposes


@pytest.mark.parametrize("stride,padding,size", [(1, 0, 7), (2, 1, 8), (2, 1, 7), (3, 2, 10)])
def test_conv_backward_matches_autograd(stride, padding, size):
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding)
    model = nn.Sequential(conv, nn.Flatten())
    ops = layer_ops(model, (2, size, size))
    z = torch.randn(4, 2, size, size, requires_grad=True)
    out = conv(z)
    A = torch.randn(4, 5, *out.shape[1:])
    back, db = affine_backward(ops[0], A)
    for s in range(5):
        (g,) = torch.autograd.grad((out * A[:, s]).sum(), z, retain_graph=True)
        assert torch.allclose(back[:, s], g, atol=1e-5)
    assert torch.allclose(db, torch.einsum("bschw,c->bs", A, conv.bias), atol=1e-5)


def test_normalize_backward_and_ibp_exact():
    norm = Normalize([0.1, 0.2], [0.5, 2.0])
    ops = layer_ops(nn.Sequential(norm, nn.Flatten()), (2, 3, 3))
    A = torch.randn(3, 4, 2, 3, 3)
    z = torch.randn(3, 2, 3, 3)
    back, db = affine_backward(ops[0], A)
    lhs = torch.einsum("bschw,bchw->bs", A, norm(z))
    rhs = torch.einsum("bschw,bchw->bs", back, z) + db
    assert torch.allclose(lhs, rhs, atol=1e-5)
    # IBP through Normalize is exact: corners of the box are reached
    x = torch.rand(3, 2, 3, 3)
    c, r = input_box(x, 0.1, None)
    res = ibp(ops, c, r)
    assert torch.allclose(res.lower, norm(x - 0.1).flatten(1), atol=1e-6)
    assert torch.allclose(res.upper, norm(x + 0.1).flatten(1), atol=1e-6)


def test_input_box_domain_and_per_sample_eps():
    x = torch.tensor([[0.05, 0.5, 0.98]])
    c, r = input_box(x, 0.1, (0.0, 1.0))
    assert torch.allclose(c - r, torch.tensor([[0.0, 0.4, 0.88]]))
    assert torch.allclose(c + r, torch.tensor([[0.15, 0.6, 1.0]]))
    x2 = torch.rand(3, 4)
    c, r = input_box(x2, torch.tensor([0.0, 0.1, 0.2]), None)
    assert torch.allclose(r[:, 0], torch.tensor([0.0, 0.1, 0.2]))


def test_margin_spec():
    C = margin_spec(torch.tensor([0, 2]), 3)
    assert C.shape == (2, 2, 3)
    assert C[0].tolist() == [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]
    assert C[1].tolist() == [[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]
    with pytest.raises(ValueError):
        margin_spec(torch.tensor([3]), 3)


# ---------------------------------------------------------------- bounds: relations


@pytest.mark.parametrize("method,slope", PAIRS)
def test_result_shapes_and_eps0_exact(method, slope):
    m, x = small_cnn(), torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 1, 3])
    C = margin_spec(y, 4)
    res = compute_bounds(m, x, 0.0, method, slope, C=C)
    assert isinstance(res, BoundResult)
    assert res.lower.shape == res.upper.shape == (3, 3)
    assert torch.allclose(res.lower, margins(m, x, C), atol=1e-5)
    assert torch.allclose(res.upper, margins(m, x, C), atol=1e-5)
    res = compute_bounds(m, x, 0.05, method, slope, C=C)
    shapes = [(3, 3, 4, 4), (3, 4, 2, 2), (3, 12)]
    assert [tuple(l.shape) for l, _ in res.preact] == shapes
    assert len(res.counts) == 3 and all(
        sum(c[k] for k in ("unstable", "active", "dead")) == c["total"] for c in res.counts
    )
    if method == "ibp":
        assert res.slopes is None and res.lower_A is None
    else:
        assert (
            [tuple(a.shape) for a in res.slopes]
            == shapes
            == [tuple(a.shape) for a in res.upper_slopes]
        )
        assert res.lower_A.shape == (3, 3, 1, 8, 8)
        for a, (l, u) in zip(res.slopes, res.preact):
            assert ((a >= 0) & (a <= 1)).all()
            assert (a[(l >= 0) & (u > 0)] == 1).all() and (a[u <= 0] == 0).all()
    assert (res.lower <= res.upper + 1e-5).all()


def test_logit_bounds_without_C():
    m, x = small_mlp(), torch.rand(4, 3)
    res = compute_bounds(m, x, 0.0, "crown")
    assert torch.allclose(res.lower, m(x), atol=1e-5) and res.lower.shape == (4, 3)


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_need_upper_false_keeps_lower_and_gives_ibp_upper(method):
    m, x = small_cnn(), torch.rand(3, 1, 8, 8)
    C = margin_spec(torch.tensor([0, 1, 2]), 4)
    full = compute_bounds(m, x, 0.1, method, C=C)
    lower_only = compute_bounds(m, x, 0.1, method, C=C, need_upper=False)
    ibp_only = compute_bounds(m, x, 0.1, "ibp", C=C)
    assert torch.allclose(full.lower, lower_only.lower, atol=1e-6)
    assert torch.equal(lower_only.upper, ibp_only.upper)
    assert torch.allclose(full.lower_A, lower_only.lower_A, atol=1e-6)


def test_beta0_crown_ibp_equals_ibp():
    m, x = small_cnn(), torch.rand(3, 1, 8, 8)
    C = margin_spec(torch.tensor([0, 1, 2]), 4)
    a = compute_bounds(m, x, 0.1, "crown-ibp", C=C, beta=0.0)
    b = compute_bounds(m, x, 0.1, "ibp", C=C)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_same_slope_lower_equals_upper_slope():
    m, x = small_cnn(), torch.rand(3, 1, 8, 8)
    for method in ("crown-ibp", "cap"):
        res = compute_bounds(m, x, 0.1, method, "same-slope")
        for a, s in zip(res.slopes, res.upper_slopes):
            assert torch.equal(a, s)


def test_lower_A_reproduces_linear_part():
    # the lower bound is affine in the input: lower(x) = A . c - |A| . r + const; check d lower / d x
    # through a single linear layer (no relu): lower_A equals C W
    lin = nn.Linear(5, 3)
    m = nn.Sequential(lin)
    x = torch.rand(2, 5)
    C = margin_spec(torch.tensor([0, 1]), 3)
    res = compute_bounds(m, x, 0.1, "crown", C=C, domain=None)
    assert torch.allclose(res.lower_A, C @ lin.weight, atol=1e-6)


def test_tighter_methods_are_tighter_than_ibp():
    torch.manual_seed(3)
    m, x = small_mlp(), torch.rand(8, 3)
    C = margin_spec(torch.randint(0, 3, (8,)), 3)
    ibp_l = compute_bounds(m, x, 0.05, "ibp", C=C).lower
    crown_l = compute_bounds(m, x, 0.05, "crown", C=C).lower
    assert (crown_l >= ibp_l - 1e-5).all()  # first-layer exact + intersection with IBP


# ---------------------------------------------------------------- quick sampled soundness


@pytest.mark.parametrize("method,slope", PAIRS)
def test_sampled_soundness(method, slope):
    torch.manual_seed(5)
    m, x = small_cnn(), torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    C = margin_spec(y, 4)
    eps = torch.tensor([0.0, 0.02, 0.05, 0.1])
    res = compute_bounds(m, x, eps, method, slope, C=C, generator=torch.Generator().manual_seed(1))
    ce = robust_cross_entropy(m, x, y, eps, method, slope, reduction="none")
    fce = robust_cross_entropy(m, x, y, eps, method, slope, fused=True, reduction="none")
    with torch.no_grad():
        for _ in range(20):
            d = (torch.rand_like(x) * 2 - 1).sign() * eps.view(-1, 1, 1, 1)  # corners
            xp = (x + d * (torch.rand_like(x) > 0.2)).clamp(0, 1)
            mg = margins(m, xp, C)
            assert (mg >= res.lower - 1e-5).all() and (mg <= res.upper + 1e-5).all()
            true_ce = F.cross_entropy(m(xp), y, reduction="none")
            assert (true_ce <= ce + 1e-5).all() and (true_ce <= fce + 1e-5).all()


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("method,slope", PAIRS)
def test_eps0_losses_equal_clean_ce(method, slope):
    m, x = small_cnn(), torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 1, 3])
    clean = F.cross_entropy(m(x), y, reduction="none")
    for fused in (False, True):
        loss = robust_cross_entropy(m, x, y, 0.0, method, slope, fused=fused, reduction="none")
        assert torch.allclose(loss, clean, atol=1e-5), (fused, loss, clean)


def test_fused_ibp_equals_unfused_ibp_and_reductions():
    m, x, y = small_mlp(), torch.rand(5, 3), torch.tensor([0, 1, 2, 0, 1])
    a = robust_cross_entropy(m, x, y, 0.1, "ibp", reduction="none")
    b = robust_cross_entropy(m, x, y, 0.1, "ibp", fused=True, reduction="none")
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(robust_cross_entropy(m, x, y, 0.1, "ibp", reduction="sum"), a.sum())
    assert torch.allclose(robust_cross_entropy(m, x, y, 0.1, "ibp"), a.mean())


def test_chord_is_above_exp_and_stable():
    l = torch.tensor([[-3.0, 0.0, 1.0, -200.0, 5.0, 2.0]])
    u = torch.tensor([[2.0, 1e-7, 1.0, 100.0, 5.5, 2.0 + 1e-3]])
    m = u.amax(1, keepdim=True)
    s, t = chord(l, u, m)
    assert torch.isfinite(s).all() and torch.isfinite(t).all()
    d = l + (u - l) * torch.linspace(0, 1, 11).view(-1, 1)
    assert (torch.exp(d - m) <= s * d + t + 1e-6).all()
    assert torch.allclose(s[0, 2], torch.exp(torch.tensor(1.0) - m[0, 0]))  # tangent where u == l


def test_gradients_and_float64_and_huge_weights():
    m = small_cnn().double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 2])
    for method, slope in [
        ("ibp", None),
        ("crown-ibp", "tightest"),
        ("crown", "optimized"),
        ("cap", None),
    ]:
        for fused in (False, True):
            loss = robust_cross_entropy(m, x, y, 0.1, method, slope, fused=fused, opt_steps=3)
            assert loss.dtype == torch.float64
            grads = torch.autograd.grad(loss, [x, *m.parameters()])
            assert all(torch.isfinite(g).all() for g in grads)
    big = small_mlp()
    with torch.no_grad():
        for p in big.parameters():
            p.mul_(1e4)
    xb, yb = torch.rand(3, 3), torch.tensor([0, 1, 2])
    for method, slope in PAIRS:
        for eps in (0.0, 0.3):
            res = compute_bounds(big, xb, eps, method, slope)
            assert torch.isfinite(res.lower).all() and torch.isfinite(res.upper).all()
            for fused in (False, True):
                assert torch.isfinite(
                    robust_cross_entropy(big, xb, yb, eps, method, slope, fused=fused)
                ).all()


def test_tightest_follows_gradient_sign_and_generator():
    m, x = small_mlp(), torch.rand(6, 3)
    y = torch.randint(0, 3, (6,))
    C = margin_spec(y, 3)
    r1 = compute_bounds(
        m, x, 0.2, "crown-ibp", "tightest", C=C, generator=torch.Generator().manual_seed(0)
    )
    r2 = compute_bounds(
        m, x, 0.2, "crown-ibp", "tightest", C=C, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(r1.lower, r2.lower)
    for a, (l, u) in zip(r1.slopes, r1.preact):
        unstable = (l < 0) & (u > 0)
        vals = a[unstable]
        # vertices, except where the gradient vanished (start kept)
        assert ((vals == 0) | (vals == 1)).float().mean() > 0.5 or vals.numel() == 0


def test_searched_slopes_under_inference_mode():
    m, x = small_mlp(), torch.rand(2, 3)
    y = torch.tensor([0, 1])
    for slope in ("tightest", "optimized"):
        ref = compute_bounds(
            m,
            x,
            0.2,
            "crown",
            slope,
            C=margin_spec(y, 3),
            generator=torch.Generator().manual_seed(0),
        )
        with torch.inference_mode():
            got = compute_bounds(
                m,
                x,
                0.2,
                "crown",
                slope,
                C=margin_spec(y, 3),
                generator=torch.Generator().manual_seed(0),
            )
            loss = robust_cross_entropy(m, x, y, 0.2, "crown-ibp", slope, fused=True)
        assert torch.allclose(ref.lower, got.lower) and torch.isfinite(loss)


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,pad,size",
    [
        (1, 16, 4, 2, 0, 12),
        (1, 9, 3, 2, 1, 9),
        (2, 8, 2, 1, 0, 6),
        (3, 4, 3, 1, 1, 7),
        (1, 9, 3, 2, 0, 10),
        (3, 27, 3, 1, 2, 5),
    ],
)
def test_conv_transpose_kernels_equal_the_adjoint(c_in, c_out, k, stride, pad, size):
    """Both implementations of the transposed convolution of the backward pass (matrix product
    + fold, used when ``c_in k^2 <= c_out``, and oneDNN's) equal ``F.conv_transpose2d``, with
    gradients and double backward (gradcheck in float64); among the geometries, one whose last
    input row no kernel position reaches (size 10, k 3, stride 2) and one whose padding of 2
    puts whole kernel rows outside the output."""
    from bounds.linear import _ConvTranspose

    torch.manual_seed(0)
    W = torch.randn(c_out, c_in, k, k, dtype=torch.float64, requires_grad=True)
    out = (size + 2 * pad - k) // stride + 1
    args = dict(stride=(stride, stride), padding=(pad, pad), dilation=(1, 1), groups=1)
    A = torch.randn(3, c_out, out, out, dtype=torch.float64, requires_grad=True)
    op_pad = size - ((out - 1) * stride - 2 * pad + k)
    ref = F.conv_transpose2d(A, W, None, stride, pad, op_pad)
    for fold in (True, False):
        got = _ConvTranspose.apply(A, W, (size, size), args, fold)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-12)
        fn = lambda a, w, fold=fold: _ConvTranspose.apply(a, w, (size, size), args, fold)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (A, W)) and torch.autograd.gradgradcheck(fn, (A, W))


def test_relu_step_gradients_and_double_backward():
    from bounds.linear import _ReluStep

    A = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    a, s, t = (torch.rand(2, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(_ReluStep.apply, (A, a, s, t))
    assert torch.autograd.gradgradcheck(_ReluStep.apply, (A, a, s, t))


def test_hessian_vector_product_through_the_bound():
    m = small_cnn().double()
    x, y = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 3])
    params = list(m.parameters())
    for fused in (False, True):
        loss = robust_cross_entropy(m, x, y, 0.05, "crown-ibp", fused=fused)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        hv = torch.autograd.grad(
            sum((g * vv).sum() for g, vv in zip(grads, v)), params, allow_unused=True
        )
        assert all(h is None or torch.isfinite(h).all() for h in hv)


def test_lower_A_is_the_jacobian_at_eps0_also_at_a_kink():
    lin1, lin2 = nn.Linear(1, 1), nn.Linear(1, 2)
    with torch.no_grad():
        lin1.bias.zero_()  # x = 0 puts the hidden neuron exactly at the kink (l = u = 0)
    m = nn.Sequential(lin1, nn.ReLU(), lin2).double()
    x = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    C = margin_spec(torch.tensor([0]), 2).double()
    res = compute_bounds(m, x, 0.0, "crown-ibp", C=C)
    (jac,) = torch.autograd.grad(margins(m, x, C).sum(), x)
    assert torch.allclose(res.lower_A[:, 0], jac)
    assert res.counts[0] == dict(unstable=0, active=0, dead=1, total=1)

"""Value pins taken before a refactor: each test checks a number against an independent
computation (a closed form on a linear model, finite differences in float64, or a direct
recomputation from the public pieces). Ranges are not enough here; a change of result fails."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bounds import BoundSpec, compute_bounds, margin_spec
from common import store
from landscape import directions as D
from landscape import metrics
from train.attacks import margin_objective, pgd_attack, pgd_last_iterate, pgd_margin

DOMAIN = (0.0, 1.0)


# ----------------------------------------------------------------------------- linear models


def _linear_model(n_in: int, n_classes: int, seed: int) -> nn.Sequential:
    """f(x) = W x + b on a flattened input, each class centred on the middle of the domain (so
    both decisions occur). With 3 classes the third class's bias is -50, so the runner-up among
    classes 0 and 1 is always the other one of the two (a clear runner-up)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))
    with torch.no_grad():
        weight = torch.randn(n_classes, n_in, generator=gen)
        model[1].weight.copy_(weight)
        bias = -0.5 * weight.sum(dim=1) + torch.randn(n_classes, generator=gen) * 0.2
        if n_classes == 3:
            bias[2] = -50.0
        model[1].bias.copy_(bias)
    return model


def _linear_batch(
    n: int, n_in: int, model: nn.Sequential, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in [0, 1] (many within eps of a domain face, so clipping matters) labelled with
    the clean prediction, so every sample starts correctly classified."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, n_in, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return x, y


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball around x intersected with the domain, as per-coordinate bounds (float64)."""
    x64 = x.double()
    return (x64 - eps).clamp(min=DOMAIN[0]), (x64 + eps).clamp(max=DOMAIN[1])


def _worst_case(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float):
    """Closed form of the worst margin over ball n domain of a linear model, in float64.

    For class j != y the margin (w_y - w_j) . x' + (b_y - b_j) is smallest at the corner
    x'_i = lo_i where (w_y - w_j)_i > 0, else hi_i. Returns (worst margin [B], the corner of
    the most dangerous class [B, *x.shape[1:]], per-class worst margins [B, n])."""
    W = model[1].weight.detach().double()
    b = model[1].bias.detach().double()
    lo, hi = _box(x, eps)
    lo, hi = lo.reshape(len(x), -1), hi.reshape(len(x), -1)
    n = W.shape[0]
    per_class = torch.full((len(x), n), math.inf, dtype=torch.float64)
    corners = torch.zeros(len(x), n, lo.shape[1], dtype=torch.float64)
    for bi in range(len(x)):
        yb = int(y[bi])
        for j in range(n):
            if j == yb:
                continue
            v = W[yb] - W[j]
            corner = torch.where(v > 0, lo[bi], hi[bi])
            per_class[bi, j] = v @ corner + b[yb] - b[j]
            corners[bi, j] = corner
    worst, j_star = per_class.min(dim=1)
    corner = corners[torch.arange(len(x)), j_star].reshape(x.shape)
    return worst, corner, per_class


def _assert_in_ball_and_domain(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    lo, hi = _box(x, eps)
    assert bool((x_adv.double() >= lo - 1e-7).all()) and bool((x_adv.double() <= hi + 1e-7).all())
    assert bool((x_adv >= DOMAIN[0]).all()) and bool((x_adv <= DOMAIN[1]).all())


# ----------------------------------------------------------------------------- 1. PGD


def test_pgd_margin_attack_reaches_the_closed_form_worst_case_on_a_linear_model():
    eps, n_in = 0.1, 8
    model = _linear_model(n_in, 3, seed=1)
    x, y = _linear_batch(40, n_in, model, seed=2)
    worst, corner, _ = _worst_case(model, x, y, eps)
    breakable = worst < 0
    assert 3 <= int(breakable.sum()) <= len(x) - 3  # both kinds present: the test is not vacuous
    # the corner does clip for some samples: otherwise the domain part is untested
    assert bool(((x - eps < 0) | (x + eps > 1)).any())

    x_adv, success = pgd_attack(
        model,
        x,
        y,
        eps,
        steps=20,
        restarts=1,
        objective="margin",
        domain=DOMAIN,
        generator=torch.Generator().manual_seed(0),
    )
    _assert_in_ball_and_domain(x_adv, x, eps)
    assert torch.equal(success, breakable)
    with torch.no_grad():
        reached = -margin_objective(model(x_adv), y).double()  # min_j (f_y - f_j) at x_adv
    # broken samples: the returned point really is misclassified
    assert bool((reached[breakable] < 0).all())
    # robust samples: the attack reaches the worst corner and the worst-case margin
    robust = ~breakable
    torch.testing.assert_close(reached[robust], worst[robust], rtol=0, atol=1e-4)
    torch.testing.assert_close(x_adv[robust].double(), corner[robust], rtol=0, atol=1e-6)


def test_pgd_ce_attack_reaches_the_closed_form_worst_cross_entropy_on_a_linear_model():
    eps, n_in = 0.1, 8
    model = _linear_model(n_in, 2, seed=3)
    x, y = _linear_batch(40, n_in, model, seed=4)
    worst, corner, _ = _worst_case(model, x, y, eps)
    breakable = worst < 0
    assert 3 <= int(breakable.sum()) <= len(x) - 3
    worst_ce = F.softplus(-worst)  # two classes: CE = softplus(f_j - f_y), monotone in the margin

    x_adv, success = pgd_attack(
        model,
        x,
        y,
        eps,
        steps=20,
        objective="ce",
        domain=DOMAIN,
        generator=torch.Generator().manual_seed(0),
    )
    _assert_in_ball_and_domain(x_adv, x, eps)
    assert torch.equal(success, breakable)
    with torch.no_grad():
        ce = F.cross_entropy(model(x_adv).double(), y, reduction="none")
    robust = ~breakable
    torch.testing.assert_close(ce[robust], worst_ce[robust], rtol=0, atol=1e-4)
    torch.testing.assert_close(x_adv[robust].double(), corner[robust], rtol=0, atol=1e-6)
    assert bool((ce[breakable] > math.log(2)).all())  # misclassified: CE above log 2


def test_pgd_last_iterate_ends_at_the_worst_corner_of_a_linear_model():
    # The last iterate (no early stop) of CE ascent: every sample, broken or not, ends at the
    # corner of the ball n domain that maximises the cross-entropy.
    eps, n_in = 0.1, 8
    model = _linear_model(n_in, 2, seed=5)
    x, y = _linear_batch(24, n_in, model, seed=6)
    worst, corner, _ = _worst_case(model, x, y, eps)
    x_adv = pgd_last_iterate(
        model, x, y, eps, steps=10, domain=DOMAIN, generator=torch.Generator().manual_seed(0)
    )
    _assert_in_ball_and_domain(x_adv, x, eps)
    torch.testing.assert_close(x_adv.double(), corner, rtol=0, atol=1e-6)
    with torch.no_grad():
        ce = F.cross_entropy(model(x_adv).double(), y, reduction="none")
    torch.testing.assert_close(ce, F.softplus(-worst), rtol=0, atol=1e-4)


def test_pgd_margin_equals_the_closed_form_worst_margin_on_robust_samples():
    eps, n_in = 0.1, 8
    model = _linear_model(n_in, 3, seed=7)
    x, y = _linear_batch(40, n_in, model, seed=8)
    worst, _, per_class = _worst_case(model, x, y, eps)
    robust = worst > 0
    assert 3 <= int(robust.sum()) <= len(x) - 3
    m = pgd_margin(model, x, y, eps, steps=20, restarts=1, domain=DOMAIN, seed=0).double()
    torch.testing.assert_close(m[robust], worst[robust], rtol=0, atol=1e-4)
    assert bool((m[~robust] < 0).all())  # broken samples: a misclassified point was found
    # the most dangerous class is the runner-up among {0, 1}, never the far class 2
    assert bool((per_class[:, 2] > worst + 10).all())


# ----------------------------------------------------------------------------- 2. directions


def _direction_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )


@pytest.mark.parametrize("seed", [0, 5])
def test_filter_normalisation_keeps_biases_as_a_whole_when_not_ignored(seed):
    net = _direction_net()
    params = D.get_params(net)
    raw = D.random_direction(net, "none", ignore=None, seed=seed)  # the same draws, unscaled
    d = D.random_direction(net, "filter", ignore=None, seed=seed)
    assert any(p.dim() == 1 for p in params) and any(p.dim() == 4 for p in params)
    for (name, _), p, r, di in zip(net.named_parameters(), params, raw, d):
        p64, r64, d64 = p.double(), r.double(), di.double()
        if p.dim() <= 1:  # bias / BN scale: one factor for the whole tensor
            expected = r64 * (p64.norm() / r64.norm())
            assert float(d64.norm()) == pytest.approx(float(p64.norm()), rel=1e-6), name
        else:  # one factor per filter (slice along dim 0)
            r2, p2 = r64.reshape(len(r64), -1), p64.reshape(len(p64), -1)
            expected = (r2 * (p2.norm(dim=1, keepdim=True) / r2.norm(dim=1, keepdim=True))).view_as(
                r64
            )
            torch.testing.assert_close(
                d64.reshape(len(d64), -1).norm(dim=1), p2.norm(dim=1), rtol=1e-6, atol=0
            )
        torch.testing.assert_close(d64, expected, rtol=1e-5, atol=1e-7, msg=name)


def test_layer_normalisation_scales_whole_tensors():
    net = _direction_net()
    params = D.get_params(net)
    raw = D.random_direction(net, "none", ignore=None, seed=2)
    d = D.random_direction(net, "layer", ignore=None, seed=2)
    for (name, _), p, r, di in zip(net.named_parameters(), params, raw, d):
        p64, r64 = p.double(), r.double()
        expected = r64 * (p64.norm() / r64.norm())
        torch.testing.assert_close(di.double(), expected, rtol=1e-5, atol=1e-7, msg=name)
        if p.dim() >= 2:  # whole-tensor scaling: the filters do NOT each get their weight's norm
            rows = di.reshape(len(di), -1).norm(dim=1).double()
            assert not torch.allclose(rows, p64.reshape(len(p64), -1).norm(dim=1), rtol=1e-3), name


# ----------------------------------------------------------------------------- 3. RGA


def _relu_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4)
    )


def _relu_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # inputs away from the domain faces (eps = 0.15 never clips): the bound is smooth in x there
    g = torch.Generator().manual_seed(11)
    return torch.rand(5, 1, 2, 3, generator=g) * 0.6 + 0.2, torch.tensor([0, 1, 2, 3, 1])


RGA_EPS = 0.15


def _fd(fn, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences of fn (x [B, *shape] -> [B, S]) in every input coordinate, all samples
    moved together (the samples are independent): returns [B, S, D]."""
    flat = x.reshape(len(x), -1)
    cols = []
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = h
        cols.append((fn((flat + e).view_as(x)) - fn((flat - e).view_as(x))) / (2 * h))
    return torch.stack(cols, dim=2)


def _stable_fd(fn, x: torch.Tensor) -> torch.Tensor:
    a, b = _fd(fn, x, 1e-5), _fd(fn, x, 1e-6)
    # the two step sizes agree: no kink (relaxation switch) lies near the chosen inputs
    assert float((a - b).abs().max()) <= 1e-6 * (1.0 + float(a.abs().max()))
    return b


def _reference_rga(model, x, y, eps, method, slope):
    """rga_cos / rga_rel_err from float64 finite differences of the bound and of the margins."""
    m64, x64 = copy.deepcopy(model).double(), x.double()
    C = margin_spec(y, 4).double()

    def lb(z):
        with torch.no_grad():
            return compute_bounds(m64, z, eps, method=method, slope=slope, C=C, domain=DOMAIN).lower

    def margins(z):
        with torch.no_grad():
            return torch.einsum("bsk,bk->bs", C, m64(z))

    r, t = _stable_fd(lb, x64), _stable_fd(margins, x64)
    rn, tn = r.norm(dim=2), t.norm(dim=2)
    assert bool((tn > 0).all()) and bool((rn > 0).all())
    cos = (r * t).sum(2) / (rn * tn)
    rel = (r - t).norm(dim=2) / tn
    return float(cos.mean()), float(rel.mean())


def _reference_slope_errors(model, x, y, eps, method, slope):
    """Mean |slope - 1[z(x) > 0]| over the unstable neurons (l < 0 < u) of all ReLU layers,
    pooled, from the BoundResult's slopes/preactivations and the ReLU inputs at x."""
    with torch.no_grad():
        res = compute_bounds(
            model, x, eps, method=method, slope=slope, C=margin_spec(y, 4), domain=DOMAIN
        )
        z, pre = x, []
        for layer in model:
            if isinstance(layer, nn.ReLU):
                pre.append(z.clone())
            z = layer(z)
    lo_err, up_err, n, n_pos, per_layer = 0.0, 0.0, 0, 0, []
    for (l, u), s, su, zl in zip(res.preact, res.slopes, res.upper_slopes, pre):
        mask = ((l < 0) & (u > 0)).numpy()
        active = (zl > 0).double().numpy()
        lo_err += float(np.abs(s.double().numpy() - active)[mask].sum())
        up_err += float(np.abs(su.double().numpy() - active)[mask].sum())
        n += int(mask.sum())
        n_pos += int(active[mask].sum())
        per_layer.append(int(mask.sum()) / mask.size)
    return lo_err / n, up_err / n, n, n_pos, per_layer


RGA_CASES = [
    ("crown-ibp", "adaptive"),
    ("crown", "adaptive"),
    ("crown-ibp", "zero"),
    ("crown", "zero"),
    ("crown-ibp", "one"),
]


@pytest.mark.parametrize("method,slope", RGA_CASES)
def test_rga_matches_float64_finite_differences_and_direct_slope_errors(method, slope):
    model, (x, y) = _relu_net(), _relu_batch()
    out = metrics.relaxed_gradient_approximation(model, x, y, RGA_EPS, BoundSpec(method, slope))
    cos, rel = _reference_rga(model, x, y, RGA_EPS, method, slope)
    assert out["rga_cos"] == pytest.approx(cos, abs=1e-5)
    assert out["rga_rel_err"] == pytest.approx(rel, abs=1e-5)
    assert cos < 0.999 and rel > 1e-3  # the bound's gradient really differs from the margin's

    slope_err, upper_err, n, n_pos, fracs = _reference_slope_errors(
        model, x, y, RGA_EPS, method, slope
    )
    assert n > 0 and out["n_unstable"] == n
    assert out["slope_err"] == pytest.approx(slope_err, abs=1e-6)
    assert out["upper_slope_err"] == pytest.approx(upper_err, abs=1e-6)
    for i, f in enumerate(fracs):
        assert out[f"unstable_frac_l{i}"] == pytest.approx(f, abs=1e-12)
    if slope == "zero":  # |0 - relu'| is 1 exactly on the unstable neurons active at x
        assert out["slope_err"] == pytest.approx(n_pos / n, abs=1e-6)
    if slope == "one":
        assert out["slope_err"] == pytest.approx(1 - n_pos / n, abs=1e-6)


def test_slope_errors_boundaries_are_strict():
    # A neuron with l = 0 exactly is not unstable (l < 0 < u), and relu'(0) = 1[0 > 0] = 0.
    l = torch.tensor([[0.0, -1.0, -1.0, -0.5]])
    u = torch.tensor([[1.0, 0.0, 2.0, 0.5]])
    z = torch.tensor([[0.5, -0.5, 0.0, 0.25]])  # unstable: the last two; relu' = 0 and 1 there
    res = SimpleNamespace(
        preact=[(l, u)],
        slopes=[torch.tensor([[0.5, 0.5, 0.25, 0.75]])],
        upper_slopes=[torch.tensor([[1.0, 0.0, 2 / 3, 0.5]])],
    )
    out = metrics.slope_errors(res, [z])
    assert out["n_unstable"] == 2.0
    assert out["slope_err"] == pytest.approx((0.25 + 0.25) / 2, abs=1e-12)
    assert out["upper_slope_err"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-7)


# ----------------------------------------------------------------------------- 4. tightness


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_bound_tightness_is_the_mean_min_bound_and_the_attack_margin(method):
    model, (x, _) = _relu_net(), _relu_batch()
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # correctly classified: the attack has to search, not stop at x
    eps, steps, restarts, seed = 0.15, 5, 2, 1
    out = metrics.bound_tightness(
        model, x, y, eps, BoundSpec(method), pgd_steps=steps, pgd_restarts=restarts, seed=seed
    )
    with torch.no_grad():
        lower = compute_bounds(
            model, x, eps, method=method, C=margin_spec(y, 4), domain=DOMAIN
        ).lower
    lb = lower.min(dim=1).values.double()
    # max over j differs from min over j here (4 classes): a max/min mix-up changes the value
    assert float((lower.max(dim=1).values.double() - lb).min()) > 0.1
    adv = pgd_margin(
        model, x, y, eps, steps=steps, restarts=restarts, domain=DOMAIN, seed=seed
    ).double()
    # the attack's seed matters on this batch, so passing it through is pinned too
    other = pgd_margin(
        model, x, y, eps, steps=steps, restarts=restarts, domain=DOMAIN, seed=0
    ).double()
    assert abs(float(other.mean() - adv.mean())) > 1e-4
    # pgd_margin is min_j (C f)_j at the point of the margin attack seeded alike
    x_adv, _ = pgd_attack(
        model,
        x,
        y,
        eps,
        steps=steps,
        restarts=restarts,
        objective="margin",
        domain=DOMAIN,
        generator=torch.Generator().manual_seed(seed),
    )
    _assert_in_ball_and_domain(x_adv, x, eps)
    with torch.no_grad():
        at_adv = (
            torch.einsum("bsk,bk->bs", margin_spec(y, 4), model(x_adv)).min(dim=1).values.double()
        )
    torch.testing.assert_close(adv, at_adv, rtol=0, atol=1e-6)
    assert out["lb"] == pytest.approx(float(lb.mean()), abs=1e-6)
    assert out["pgd_margin"] == pytest.approx(float(adv.mean()), abs=1e-6)
    assert out["gap"] == pytest.approx(float((adv - lb).mean()), abs=1e-6)
    assert out["gap"] == pytest.approx(out["pgd_margin"] - out["lb"], abs=1e-6)
    assert out["gap"] > 1e-3  # the bound is not exact here (unstable ReLUs)


def test_bound_tightness_on_a_linear_model_is_exact():
    # No ReLU: the bound is the exact worst case and PGD reaches it, so lb = pgd_margin = the
    # closed-form worst margin and the gap vanishes.
    eps, n_in = 0.1, 8
    model = _linear_model(n_in, 3, seed=7)
    x, y = _linear_batch(40, n_in, model, seed=8)
    worst, _, _ = _worst_case(model, x, y, eps)
    keep = worst > 0  # robust samples: the attack's point is the worst corner
    x, y, worst = x[keep], y[keep], worst[keep]
    assert len(x) >= 3
    for method in ("crown-ibp", "crown", "ibp"):
        out = metrics.bound_tightness(model, x, y, eps, BoundSpec(method), pgd_steps=20, seed=0)
        assert out["lb"] == pytest.approx(float(worst.mean()), abs=1e-4), method
        assert out["pgd_margin"] == pytest.approx(float(worst.mean()), abs=1e-4), method
        assert out["gap"] == pytest.approx(0.0, abs=1e-4), method


# ----------------------------------------------------------------------------- 5. store


def test_scan_missing_respects_the_label_when_labels_disagree(tmp_path):
    p = tmp_path / "scan.h5"
    s = store.create_scan(
        p,
        kind="random-1d",
        args={"eps": 0.1},
        coords={"x": [-1.0, -0.5, 0.0, 0.5, 1.0]},
        labels=["ibp", "crown-ibp"],
        fields=["loss"],
    )
    s.set_point("ibp", 1, {"loss": 0.25})  # first label only
    s.set_point("crown-ibp", 3, {"loss": 0.75})  # second label only
    s.set_point("ibp", 4, {"loss": 1.0})  # both labels
    s.set_point("crown-ibp", 4, {"loss": 2.0})

    def check(scan):
        assert scan.missing().tolist() == [0, 1, 2, 3]
        assert scan.missing("ibp").tolist() == [0, 2, 3]
        assert scan.missing("crown-ibp").tolist() == [0, 1, 2]
        assert scan.data["ibp"]["loss"][1] == np.float32(0.25)
        assert np.isnan(scan.data["crown-ibp"]["loss"][1])

    check(s)
    s.flush()
    check(store.open_scan(p, args={"eps": 0.1}, kind="random-1d"))

"""landscape.metrics and landscape.curvature against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bounds import BoundResult, BoundSpec, Normalize
from landscape import curvature, metrics, scans


class Quadratic(nn.Module):
    """L(theta) = 0.5 theta^T H theta: g = H theta, Hessian H."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())


def _quad(H):
    return lambda m: 0.5 * m.theta @ H @ m.theta


H = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
THETA = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)


def test_gradient_scan_on_quadratic_is_exact():
    model, lr = Quadratic(THETA), 0.05
    ts = scans.default_t_values()
    res = scans.gradient_scan(_quad(H), model, ts, lr)
    g = H @ THETA
    for i, t in enumerate(ts):
        th = THETA - t * lr * g
        gt = H @ th
        assert res["loss"][i] == pytest.approx(float(0.5 * th @ H @ th), rel=1e-12)
        assert res["cos"][i] == pytest.approx(float(g @ gt / (g.norm() * gt.norm())), rel=1e-12)
        assert res["rms"][i] == pytest.approx(float((gt - g).pow(2).mean().sqrt()), abs=1e-12)
        assert res["grad_norm"][i] == pytest.approx(float(gt.norm()), rel=1e-12)
        if t > 0:  # ||H (t lr g)|| / ||t lr g|| = ||H g|| / ||g||, whatever t
            assert res["smoothness"][i] == pytest.approx(
                float((H @ g).norm() / g.norm()), rel=1e-10
            )
    assert math.isnan(res["smoothness"][0])
    losses = [float(0.5 * (THETA - t * lr * g) @ H @ (THETA - t * lr * g)) for t in ts]
    assert res["loss_variation"] == pytest.approx(max(losses) - min(losses), rel=1e-12)
    assert torch.equal(model.theta.detach(), THETA)  # parameters restored exactly


def test_default_t_values_match_the_paper():
    ts = scans.default_t_values()
    assert (
        ts[0] == 0.0 and 1.0 in ts and ts[1] == pytest.approx(0.5) and ts[-1] == pytest.approx(5.0)
    )
    assert len(ts) == 12 and np.all(np.diff(ts) > 0)
    with pytest.raises(ValueError):
        scans.default_t_values(5.0, 0.5)


def test_top_hessian_eigenvalue_and_hvp_on_quadratic():
    model = Quadratic(THETA)
    v = [torch.tensor([1.0, 1.0, -1.0, 2.0], dtype=torch.float64)]
    hv = curvature.hessian_vector_product(_quad(H), model, v)
    torch.testing.assert_close(hv[0], H @ v[0])
    eig, vec = curvature.top_hessian_eigenvalue(_quad(H), model, iters=60, tol=1e-12)
    assert eig == pytest.approx(5.0, rel=1e-6)
    assert abs(float(vec[0][0])) == pytest.approx(1.0, rel=1e-5)
    lin = lambda m: (m.theta * 3.0).sum()  # noqa: E731  constant gradient: H = 0
    assert curvature.top_hessian_eigenvalue(lin, model)[0] == 0.0


def test_gradient_metric_functions():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert metrics.cosine_similarity(a, b) == pytest.approx(1 / math.sqrt(2))
    assert metrics.cosine_similarity([a, b], [a, b]) == pytest.approx(1.0)
    assert math.isnan(metrics.cosine_similarity(a, torch.zeros(2)))
    assert metrics.rms_difference(a, b) == pytest.approx(math.sqrt(0.5))
    assert metrics.smoothness(a, b, 2.0) == pytest.approx(0.5)
    assert math.isnan(metrics.smoothness(a, b, 0.0))
    assert metrics.loss_variation([1.0, np.nan, 4.0, 2.0]) == 3.0
    assert math.isnan(metrics.loss_variation([np.nan]))


def test_sign_changes_hand_made():
    a = torch.tensor([[1.0, -1.0, 0.0, 2.0], [-3.0, 0.0, 0.5, -0.1]])
    b = torch.tensor([[-1.0, -1.0, 1.0, 3.0], [3.0, 0.0, 0.0, -0.2]])
    # changes: flip, same, 0->+, same | flip, same(0), +->0, same
    out = metrics.sign_changes(a, b)
    assert out["sign_flip"] == pytest.approx(4 / 8)
    assert out["a_sign"] == pytest.approx((2 + 0 + 1 + 0 + 2 + 0 + 1 + 0) / 8)
    assert metrics.sign_changes(a, a) == {"sign_flip": 0.0, "a_sign": 0.0}
    with pytest.raises(ValueError, match="shape"):
        metrics.sign_changes(a, b[:1])


def test_slope_errors_and_unstable_fractions_hand_made():
    l = torch.tensor([[-1.0, -1.0, 0.5, -2.0]])
    u = torch.tensor([[1.0, 2.0, 1.0, -1.0]])
    z = torch.tensor([[0.3, -0.2, 0.7, -1.5]])  # relu' = 1, 0, 1, 0; unstable: first two
    res = BoundResult(
        lower=torch.zeros(1, 1),
        upper=torch.zeros(1, 1),
        preact=[(l, u)],
        slopes=[torch.tensor([[0.25, 1.0, 1.0, 0.0]])],
        upper_slopes=[torch.tensor([[0.5, 2 / 3, 1.0, 0.0]])],
    )
    out = metrics.slope_errors(res, [z])
    assert out["slope_err"] == pytest.approx((0.75 + 1.0) / 2)
    assert out["upper_slope_err"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["n_unstable"] == 2
    assert res.counts == [{"unstable": 2, "active": 1, "dead": 1, "total": 4}]
    assert res.unstable_fractions() == [0.5]
    stable = SimpleNamespace(
        preact=[(l.abs(), u)], slopes=res.slopes, upper_slopes=res.upper_slopes
    )
    assert metrics.slope_errors(stable, [z])["slope_err"] == 0.0


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize([0.5], [0.5]),
        nn.Flatten(),
        nn.Linear(16, 12),
        nn.ReLU(),
        nn.Linear(12, 12),
        nn.ReLU(),
        nn.Linear(12, 4),
    )


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 4, 4, generator=g) * 0.8 + 0.1, torch.arange(6) % 4


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_rga_is_exact_at_eps_zero(method):
    net, (x, y) = _tiny_net(), _batch()
    out = metrics.relaxed_gradient_approximation(net, x, y, 0.0, BoundSpec(method, "adaptive"))
    assert out["rga_cos"] == pytest.approx(1.0, abs=1e-5)
    assert out["rga_rel_err"] == pytest.approx(0.0, abs=1e-5)
    assert out["n_unstable"] == 0
    if method != "ibp":
        assert out["slope_err"] == 0.0


def test_rga_with_unstable_neurons_and_tightness():
    net, (x, y) = _tiny_net(), _batch()
    out = metrics.relaxed_gradient_approximation(net, x, y, 0.2, BoundSpec("crown-ibp"))
    assert out["n_unstable"] > 0 and 0.0 <= out["slope_err"] <= 1.0
    assert -1.0 <= out["rga_cos"] < 1.0 and out["rga_rel_err"] > 0
    assert 0.0 < out["unstable_frac_l0"] <= 1.0
    assert all(p.grad is None for p in net.parameters())
    by = metrics.rga_by_slope(
        net, x, y, 0.2, BoundSpec("crown-ibp"), slopes=("adaptive", "zero", "one")
    )
    assert by["adaptive"]["slope_err"] == pytest.approx(out["slope_err"])
    # zero / one slopes on unstable neurons: |0 - relu'| and |1 - relu'| add up to 1 per neuron
    assert by["zero"]["slope_err"] + by["one"]["slope_err"] == pytest.approx(1.0)
    t = metrics.bound_tightness(net, x, y, 0.1, BoundSpec("crown"), pgd_steps=5)
    assert t["gap"] >= -1e-5 and t["pgd_margin"] >= t["lb"] - 1e-5

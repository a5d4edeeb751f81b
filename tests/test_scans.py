"""landscape.directions, scans, losses and probes on tiny models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bounds import Normalize
from bounds.bound_spec import BoundSpec, training_bound
from common import store
from common import tensors as T
from landscape import directions as D
from landscape import evaluators, probes, scans
from landscape.scan_losses import make_loss, select_samples
from landscape.scan_runner import fill_scan


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize([0.5], [0.5]),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 10),
        nn.ReLU(),
        nn.Linear(10, 4),
    )


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 4


# ----------------------------------------------------------------------------- directions


def test_filter_layer_and_none_normalisation():
    net = _net()
    params = D.get_params(net)
    d = D.random_direction(net, "filter", ignore="biasbn", seed=3)
    for p, di in zip(params, d):
        if p.dim() <= 1:
            assert torch.count_nonzero(di) == 0  # biases zeroed
        else:
            torch.testing.assert_close(
                di.reshape(len(di), -1).norm(dim=1), p.reshape(len(p), -1).norm(dim=1)
            )
    d = D.random_direction(net, "layer", ignore=None, seed=3)
    for p, di in zip(params, d):
        assert float(di.norm()) == pytest.approx(float(p.norm()), rel=1e-5)
    raw = D.random_direction(net, "none", ignore=None, seed=3)
    again = D.random_direction(net, "none", ignore=None, seed=3)
    assert D.params_equal(raw, again) and not D.params_equal(
        raw, D.random_direction(net, "none", None, seed=4)
    )
    with pytest.raises(ValueError, match="normalisation"):
        D.random_direction(net, "bogus")


def test_flatten_unflatten_and_set_params_round_trip():
    net = _net()
    params = D.get_params(net)
    v = T.flatten(params)
    assert v.numel() == sum(p.numel() for p in net.parameters())
    assert D.params_equal(T.unflatten(v, params), params)
    assert torch.equal(v, torch.nn.utils.parameters_to_vector(net.parameters()))
    d = D.random_direction(net, seed=0)
    D.set_params(net, params, [d], [0.5])
    assert D.params_equal(D.get_params(net), D.perturbed(params, [d], [0.5]))
    D.set_params(net, params)
    assert D.params_equal(D.get_params(net), params)
    with pytest.raises(ValueError):
        T.unflatten(v[:-1], params)


def test_scans_on_quadratic_match_closed_form():
    class Q(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[1.0, 2.0]], dtype=torch.float64))

    m = Q()
    loss = lambda mod: (mod.w**2).sum()  # noqa: E731
    d1 = [torch.tensor([[1.0, 0.0]], dtype=torch.float64)]
    d2 = [torch.tensor([[0.0, 1.0]], dtype=torch.float64)]
    xs = np.array([-1.0, 0.0, 2.0])
    r1 = scans.scan_1d(loss, m, d1, xs, labels=["q"])["q"]
    np.testing.assert_allclose(r1, (1 + xs) ** 2 + 4)
    r2 = scans.scan_2d(loss, m, d1, d2, xs, xs[:2], labels=["q"])["q"]
    np.testing.assert_allclose(r2, (1 + xs[:, None]) ** 2 + (2 + xs[None, :2]) ** 2)
    th2 = [torch.tensor([[3.0, 0.0]], dtype=torch.float64)]
    ri = scans.interpolate(loss, m, D.get_params(m), th2, [0.0, 0.5, 1.0], labels=["q"])["q"]
    np.testing.assert_allclose(ri, [5.0, 5.0, 9.0])
    assert torch.equal(m.w.detach(), torch.tensor([[1.0, 2.0]], dtype=torch.float64))


def test_losses_are_deterministic_and_vmap_matches_loop():
    net = _net()
    x, y = _batch()
    clean = make_loss(net, x, y, kind="clean")
    assert torch.equal(clean(), clean(net))
    for kind, method in (("pgd", "ibp"), ("certified", "crown-ibp"), ("certified", "tightest")):
        fn = make_loss(net, x, y, kind=kind, method=method, eps=0.1)
        assert torch.equal(fn(), fn())
    with pytest.raises(ValueError, match="unknown training method"):
        make_loss(net, x, y, method="bogus")
    with pytest.raises(ValueError, match="eps"):
        make_loss(net, x, y, eps=-0.1)
    d = D.random_direction(net, seed=0)
    xs = np.linspace(-1, 1, 7)
    batched = scans.scan_1d([clean], net, d, xs, vmap_batch=4)["clean"]
    loop = scans.scan_1d([clean], net, d, xs, vmap_batch=1)["clean"]
    np.testing.assert_allclose(batched, loop, rtol=1e-5)
    data = SimpleNamespace(train_x=x, train_y=y, test_x=x[:2], test_y=y[:2])
    xa, ya = select_samples(data, 5, "train", seed=2)
    xb, _ = select_samples(data, 5, "train", seed=2)
    assert xa.shape[0] == 5 and torch.equal(xa, xb)
    assert select_samples(data, 100, "test")[0].shape[0] == 2


def _scan_file(path, net, losses, dirs, coords):
    grid = np.stack(np.meshgrid(*coords.values(), indexing="ij"), -1).reshape(-1, len(coords))
    sf, _ = store.open_or_create_scan(
        path, kind="random-2d", args={"a": 1}, coords=coords, labels=[fn.label for fn in losses]
    )
    ev = evaluators.DirectionEvaluator(net, losses, dirs, grid)
    return sf, ev


def test_interrupted_scan_resumes_only_missing_points(tmp_path):
    net = _net()
    x, y = _batch()
    losses = [
        make_loss(net, x, y, kind="certified", method="crown-ibp", eps=0.05),
        make_loss(net, x, y, kind="clean"),
    ]
    gen = torch.Generator().manual_seed(0)
    dirs = [D.random_direction(net, generator=gen) for _ in range(2)]
    coords = {"x": np.linspace(-1, 1, 4), "y": np.linspace(-1, 1, 3)}

    full, ev = _scan_file(tmp_path / "full.h5", net, losses, dirs, coords)
    fill_scan(full, ev, progress=False)

    part, ev = _scan_file(tmp_path / "part.h5", net, losses, dirs, coords)

    def crash(n_done: int) -> None:
        if n_done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fill_scan(part, ev, progress=False, on_point=crash)
    on_disk = store.open_scan(tmp_path / "part.h5", args={"a": 1})
    assert len(on_disk.missing()) == 12 - 5 and not on_disk.complete
    missing_before = on_disk.missing().tolist()
    _, ev = _scan_file(tmp_path / "part.h5", net, losses, dirs, coords)
    computed: list[int] = []

    def recording(idx):
        computed.extend(int(i) for i in idx)
        return ev(idx)

    fill_scan(on_disk, recording, progress=False)
    assert computed == missing_before and len(computed) == 7
    done = store.read(tmp_path / "part.h5")
    ref = store.read(tmp_path / "full.h5")
    assert done["attrs"]["complete"] is True
    for lab in ("crown-ibp", "clean"):
        np.testing.assert_array_equal(done["results"][lab]["loss"], ref["results"][lab]["loss"])
        assert done["results"][lab]["attrs"]["loss_variation"] == pytest.approx(
            float(np.ptp(ref["results"][lab]["loss"])), rel=1e-6
        )
    assert D.params_equal(D.get_params(net), D.get_params(_net()))


def test_gradient_evaluator_sign_metrics_and_restore():
    net = _net()
    x, y = _batch()
    fns = [
        make_loss(net, x, y, method="crown-ibp", eps=0.1),
        make_loss(net, x, y, method="ibp", eps=0.1),
    ]
    before = D.get_params(net)
    pm = evaluators.sign_change_metrics(fns)
    ev = evaluators.GradientEvaluator(
        net, fns, [0.0, 1.0, 5.0], lr=0.5, point_metrics=pm, point_fields=evaluators.SIGN_FIELDS
    )
    out = ev([0, 1, 2])
    assert out[0]["crown-ibp"]["a_sign"] == 0.0 and out[0]["crown-ibp"]["cos"] == pytest.approx(1.0)
    assert 0.0 <= out[2]["crown-ibp"]["sign_flip"] <= out[2]["crown-ibp"]["a_sign"] <= 2.0
    assert math.isnan(out[1]["ibp"]["a_sign"])
    assert D.params_equal(D.get_params(net), before)
    with pytest.raises(ValueError, match="learning rate"):
        evaluators.GradientEvaluator(net, fns, [0.0], lr=0.0)


def test_gradient_probe_appends_rows_and_restores_state(tmp_path):
    net = _net()
    x, y = _batch()
    fn = make_loss(net, x, y, method="crown-ibp", eps=0.05)
    final = make_loss(net, x, y, method="crown-ibp", eps=0.1)
    loss = fn()
    loss.backward()
    params, grads = D.get_params(net), [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    path = tmp_path / "train.h5"
    probe = probes.GradientProbe(path, every=2, t_values=[0.0, 0.5, 1.0, 2.0])
    ctx = SimpleNamespace(
        model=net,
        x=x,
        y=y,
        step=4,
        epoch=0,
        eps=0.05,
        beta=1.0,
        kappa=0.0,
        lr=0.1,
        loss=float(loss.detach()),
        loss_fn=fn,
        final_loss_fn=final,
        method="crown-ibp",
        bound=training_bound("crown-ibp", None, 1.0, domain=(0.0, 1.0)),
        n_classes=4,
    )
    probe.on_step(ctx)
    ctx.step = 5
    probe.on_step(ctx)  # not a multiple of every: nothing
    assert D.params_equal(D.get_params(net), params)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)
    rows = store.read(path)["probes"]
    assert rows["step"].tolist() == [4, 4, 4, 4]
    np.testing.assert_allclose(rows["t"], [0, 0.5, 1, 2])
    assert rows["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert rows["loss_final"][0] == pytest.approx(float(final().detach()), rel=1e-6)
    assert rows["cos"][0] == pytest.approx(1.0) and rows["a_sign"][0] == 0.0
    assert np.isfinite(rows["rga_cos"]).all() and np.isfinite(rows["unstable_frac_l0"]).all()
    assert rows["loss_variation"][0] == pytest.approx(float(np.ptp(rows["loss"])), rel=1e-5)
    sunk = []
    probes.GradientProbe(
        every=1, t_values=[0.0, 1.0], metrics=False, sink=lambda g, r: sunk.append((g, r))
    ).on_step(ctx)
    assert sunk[0][0] == "probes" and np.isnan(sunk[0][1]["a_sign"]).all()
    with pytest.raises(ValueError):
        probes.GradientProbe(every=1)


def test_finish_scan_computes_the_summaries_once(tmp_path):
    net = _net()
    x, y = _batch()
    losses = [make_loss(net, x, y, kind="clean"), make_loss(net, x, y, kind="pgd", eps=0.05)]
    dirs = [D.random_direction(net, seed=0), D.random_direction(net, seed=1)]
    sf, ev = _scan_file(
        tmp_path / "s.h5", net, losses, dirs, {"x": np.array([0.0, 1.0]), "y": np.array([0.0])}
    )
    calls = []

    def summaries(scan):
        calls.append(1)
        return {"clean": {"extra": 1.0}, "pgd": {"extra": 2.0}}

    fill_scan(sf, ev, progress=False, summaries=summaries)
    assert len(calls) == 1
    d = store.read(tmp_path / "s.h5")
    assert (
        d["results"]["clean"]["attrs"]["extra"] == 1.0
        and d["results"]["pgd"]["attrs"]["extra"] == 2.0
    )


# ----------------------------------------------------------------------------- pinned values


class _Quad(nn.Module):
    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(theta.clone())


def test_each_scanned_loss_compares_with_its_own_gradient():
    """Two losses scanned along the first one's gradient: every field of the second label is
    computed from the second loss's own gradients (closed form on two quadratics)."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    h1 = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    h2 = torch.tensor([0.2, 4.0, 2.0], dtype=torch.float64)
    c = torch.tensor([0.3, 0.1, -1.0], dtype=torch.float64)
    first = lambda m: 0.5 * (h1 * m.w**2).sum()  # noqa: E731
    second = lambda m: 0.5 * (h2 * (m.w - c) ** 2).sum()  # noqa: E731
    model, lr, ts = _Quad(theta0), 0.1, [0.0, 0.5, 1.0, 3.0]
    for own in (False, True):
        ev = evaluators.GradientEvaluator(
            model, [first, second], ts, lr, labels=["a", "b"], own_direction=own
        )
        _check_two_quadratics(ev(range(len(ts))), own, theta0, h1, h2, c, ts, lr)
    assert torch.equal(model.w.detach(), theta0)


def _check_two_quadratics(out, own, theta0, h1, h2, c, ts, lr):
    g1 = h1 * theta0
    for label, h, shift in (("a", h1, 0.0), ("b", h2, c)):
        g0 = h * (theta0 - shift)
        for i, t in enumerate(ts):
            # shared: both labels move along the FIRST loss's gradient; own: each along its own
            th = theta0 - t * lr * (g0 if own else g1)
            gt = h * (th - shift)
            v = out[i][label]
            assert v["loss"] == pytest.approx(float(0.5 * (h * (th - shift) ** 2).sum()), rel=1e-12)
            assert v["grad_norm"] == pytest.approx(float(gt.norm()), rel=1e-12)
            assert v["cos"] == pytest.approx(float(g0 @ gt / (g0.norm() * gt.norm())), rel=1e-12)
            assert v["rms"] == pytest.approx(float((gt - g0).pow(2).mean().sqrt()), abs=1e-15)
            if t == 0.0:
                assert math.isnan(v["smoothness"])
            else:
                assert v["smoothness"] == pytest.approx(
                    float((gt - g0).norm() / (th - theta0).norm()), rel=1e-10
                )


@pytest.mark.parametrize(
    "method, slope, beta",
    [("crown-ibp", "zero", 0.5), ("cap", "same-slope", 1.0), ("tightest", "tightest", 1.0)],
)
def test_probe_metrics_equal_direct_calls_with_the_runs_own_setting(method, slope, beta):
    """The probe's RGA and sign-change columns equal direct calls with the step's own method,
    slope, beta and eps (not the final eps, not the method's default slope)."""
    from bounds import compute_bounds, margin_spec
    from common.names import resolve_method
    from landscape.metrics import relaxed_gradient_approximation, sign_changes
    from train.objective import certified_loss

    net = _net()
    x, y = _batch()
    eps, final_eps, lr, ts = 0.05, 0.1, 0.2, [0.0, 1.0, 3.0]

    def loss_at(e):
        return lambda m: certified_loss(
            m,
            x,
            y,
            e,
            method,
            training_bound(method, slope, beta),
            generator=torch.Generator().manual_seed(7),
        )[0]

    sunk = []
    probe = probes.GradientProbe(every=1, t_values=ts, seed=3, sink=lambda g, r: sunk.append(r))
    ctx = SimpleNamespace(
        model=net,
        x=x,
        y=y,
        step=0,
        epoch=0,
        eps=eps,
        beta=beta,
        kappa=0.0,
        lr=lr,
        loss=0.0,
        loss_fn=loss_at(eps),
        final_loss_fn=loss_at(final_eps),
        method=method,
        bound=training_bound(method, slope, beta, domain=(0.0, 1.0)),
        n_classes=4,
    )
    probe.on_step(ctx)
    rows = sunk[0]
    bound, bslope, bbeta = resolve_method(method, slope, beta)
    direct = relaxed_gradient_approximation(
        net,
        x,
        y,
        eps,
        BoundSpec(bound, bslope, bbeta),
        generator=torch.Generator().manual_seed(3),
    )
    for name in ("rga_cos", "rga_rel_err", "slope_err", "upper_slope_err", "unstable_frac_l0"):
        np.testing.assert_allclose(rows[name], direct[name], rtol=1e-6, err_msg=name)

    def lower_a(m):
        with torch.no_grad():
            return compute_bounds(
                m,
                x,
                eps,
                method=bound,
                slope=bslope,
                C=margin_spec(y, 4),
                beta=bbeta,
                generator=torch.Generator().manual_seed(3),
            ).lower_A

    theta0 = D.get_params(net)
    a0 = lower_a(net)
    _, g = D.gradient_direction(loss_at(eps), net)
    for i, t in enumerate(ts):
        D.set_params(net, theta0, [g], [-t * lr])
        expect = sign_changes(a0, lower_a(net))
        assert rows["a_sign"][i] == pytest.approx(expect["a_sign"], rel=1e-6, abs=1e-7)
        assert rows["sign_flip"][i] == pytest.approx(expect["sign_flip"], rel=1e-6, abs=1e-7)
    D.set_params(net, theta0)


def _probe_ctx(net, x, y, method, slope=None, data=None):
    """A step context as the training loop makes it, for a probe called by hand."""
    from train.objective import certified_loss

    def loss_at(xb, yb, final=False, seed=None):
        gen_seed = 7 if seed is None else seed
        return lambda m: certified_loss(
            m,
            xb,
            yb,
            0.1 if final else 0.05,
            method,
            training_bound(method, slope),
            generator=torch.Generator().manual_seed(gen_seed),
        )[0]

    return SimpleNamespace(
        model=net,
        x=x,
        y=y,
        step=0,
        epoch=0,
        eps=0.05,
        beta=1.0,
        kappa=0.0,
        lr=0.2,
        loss=0.0,
        loss_fn=loss_at(x, y),
        final_loss_fn=loss_at(x, y, final=True),
        loss_at=loss_at,
        method=method,
        bound=training_bound(method, slope, 1.0, domain=(0.0, 1.0)),
        n_classes=4,
        data=data,
        config=SimpleNamespace(batch_size=len(x)),
    )


def test_probe_batches_average_fixed_batches_and_store_their_spread():
    net = _net()
    g = torch.Generator().manual_seed(3)
    data = SimpleNamespace(
        train_x=torch.rand(40, 1, 4, 4, generator=g), train_y=torch.arange(40) % 4
    )
    x, y = data.train_x[:8], data.train_y[:8]
    ts = [0.0, 1.0, 3.0]
    rows = []
    probes.GradientProbe(
        every=1, t_values=ts, batches=3, sink=lambda g_, r: rows.append(r)
    ).on_step(_probe_ctx(net, x, y, "crown-ibp", data=data))
    many = rows[0]
    assert (
        many["probe_batches"].tolist() == [3, 3, 3]
        and "loss_variation_std" in many
        and "a_sign_std" in many
    )
    one = probes.GradientProbe(every=1, t_values=ts, batches=3, sink=lambda g_, r: None)
    batches = one._probe_batches(_probe_ctx(net, x, y, "crown-ibp", data=data))
    assert len(batches) == 3 and all(len(b[0]) == 8 for b in batches)
    singles = []
    for xb, yb in batches:
        probes.GradientProbe(every=1, t_values=ts, sink=lambda g_, r: singles.append(r)).on_step(
            _probe_ctx(net, xb, yb, "crown-ibp", data=data)
        )
    for name in ("loss", "cos", "a_sign", "loss_variation", "rga_cos"):
        stack = np.stack([s[name] for s in singles])
        np.testing.assert_allclose(many[name], stack.mean(0), rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(
            many[f"{name}_std"], stack.std(0), rtol=1e-4, atol=1e-6, err_msg=name
        )
    assert D.params_equal(D.get_params(net), D.get_params(_net()))


def test_fresh_slopes_draw_a_new_start_at_every_point():
    net = _net()
    x, y = _batch()
    ts = [0.0, 1.0, 3.0]
    out = {}
    for fresh in (False, True):
        for method in ("tightest", "crown-ibp"):
            rows = []
            probes.GradientProbe(
                every=1, t_values=ts, fresh_slopes=fresh, sink=lambda g_, r: rows.append(r)
            ).on_step(_probe_ctx(net, x, y, method))
            out[fresh, method] = rows[0]
    # deterministic slopes: nothing to draw, the same numbers
    np.testing.assert_allclose(out[True, "crown-ibp"]["a_sign"], out[False, "crown-ibp"]["a_sign"])
    # random starts: a new one at every point changes the sign metrics (even at t = 0)
    assert out[False, "tightest"]["a_sign"][0] == 0.0 and out[True, "tightest"]["a_sign"][0] > 0.0


def test_fresh_slopes_move_along_the_steps_own_gradient(monkeypatch):
    """Under fresh slopes the probe's direction is the training step's gradient (``.grad``), as
    the paper code's probe uses it, not the gradient of a new random start."""
    net = _net()
    x, y = _batch()
    step_grad = [torch.randn_like(p) for _, p in D.named_params(net)]
    for p, g in zip((p for _, p in D.named_params(net)), step_grad):
        p.grad = g.clone()
    seen = {}
    real = probes.gradient_scan

    def spy(*args, **kw):
        seen["direction"] = kw.get("direction")
        return real(*args, **kw)

    monkeypatch.setattr(probes, "gradient_scan", spy)
    rows = []
    probes.GradientProbe(
        every=1, t_values=[0.0, 1.0], fresh_slopes=True, sink=lambda g_, r: rows.append(r)
    ).on_step(_probe_ctx(net, x, y, "tightest"))
    assert seen["direction"] is not None
    assert all(torch.equal(a, b) for a, b in zip(seen["direction"], step_grad))
    probes.GradientProbe(
        every=1, t_values=[0.0, 1.0], fresh_slopes=False, sink=lambda g_, r: None
    ).on_step(_probe_ctx(net, x, y, "tightest"))
    assert (
        seen["direction"] is None
    )  # without fresh slopes the step's loss is the probe's loss: its own gradient


# ----------------------------------------------------------------------------- interpolation


def _bn_net(seed: int) -> nn.Sequential:
    """A tiny eval-mode network with BatchNorm whose running statistics differ per seed."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 4)
    )
    g = torch.Generator().manual_seed(seed + 100)
    net[2].running_mean.copy_(torch.randn(12, generator=g))
    net[2].running_var.copy_(0.2 + 2.0 * torch.rand(12, generator=g))
    return net.eval()


@pytest.mark.parametrize("kind", ["clean", "certified"])
def test_interpolation_moves_batchnorm_statistics_and_hits_both_checkpoints(kind):
    """With BatchNorm buffers interpolated, alpha = 0 and 1 are the two checkpoints exactly (their
    own losses) and alpha = 0.5 is the network of averaged weights and averaged statistics; without
    them alpha = 1 is not the second checkpoint (the test can fail), and the model is restored."""
    a, b = _bn_net(0), _bn_net(1)
    x, y = _batch(8)
    loss = lambda m: make_loss(m, x, y, kind=kind, method="crown-ibp", eps=0.05)(m)  # noqa: E731
    with torch.no_grad():
        la, lb = float(loss(a)), float(loss(b))
    theta1, theta2 = D.get_params(a), D.get_params(b)
    buffers = {k: v.clone() for k, v in a.state_dict().items()}
    alphas = scans.with_endpoints(np.linspace(-0.5, 1.5, 11))
    assert 0.0 in alphas and 1.0 in alphas and len(alphas) == 13
    res = scans.interpolate([loss], a, theta1, theta2, alphas, labels=["L"], model2=b)["L"]
    assert res[list(alphas).index(0.0)] == pytest.approx(la, rel=1e-6)
    assert res[list(alphas).index(1.0)] == pytest.approx(lb, rel=1e-6)
    mid = _bn_net(0)
    sa, sb = a.state_dict(), b.state_dict()
    mid.load_state_dict(
        {k: (sa[k] + 0.5 * (sb[k] - sa[k])) if sa[k].is_floating_point() else sa[k] for k in sa}
    )
    assert res[list(alphas).index(0.5)] == pytest.approx(float(loss(mid)), rel=1e-5)
    for k, v in a.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    old = scans.interpolate([loss], a, theta1, theta2, alphas, labels=["L"])["L"]  # weights only
    assert abs(old[list(alphas).index(1.0)] - lb) > 1e-3


def test_interpolation_grid_always_holds_both_checkpoints():
    np.testing.assert_array_equal(scans.with_endpoints([0.25, 0.5]), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_array_equal(
        scans.with_endpoints(np.linspace(-0.5, 1.5, 41)), np.linspace(-0.5, 1.5, 41)
    )
    got = scans.with_endpoints([-0.1, 1e-17, 0.9999999999999999, 2.0])
    np.testing.assert_array_equal(got, [-0.1, 0.0, 1.0, 2.0])
    running_var = torch.tensor([1.0, 0.1])
    path = [(running_var, running_var.clone(), torch.tensor([-3.0, 1.0]), True)]
    D.set_buffers(path, 1.0)
    assert running_var.tolist() == [0.0, pytest.approx(1.1)]  # clamped at 0, never negative
    D.set_buffers(path, 0.0)
    assert running_var.tolist() == [1.0, pytest.approx(0.1)]

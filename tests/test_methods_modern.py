"""SABR, MTL-IBP and Shi et al.'s IBP init and warm-up regularisers: relations to IBP, the small
box inside the ball, soundness on the small box, the init's spread, the regulariser's value on a
hand-computed example; and each method trained, probed and scanned through the command line."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bounds
from bounds.bound_spec import training_bound
from bounds.layers import Normalize
from common import store
from landscape.cli import main
from train import mixed_losses, shi
from train.config import TrainConfig
from train.objective import LossOptions, certified_loss

DOMAIN = (0.0, 1.0)


def _model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        Normalize([0.5], [0.25]),
        nn.Flatten(),
        nn.Linear(16, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.ReLU(),
        nn.Linear(10, 5),
    )
    return m.to(dtype)


def _batch(dtype: torch.dtype = torch.float32, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=dtype)
    x[0, 0, 0] = 0.0  # pixels on the domain's edges
    x[1, 0, 1] = 1.0
    return x, torch.randint(0, 5, (n,), generator=g)


def _loss_and_grad(
    model: nn.Module, x, y, eps, method, domain, **kw
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    bound = training_bound(method, domain=domain)
    loss, _ = certified_loss(model, x, y, eps, method, bound, **kw)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


# ----------------------------------------------------------------------------- relations to IBP


@pytest.mark.parametrize("eps", [0.1, "per-sample"])
def test_sabr_with_lambda_one_is_ibp_exactly(eps) -> None:
    model = _model()
    x, y = _batch()
    e = torch.linspace(0.02, 0.2, len(y)) if eps == "per-sample" else eps
    ibp, g_ibp = _loss_and_grad(model, x, y, e, method="ibp", domain=DOMAIN)
    sabr, g_sabr = _loss_and_grad(
        model,
        x,
        y,
        e,
        method="sabr",
        domain=DOMAIN,
        generator=_gen(),
        options=LossOptions(sabr_lambda=1.0),
    )
    assert torch.equal(sabr, ibp)
    assert all(torch.equal(a, b) for a, b in zip(g_sabr, g_ibp))
    smaller, _ = _loss_and_grad(
        model,
        x,
        y,
        e,
        method="sabr",
        domain=DOMAIN,
        generator=_gen(),
        options=LossOptions(sabr_lambda=0.3),
    )
    assert not torch.equal(smaller, ibp)  # the test can tell a small box from the ball


def test_mtl_ibp_is_ibp_at_alpha_one_and_the_pgd_loss_at_alpha_zero() -> None:
    model = _model()
    x, y = _batch()
    ibp, g_ibp = _loss_and_grad(model, x, y, 0.1, method="ibp", domain=DOMAIN)
    mtl, g_mtl = _loss_and_grad(
        model,
        x,
        y,
        0.1,
        method="mtl-ibp",
        domain=DOMAIN,
        generator=_gen(),
        options=LossOptions(mtl_alpha=1.0),
    )
    assert torch.equal(mtl, ibp) and all(torch.equal(a, b) for a, b in zip(g_mtl, g_ibp))

    x_adv = mixed_losses.mtl_point(model, x, y, 0.1, DOMAIN, steps=3, generator=_gen())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    model.zero_grad(set_to_none=True)
    pgd = F.cross_entropy(model(x_adv), y)
    pgd.backward()
    g_pgd = [p.grad.clone() for p in model.parameters()]
    adv, g_adv = _loss_and_grad(
        model,
        x,
        y,
        0.1,
        method="mtl-ibp",
        domain=DOMAIN,
        generator=_gen(),
        options=LossOptions(mtl_alpha=0.0, attack_steps=3),
    )
    assert torch.equal(adv, pgd.detach()) and all(torch.equal(a, b) for a, b in zip(g_adv, g_pgd))
    mid, _ = _loss_and_grad(
        model,
        x,
        y,
        0.1,
        method="mtl-ibp",
        domain=DOMAIN,
        generator=_gen(),
        options=LossOptions(mtl_alpha=0.25, attack_steps=3),
    )
    assert float(mid.detach()) == pytest.approx(
        0.75 * float(pgd.detach()) + 0.25 * float(ibp), rel=1e-6
    )
    assert float(pgd.detach()) < float(ibp)  # the attack's loss is below the bound's


def test_the_attacks_repeat_with_their_seed() -> None:
    model = _model()
    x, y = _batch()
    for method in ("sabr", "mtl-ibp"):
        a = certified_loss(model, x, y, 0.1, method=method, generator=_gen())[0]
        b = certified_loss(model, x, y, 0.1, method=method, generator=_gen())[0]
        c = certified_loss(
            model, x, y, 0.1, method=method, generator=torch.Generator().manual_seed(8)
        )[0]
        assert torch.equal(a, b) and not torch.equal(a, c), method


# ----------------------------------------------------------------------------- SABR's small box


@pytest.mark.parametrize("lam", [0.2, 0.6])
def test_sabr_centre_stays_in_the_shrunk_box_and_the_domain(lam: float) -> None:
    model = _model(torch.float64)
    x, y = _batch(torch.float64)
    eps = torch.tensor([0.3, 0.05, 0.2, 0.1, 0.0, 0.25], dtype=torch.float64)
    centre, tau = mixed_losses.sabr_center(model, x, y, eps, lam, DOMAIN, steps=8, generator=_gen())
    assert torch.allclose(tau, lam * eps)
    shrink = ((1 - lam) * eps).view(-1, 1, 1, 1)
    assert bool((centre >= torch.clamp(x - shrink, min=0.0) - 1e-12).all())
    assert bool((centre <= torch.clamp(x + shrink, max=1.0) + 1e-12).all())
    assert bool((centre >= 0).all() and (centre <= 1).all())
    assert bool((centre[4] == x[4]).all())  # eps = 0: the sample itself
    assert bool((centre != x).any())  # the attack moved
    # the small box B(x', tau) ∩ domain lies in the ball B(x, eps)
    lo, hi = (
        torch.clamp(centre - tau.view(-1, 1, 1, 1), min=0.0),
        torch.clamp(centre + tau.view(-1, 1, 1, 1), max=1.0),
    )
    e = eps.view(-1, 1, 1, 1)
    assert bool((lo >= x - e - 1e-12).all() and (hi <= x + e + 1e-12).all())


def test_ibp_on_the_small_box_is_sound() -> None:
    model = _model(torch.float64)
    x, y = _batch(torch.float64)
    centre, tau = mixed_losses.sabr_center(model, x, y, 0.2, 0.4, DOMAIN, steps=8, generator=_gen())
    spec = bounds.margin_spec(y, 5).to(torch.float64)
    res = bounds.compute_bounds(model, centre, tau, method="ibp", C=spec, domain=DOMAIN)
    g = torch.Generator().manual_seed(3)
    lo, hi = torch.clamp(centre - tau, min=0.0), torch.clamp(centre + tau, max=1.0)
    pts = [lo, hi, centre]
    pts += [lo + torch.rand(x.shape, generator=g, dtype=x.dtype) * (hi - lo) for _ in range(200)]
    pts += [
        torch.where(torch.rand(x.shape, generator=g) < 0.5, lo, hi) for _ in range(200)
    ]  # corners
    with torch.no_grad():
        for p in pts:
            margins = torch.einsum("bso,bo->bs", spec, model(p))
            assert bool((margins >= res.lower - 1e-9).all() and (margins <= res.upper + 1e-9).all())


# ----------------------------------------------------------------------------- Shi et al.


def test_ibp_init_spread_and_the_untouched_last_layer() -> None:
    model = nn.Sequential(
        Normalize([0.5], [0.25]),
        nn.Conv2d(1, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 26 * 26, 256),
        nn.ReLU(),
        nn.Linear(256, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )
    last = [p.detach().clone() for p in model[-1].parameters()]
    assert shi.ibp_init(model, torch.Generator().manual_seed(0)) == 3
    for layer, fan_in in ((model[1], 9), (model[4], 64 * 26 * 26), (model[6], 256)):
        w = layer.weight.detach().double()
        want = math.sqrt(2 * math.pi) / fan_in
        assert layer.weight[0].numel() == fan_in and shi.ibp_init_std(layer) == pytest.approx(want)
        rel_se = 1 / math.sqrt(2 * w.numel())  # standard error of a sample std, relative
        assert abs(w.std().item() / want - 1) < 5 * rel_se + 1e-3, (fan_in, w.std().item(), want)
        assert abs(w.mean().item()) < 5 * want / math.sqrt(w.numel())
        assert bool((layer.bias == 0).all())
    assert all(torch.equal(a, b) for a, b in zip(model[-1].parameters(), last))


def test_train_init_ibp_reinitialises_the_built_model() -> None:
    from train.data import load_dataset
    from train.loop import build_for_config

    spec = load_dataset("digits").spec
    plain, _ = build_for_config(TrainConfig(model="mlp", model_options={"widths": [32, 32]}), spec)
    init, _ = build_for_config(
        TrainConfig(model="mlp", model_options={"widths": [32, 32]}, init="ibp"), spec
    )
    linears = [m for m in init.modules() if isinstance(m, nn.Linear)]
    assert linears[1].weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / 32, rel=0.1)
    assert torch.equal(
        linears[-1].weight, [m for m in plain.modules() if isinstance(m, nn.Linear)][-1].weight
    )


def test_warmup_intensity() -> None:
    assert shi.warmup_intensity(0.05, 0.1, 0.5) == pytest.approx(0.25)
    assert shi.warmup_intensity(0.1, 0.1, 0.5) == 0.0  # the ramp is over
    assert shi.warmup_intensity(0.0, 0.1, 0.5) == shi.warmup_intensity(5e-7, 0.1, 0.5) == 0.0


def test_warmup_regulariser_on_a_hand_computed_example() -> None:
    # one ReLU layer, three neurons: active (l > 0), inactive (u < 0), unstable
    l = torch.tensor([[1.0, -8.0, -1.0]], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([[3.0, -6.0, 1.0]], dtype=torch.float64)
    r0 = torch.full((1, 4), 0.25, dtype=torch.float64)
    # c = (2, -7, 0), r = (1, 1, 1); E[c 1_act] / E[-c 1_inact] = 2 / 7;
    # E[c] = -5/3, sum (c - E c)^2 over active = 121/9, over inactive = 256/9
    tight = (0.5 - 0.25 / 1.0) / 0.5
    relu = ((0.5 - 2 / 7) + (0.5 - 121 / 256)) / 0.5
    reg, parts = shi.warmup_regulariser([(l, u)], r0, intensity=0.3, tol=0.5)
    assert float(parts["reg_tightness"]) == pytest.approx(tight)
    assert float(parts["reg_relu"]) == pytest.approx(relu)
    assert float(reg) == pytest.approx(0.3 * (tight + relu))
    reg.backward()
    assert (
        l.grad is not None and bool(torch.isfinite(l.grad).all()) and float(l.grad.abs().sum()) > 0
    )
    # balanced layer and all-active layer contribute nothing to L_relu
    assert (
        float(shi.relu_balance_loss(torch.tensor([[1.0, -3.0]]), torch.tensor([[3.0, -1.0]]), 0.5))
        == 0.0
    )
    assert (
        float(shi.relu_balance_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), 0.5))
        == 0.0
    )


def test_warmup_regulariser_in_the_loss_only_while_eps_ramps() -> None:
    model = _model()
    x, y = _batch()
    opts = LossOptions(warmup_reg=True, eps_target=0.2)
    plain = certified_loss(model, x, y, 0.1, method="ibp")[0]
    loss, stats = certified_loss(model, x, y, 0.1, method="ibp", options=opts)
    assert stats["reg"] > 0 and float(loss - plain) == pytest.approx(stats["reg"], rel=1e-5)
    model.zero_grad(set_to_none=True)
    (loss - plain).backward()  # the regulariser alone
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert (
        grads
        and all(bool(torch.isfinite(g).all()) for g in grads)
        and sum(float(g.abs().sum()) for g in grads) > 0
    )
    at_target, stats = certified_loss(model, x, y, 0.2, method="ibp", options=opts)
    assert stats["reg"] == 0.0 and torch.equal(
        at_target, certified_loss(model, x, y, 0.2, method="ibp")[0]
    )
    # crown-ibp reuses its IBP pre-activation bounds: the same regulariser
    _, s2 = certified_loss(model, x, y, 0.1, method="crown-ibp", options=opts)
    assert s2["reg"] == pytest.approx(
        stats_reg := certified_loss(model, x, y, 0.1, method="ibp", options=opts)[1]["reg"]
    )
    assert stats_reg > 0


def test_loss_options_defaults_are_the_configs() -> None:
    cfg = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(LossOptions):
        if f.name != "eps_target":
            assert f.default == cfg[f.name], f.name
    assert LossOptions.of(TrainConfig(eps=0.3, sabr_lambda=0.7)).sabr_lambda == 0.7
    assert LossOptions.of({"eps": 0.3}).eps_target == 0.3  # an old checkpoint's config
    with pytest.raises(ValueError, match="sabr_lambda"):
        TrainConfig(sabr_lambda=0.0)
    with pytest.raises(ValueError, match="init"):
        TrainConfig(init="xavier")
    with pytest.raises(ValueError, match="warmup_reg"):
        TrainConfig(method="natural", warmup_reg=True)


# ----------------------------------------------------------------------------- command line

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[16,16]",
    "--eps",
    "0.05",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--eps-start-epoch",
    "0",
    "--eps-ramp-epochs",
    "1",
    "--eval-size",
    "32",
    "--quiet",
    "--probe-every",
    "1",
    "--record-every",
    "1",
]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("sabr", ["--sabr-lambda", "0.5"]),
        ("mtl-ibp", ["--mtl-alpha", "0.3"]),
        ("ibp", ["--init", "ibp", "--warmup-reg"]),
    ],
)
def test_train_probe_and_scan_through_the_cli(
    tmp_path, capsys, method: str, extra: list[str]
) -> None:
    out = tmp_path / method
    assert main(["train", *TINY, "--method", method, "--out", str(out), *extra]) == 0, (
        capsys.readouterr().err
    )
    rec = store.read(str(out / "train.h5"))
    steps, probes = rec["steps"], rec["probes"]
    assert steps["step"].tolist() == [0, 1, 2, 3]
    # the probe scans the step's own loss: at t = 0 it is the loss the step trained on
    for s in (1, 2):  # steps inside the ramp (the regulariser is on there)
        at0 = [
            i for i, (st, t) in enumerate(zip(probes["step"], probes["t"])) if st == s and t == 0
        ][0]
        assert probes["loss"][at0] == pytest.approx(steps["loss"][s], rel=1e-5), (method, s)
    cfg = TrainConfig.from_dict(__import__("json").loads((out / "config.json").read_text()))
    assert cfg.method == method and (cfg.init == "ibp") == (method == "ibp")
    if method == "ibp":
        assert cfg.warmup_reg
        return
    scan = tmp_path / f"{method}.h5"
    assert (
        main(
            [
                "scan",
                str(out / "checkpoint.pt"),
                "--methods",
                "sabr,mtl-ibp",
                "--kind",
                "random-1d",
                "--points",
                "3",
                "--samples",
                "16",
                "--out",
                str(scan),
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    again = tmp_path / f"{method}_again.h5"
    assert (
        main(
            [
                "scan",
                str(out / "checkpoint.pt"),
                "--methods",
                "sabr,mtl-ibp",
                "--kind",
                "random-1d",
                "--points",
                "3",
                "--samples",
                "16",
                "--out",
                str(again),
                "--quiet",
            ]
        )
        == 0
    )
    a, b = store.read(str(scan)), store.read(str(again))
    losses = __import__("json").loads(a["attrs"]["args_json"])["losses"]
    assert [s["options"] for s in losses] == [
        {"attack_steps": 8, "sabr_lambda": cfg.sabr_lambda},
        {"attack_steps": 1, "mtl_alpha": cfg.mtl_alpha},
    ]
    for label in ("sabr", "mtl-ibp"):  # a deterministic function of the weights: seeded attacks
        assert (a["results"][label]["loss"] == b["results"][label]["loss"]).all()


# ----------------------------------------------------------------------------- reproduce


def test_reproduce_runs_a_setting_of_its_own_methods_with_the_hessian(
    tmp_path, monkeypatch
) -> None:
    """A setting's ``methods:`` list (here SABR and MTL-IBP) is what reproduce trains; their runs are
    certified, scanned and summarised, with the probes' top Hessian eigenvalue."""
    import json

    import yaml
    from click.testing import CliRunner

    from landscape.cli import cli
    from landscape.reproduce import make_plan

    modern = make_plan("modern")
    assert [r.method for r in modern.runs] == ["ibp", "crown-ibp", "tightest", "sabr", "mtl-ibp"]
    assert all(r.config["probe_hessian"] for r in modern.runs)
    assert [r.method for r in make_plan("tiny", methods=["crown", "sabr"]).runs] == [
        "crown",
        "sabr",
    ]

    tiny = yaml.safe_load(
        (__import__("pathlib").Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text()
    )
    tiny.update(probe_hessian=True, epochs=1)
    tiny["reproduce"].update(
        profile="tiny-modern", setting="digits_modern", methods=["sabr", "mtl-ibp"]
    )
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny-modern.yaml").write_text(yaml.safe_dump(tiny))
    monkeypatch.setenv("LANDSCAPE_CONFIGS", str(configs))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["reproduce", "--profile", "tiny-modern", "--out", str(out), "--format", "png"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["sabr", "mtl-ibp"]
    for r in rows:
        assert (
            r["verified_err"] is not None
            and r["hessian_top_eig"] is not None
            and math.isfinite(r["hessian_top_eig"])
        )
    assert "top Hessian eig." in (out / "summary.md").read_text()
    names = {p.name for p in (out / "scans" / "digits_modern" / "seed0").glob("*.h5")}
    kinds = (
        "gradient",
        "random-1d",
        "random-2d",
        "hessian",
    )  # and the PCA plane where the run has checkpoints
    assert {f"{m}_{k}.h5" for m in ("sabr", "mtl-ibp") for k in kinds} <= names
    assert names <= {f"{m}_{k}.h5" for m in ("sabr", "mtl-ibp") for k in (*kinds, "pca")}

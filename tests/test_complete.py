"""Complete verification (``bounds.milp``, ``landscape certify --complete``) against independent
answers: the exact minimum margin equals the enumeration of activation regions and a dense grid
on 2-D inputs, lies between every sound lower bound and the best attack margin on random and
trained networks (MLPs and a convolution), and every counterexample is a real misclassification
inside the clipped ball."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bounds_helpers import exact_margin_range, make_mlp, margin_matrix
from torch import nn

import bounds
from bounds import milp
from train.attacks import pgd_margin

BOUNDS = [
    ("ibp", "adaptive"),
    ("crown-ibp", "adaptive"),
    ("crown", "adaptive"),
    ("crown", "optimized"),
]


def _decide(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, domain=(0.0, 1.0), **kw
):
    """``exact_min_margin`` for each sample of the batch, with the engine's inputs."""
    model = model.double().eval()
    net = milp.affine_net(model, tuple(x.shape[1:]))
    lo, hi, pre, lower = milp.milp_inputs(model, x.double(), y, eps, domain)
    return (
        [
            milp.exact_min_margin(
                net, lo[b], hi[b], int(y[b]), pre[b], lower[b], None, milp.MilpOptions(60, **kw)
            )
            for b in range(len(x))
        ],
        lo,
        hi,
        lower,
    )


def _min_bound(model, x, y, eps, method, slope, domain=(0.0, 1.0)) -> np.ndarray:
    spec = bounds.margin_spec(y, int(model(x[:1]).shape[1])).double()
    res = bounds.compute_bounds(
        model, x, eps, method=method, slope=slope, C=spec, y=y, domain=domain
    )
    return res.lower.detach().min(1).values.numpy()


def _check_sandwich(model, x, y, eps, domain=(0.0, 1.0)) -> list[milp.MarginResult]:
    """bound <= exact <= attack for every bound; a falsified sample has a real counterexample."""
    results, lo, hi, _ = _decide(model, x, y, eps, domain)
    attack = pgd_margin(model, x, y, eps, steps=40, restarts=3, domain=domain).numpy()
    for method, slope in BOUNDS:
        low = _min_bound(model, x, y, eps, method, slope, domain)
        for b, r in enumerate(results):
            assert r.optimal
            assert low[b] <= r.margin_lower + 1e-7, f"{method}:{slope} above the exact minimum"
    for b, r in enumerate(results):
        assert r.margin_lower <= r.margin + 1e-6
        assert r.margin <= attack[b] + 1e-7, (
            "the attack found a smaller margin than the exact minimum"
        )
        assert r.status == (milp.FALSIFIED if r.margin < 0 else milp.VERIFIED)
        p = torch.tensor(r.point).reshape(1, *x.shape[1:])
        assert np.all(r.point >= lo[b]) and np.all(r.point <= hi[b])
        with torch.no_grad():
            logits = model(p)[0]
        m = (logits[y[b]] - torch.cat([logits[: y[b]], logits[y[b] + 1 :]])).min().item()
        np.testing.assert_allclose(m, r.margin, atol=1e-9)  # the margin is attained at the point
        if r.status == milp.FALSIFIED:
            assert int(logits.argmax()) != int(y[b])
            assert float((p[0] - x[b]).abs().max()) <= eps + 1e-9
    return results


@pytest.mark.parametrize("seed", range(6))
def test_exact_minimum_equals_enumeration_and_grid_in_2d(seed: int) -> None:
    model, _ = make_mlp(2, [6, 5], 3, seed=seed, normalize=bool(seed % 2))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 2, dtype=torch.float64, generator=gen)
    y = model(x).argmax(1)
    eps = [0.05, 0.2, 0.4][seed % 3]
    (r,), lo, hi, _ = _decide(model, x, y, eps)
    assert r.optimal
    C = margin_matrix(y, 3)
    ex = exact_margin_range(model, torch.tensor(lo[0]), torch.tensor(hi[0]), C[0])
    np.testing.assert_allclose(r.margin, ex.minimum.min(), atol=1e-7)
    g = np.linspace(0.0, 1.0, 301)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    corners = np.array([[a, b] for a in (0.0, 1.0) for b in (0.0, 1.0)])
    pts = lo[0] + np.concatenate([grid, corners]) * (hi[0] - lo[0])
    with torch.no_grad():
        logits = model(torch.tensor(pts))
    m = (logits[:, y[0] : y[0] + 1] - logits).numpy()
    m[:, int(y[0])] = np.inf
    grid_min = m.min()
    assert grid_min >= r.margin - 1e-9  # every grid point is in the box
    assert (
        grid_min - r.margin < 0.02
    )  # and the grid comes close (the minimum is at a region vertex)


@pytest.mark.parametrize("seed", range(4))
def test_exact_between_bounds_and_attack_on_random_mlps(seed: int) -> None:
    model, shape = make_mlp(6, [12, 10], 4, seed=seed, normalize=True, image=bool(seed % 2))
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(4, *shape, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 4, (4,), generator=gen)
    results = _check_sandwich(model, x, y, [0.02, 0.08, 0.15, 0.3][seed])
    assert len(results) == 4


def test_exact_between_bounds_and_attack_on_a_trained_mlp() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 1.0).long() + (x[:, 2] > 0.5).long()
    model, _ = make_mlp(4, [16, 16], 3, seed=0, normalize=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.8
    results = _check_sandwich(model, x[:12], y[:12], 0.05)
    assert {r.status for r in results} <= {milp.VERIFIED, milp.FALSIFIED}


def test_convolution_is_the_affine_map_and_is_verified_exactly() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        bounds.Normalize([0.4], [0.3]),
        nn.Conv2d(1, 3, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    net = milp.affine_net(model, (1, 4, 4))
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(
            net.forward(x.reshape(5, -1).numpy()), model(x).numpy(), atol=1e-12
        )
    y = model(x).argmax(1)
    _check_sandwich(model, x, y, 0.05)


def test_unsupported_layers_are_refused_with_one_message() -> None:
    res = nn.Sequential(
        nn.Linear(3, 3),
        bounds.Residual(nn.Sequential(nn.ReLU(), nn.Linear(3, 3))),
        nn.ReLU(),
        nn.Linear(3, 2),
    )
    with pytest.raises(milp.UnsupportedLayerError, match="Residual"):
        milp.affine_net(res, (3,))
    with pytest.raises(ValueError, match="not supported"):
        milp.affine_net(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)), (3,))


def test_cutoff_and_tightening_do_not_change_the_answer() -> None:
    model, _ = make_mlp(5, [10, 10], 3, seed=7)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = model(x).argmax(1)
    plain, _, _, _ = _decide(model, x, y, 0.2, tighten_lp=False, cutoff=False)
    fast, _, _, _ = _decide(model, x, y, 0.2)
    for a, b in zip(plain, fast):
        assert a.status == b.status
        np.testing.assert_allclose(a.margin, b.margin, atol=1e-6)


def test_a_tiny_time_limit_gives_timeout_not_a_wrong_answer() -> None:
    model, _ = make_mlp(8, [30, 30], 5, seed=1)
    x = torch.rand(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    model = model.double().eval()
    net = milp.affine_net(model, (8,))
    lo, hi, pre, lower = milp.milp_inputs(model, x, y, 0.5)
    exact = [
        milp.exact_min_margin(
            net, lo[b], hi[b], int(y[b]), pre[b], lower[b], None, milp.MilpOptions(60)
        )
        for b in range(2)
    ]
    for b in range(2):
        r = milp.exact_min_margin(
            net, lo[b], hi[b], int(y[b]), pre[b], lower[b], None, milp.MilpOptions(1e-3)
        )
        assert r.status in (milp.TIMEOUT, exact[b].status)
        assert r.margin_lower <= exact[b].margin + 1e-6 and r.margin >= exact[b].margin - 1e-6


# ------------------------------------------------------------------ the command


TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[12,12]",
    "--eps",
    "0.05",
    "--epochs",
    "4",
    "--batch-size",
    "32",
    "--train-size",
    "512",
    "--test-size",
    "32",
    "--eps-ramp-epochs",
    "0",
    "--method",
    "natural",
    "--quiet",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from landscape.cli import main

    out = tmp_path_factory.mktemp("complete") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return str(out / "checkpoint.pt")


def test_certify_complete_json_file_and_resume(checkpoint, tmp_path, capsys) -> None:
    from common import store
    from landscape.cli import main
    from landscape.complete import progress_path

    out = tmp_path / "c.h5"
    args = [
        "certify",
        checkpoint,
        "--eps",
        "0.1",
        "--test-size",
        "24",
        "--pgd-steps",
        "3",
        "--complete",
        "--margins",
        "--out",
        str(out),
    ]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("attack_err", "exact_err", "timeouts", "clean_err", "pgd_err", "verified_err"):
        assert key in res
    assert res["timeouts"] == 0
    assert res["clean_err"] <= res["attack_err"] <= res["exact_err"] <= res["verified_err"]
    for m in ("ibp", "crown_ibp", "crown", "crown_optimized"):
        assert res["exact_err"] <= res[f"verified_err_{m}"]
    h5 = store.read(str(out))
    s = h5["samples"]
    assert h5["attrs"]["complete"] and h5["attrs"]["attack"] == "pgd"
    assert len(s["status"]) == 24 and set(s["status"].tolist()) <= {1, 2}
    ok = (s["optimal"] == 1) & (s["clean_wrong"] == 0)
    assert ok.sum() == (s["clean_wrong"] == 0).sum()  # --margins: every correct sample solved
    for m in ("ibp", "crown_ibp", "crown", "crown_optimized"):
        assert np.all(s[f"bound_margin_{m}"][ok] <= s["exact_margin"][ok] + 1e-6)
    assert np.all(s["exact_margin"][ok] <= s["attack_margin"][ok] + 1e-6)
    falsified = s["status"] == 2
    assert (
        np.isfinite(s["counterexample"][falsified]).all()
        and np.isnan(s["counterexample"][~falsified]).all()
    )
    assert list(h5["tightness"]["bound"]) == ["ibp", "crown-ibp", "crown", "crown:optimized"]
    assert np.all(h5["tightness"]["gap_mean"] >= -1e-6)
    assert not progress_path(out).exists()
    # a progress file of the same settings is resumed; of other settings refused with one line
    store.append_rows(str(progress_path(out)), "samples", {"index": np.array([0])})
    store.write_attrs(str(progress_path(out)), {"settings": {"eps": 0.3}})
    assert main([*args]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip().startswith("Error:")
        and "other settings" in err
        and len(err.strip().splitlines()) == 1
    )
    progress_path(out).unlink()
    assert main(args) == 0
    assert "exact robust error" in capsys.readouterr().out


def test_run_complete_resumes_rows_already_solved(checkpoint, tmp_path, monkeypatch) -> None:
    from landscape.complete import run_complete
    from train.checkpoint import load_model
    from train.data import load_dataset

    model, _ = load_model(checkpoint)
    data = load_dataset("digits", test_size=16, seed=0)
    path = tmp_path / "p.h5"
    kw = dict(pgd_steps=2, margins=True, progress=False, resume=path, settings={"eps": 0.1})
    calls = []
    real = milp.solve_task

    def failing(task):
        calls.append(task[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(milp, "solve_task", failing)
    with pytest.raises(KeyboardInterrupt):
        run_complete(model, data.test_x, data.test_y, 0.1, ["ibp"], **kw)
    seen = []
    monkeypatch.setattr(milp, "solve_task", lambda t: (seen.append(t[0]), real(t))[1])
    again = run_complete(model, data.test_x, data.test_y, 0.1, ["ibp"], **kw)
    assert (
        len(calls) == 2 and calls[0] not in seen and calls[1] in seen
    )  # the finished sample is kept
    fresh = run_complete(
        model, data.test_x, data.test_y, 0.1, ["ibp"], pgd_steps=2, margins=True, progress=False
    )
    np.testing.assert_array_equal(again.samples["status"], fresh.samples["status"])
    np.testing.assert_allclose(
        again.samples["exact_margin"], fresh.samples["exact_margin"], atol=1e-6
    )
    with pytest.raises(ValueError, match="other settings"):
        run_complete(
            model, data.test_x, data.test_y, 0.1, ["ibp"], **{**kw, "settings": {"eps": 0.2}}
        )


def test_certify_flags_are_checked(checkpoint, capsys) -> None:
    from landscape.cli import main

    for extra, words in (
        (["--jobs", "2"], "need --complete"),
        (["--complete", "--eps", "0.1,0.2"], "one eps"),
        (["--attack", "fgsm"], "unknown attack"),
        (["--complete", "--time-limit", "0"], "--time-limit"),
    ):
        assert main(["certify", checkpoint, "--test-size", "8", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("Error:") and words in err and len(err.splitlines()) == 1, err


def test_jobs_give_the_same_answers(checkpoint) -> None:
    from landscape.complete import run_complete
    from train.checkpoint import load_model
    from train.data import load_dataset

    model, ckpt = load_model(checkpoint)
    data = load_dataset("digits", test_size=12, seed=0)
    one = run_complete(
        model, data.test_x, data.test_y, 0.1, ["ibp"], pgd_steps=2, margins=True, progress=False
    )
    two = run_complete(
        model,
        data.test_x,
        data.test_y,
        0.1,
        ["ibp"],
        pgd_steps=2,
        margins=True,
        progress=False,
        jobs=2,
    )
    np.testing.assert_array_equal(one.samples["status"], two.samples["status"])
    np.testing.assert_allclose(one.samples["exact_margin"], two.samples["exact_margin"], atol=1e-6)


def test_art_attack_sits_beside_pgd(checkpoint, capsys) -> None:
    pytest.importorskip("art")
    from landscape.cli import main

    assert (
        main(
            [
                "certify",
                checkpoint,
                "--eps",
                "0.1",
                "--test-size",
                "16",
                "--pgd-steps",
                "3",
                "--attack",
                "apgd-ce",
                "--complete",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["attack"] == "apgd-ce"
    assert res["clean_err"] <= res["attack_err"] <= res["exact_err"] <= res["verified_err"]


def test_reproduce_adds_the_exact_columns_of_complete_files(checkpoint, tmp_path) -> None:
    from landscape.certification import write_complete_file
    from landscape.complete import run_complete
    from landscape.reproduce.exact import add_exact_columns, wants_exact
    from landscape.reproduce.plan import make_plan
    from train.checkpoint import load_model
    from train.data import load_dataset

    quick, tiny = make_plan("quick", dataset="digits"), make_plan("tiny")
    assert all(wants_exact(quick, r) for r in quick.runs) and not any(
        wants_exact(tiny, r) for r in tiny.runs
    )
    model, _ = load_model(checkpoint)
    data = load_dataset("digits", test_size=10, seed=0)
    run = quick.runs[0]
    res = run_complete(
        model,
        data.test_x,
        data.test_y,
        0.1,
        ["ibp", run.method],
        pgd_steps=2,
        margins=True,
        progress=False,
    )
    run.run_dir(tmp_path).mkdir(parents=True)
    write_complete_file(run.run_dir(tmp_path) / "complete.h5", res, {"method": run.method})
    rows = [{"method": r.method} for r in quick.runs]
    add_exact_columns(quick, tmp_path, rows)
    assert rows[0]["exact_err"] == pytest.approx(res.totals["exact_err"])
    assert rows[0]["exact_gap_own"] == pytest.approx(
        res.tightness["gap_mean"][res.bounds.index(run.method)]
    )
    assert "exact_gap_crown_optimized" in rows[0] and "exact_err" not in rows[1]


def test_attack_alone_and_without_the_toolbox(checkpoint, capsys, monkeypatch) -> None:
    from landscape import standard_attacks
    from landscape.cli import main

    pytest.importorskip("art")
    assert (
        main(
            [
                "certify",
                checkpoint,
                "--eps",
                "0.1",
                "--test-size",
                "12",
                "--pgd-steps",
                "3",
                "--attack",
                "apgd-t",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["attack"] == "apgd-t" and "exact_err" not in res
    assert res["clean_err"] <= res["attack_err"] <= res["verified_err"]

    def missing():
        raise ImportError(
            "--attack needs the Adversarial Robustness Toolbox; install it with pip install "
            "'cert-landscape[attack]'"
        )

    monkeypatch.setattr(standard_attacks, "_import_art", missing)
    assert (
        main(["certify", checkpoint, "--eps", "0.1", "--test-size", "8", "--attack", "autoattack"])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("Error:") and "cert-landscape[attack]" in err and len(err.splitlines()) == 1
    )

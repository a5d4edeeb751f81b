"""`landscape reproduce`: the tiny profile (a few steps on digits) trains every method, certifies,
scans and draws every figure; a second call resumes without training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from landscape.cli import cli, main

FIGURES = [
    "compare_training_curves",
    "compare_probes",
    "compare_loss_variation_over_training",
    "compare_grad_cosine_over_training",
    "compare_gradient_direction_over_training",
    "compare_tightness_vs_smoothness",
    "compare_verified_error_vs_eps",
    "compare_gradient",
    "compare_random-1d",
    "compare_random-2d_contour",
    "compare_random-2d_heatmap",
]
METHODS = ("ibp", "crown-ibp", "cap", "tightest")


@pytest.mark.slow
def test_tiny_profile_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    result = CliRunner().invoke(
        cli, ["reproduce", "--profile", "tiny", "--out", str(out), "--format", "png"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    fig = out / "figures" / "digits_eps0.1"
    for stem in FIGURES:
        png = fig / f"{stem}.png"
        assert png.exists() and png.stat().st_size > 5000, stem
    for m in METHODS:
        assert (out / "runs" / "digits_eps0.1" / "seed0" / m / "checkpoint.pt").exists()
        assert (fig / f"{m}_gradient.png").exists() and (
            fig / f"{m}_random-2d_heatmap.png"
        ).exists()
    table = (fig / "compare_verified_error.md").read_text()
    for name in ("IBP", "CROWN-IBP", "CAP", "Tightest"):
        assert f"| {name} |" in table
    assert (fig / "compare_verified_error.tex").read_text().count(
        r"\\"
    ) >= 9  # header + 4 methods x 2 eps
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["runs"]
    assert [r["method"] for r in rows] == list(METHODS) and [r["seed"] for r in rows] == [0] * 4
    for r in rows:
        assert (
            0.0 <= r["verified_err"] <= 1.0
            and r["loss_variation"] >= 0.0
            and r["bound_gap"] >= -1e-4
        )
        assert r["bound_gap_common"] >= -1e-4 and r["verified_err_own"] >= r["verified_err"] - 1e-9
    assert [c["claim"][:2] for c in summary["claims"]["digits_eps0.1"]] == ["C1", "C2", "C3", "C4"]
    assert all(
        c["verdict"] == "undecided" for c in summary["claims"]["digits_eps0.1"]
    )  # one seed judges nothing
    assert "1 seed(s): a test needs at least 2" in (out / "summary.md").read_text()

    ckpt = out / "runs" / "digits_eps0.1" / "seed0" / "ibp" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = CliRunner().invoke(
        cli, ["reproduce", "--profile", "tiny", "--out", str(out), "--format", "png"]
    )
    assert again.exit_code == 0, again.output
    assert "trained 0 runs, reused 4" in again.output
    assert ckpt.stat().st_mtime_ns == stamp


def test_plans_write_down_the_settings() -> None:
    from landscape.reproduce import describe_plan, make_plan
    from train.config import TrainConfig

    paper = make_plan("paper", device="cuda")
    assert {r.setting for r in paper.runs} == {
        "mnist_eps0.4",
        "cifar10_eps2_255",
        "cifar10_eps8_255",
        "svhn_eps0.01",
    }
    mnist = [r.config for r in paper.runs if r.setting == "mnist_eps0.4"]
    assert all(c["eps"] == 0.4 and c["model"] == "ibp-large" and c["epochs"] == 200 for c in mnist)
    assert {r.method for r in paper.runs} == set(METHODS)
    assert all(r.config["device"] == "cuda" and r.config["beta_end"] == 1.0 for r in paper.runs)
    assert all(
        r.config["kappa_start"] == 0.0 and r.config["bounded_input"] is False for r in paper.runs
    )
    official = make_plan("official-short", seeds=[0, 1, 2])
    assert len(official.runs) == 12 and {r.seed for r in official.runs} == {0, 1, 2}
    cfg = TrainConfig.from_dict(official.runs[0].config)  # every setting is a valid training config
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.epochs, cfg.probe_every) == (
        "model-small",
        80,
        5e-4,
        2,
        100,
    )
    assert not cfg.normalize_inputs and not cfg.bounded_input and cfg.probe_fresh_slopes
    text = describe_plan(make_plan("quick"))
    assert "ibp" in text and "tightest" in text and "certify" in text
    tiny = make_plan("tiny", methods=["ibp", "tightest"])
    assert [r.method for r in tiny.runs] == ["ibp", "tightest"]


def test_bad_profile_and_method(tmp_path: Path, capsys) -> None:
    from landscape.reproduce import make_plan

    with pytest.raises(ValueError, match="unknown profile 'huge'; choose one of .*official-short"):
        make_plan("huge")
    with pytest.raises(
        ValueError, match="unknown method 'natural'"
    ):  # reproduce trains methods with a bound
        make_plan("tiny", methods=["natural"])
    assert (
        main(["reproduce", "--profile", "tiny", "--methods", "bogus", "--out", str(tmp_path / "o")])
        == 1
    )
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "huge", "--out", str(tmp_path / "o")]) != 0


def test_dry_run_prints_plan(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["reproduce", "--profile", "paper", "--out", str(tmp_path / "p"), "--dry-run"]
    )
    assert result.exit_code == 0
    assert (
        "mnist_eps0.4/seed0/tightest" in result.output
        and "cifar10_eps8_255/seed0/cap" in result.output
    )
    assert not (tmp_path / "p").exists()


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    """A run interrupted after its epoch-1 checkpoint wrote step and probe rows past it; the
    resumed run writes them again, so each step must appear once in train.h5."""
    import numpy as np

    from common import store
    from landscape import reproduce
    from train.config import TrainConfig
    from train.loop import load_data

    plan = reproduce.make_plan("tiny", methods=["ibp"])
    run = plan.runs[0]
    run_dir = run.run_dir(tmp_path)
    data = load_data(TrainConfig.from_dict(run.config))
    assert reproduce.train_run(run, tmp_path, plan, data, progress=False)
    for name in ("checkpoint.pt", "checkpoint_epoch2.pt"):  # as if it died during epoch 2
        (run_dir / name).unlink()
    assert reproduce.train_run(run, tmp_path, plan, data, progress=False)
    rec = store.read(str(run_dir / "train.h5"))
    steps = rec["steps"]["step"].tolist()
    assert steps == sorted(set(steps)), steps
    probe_rows = list(zip(rec["probes"]["step"].tolist(), rec["probes"]["t"].tolist()))
    assert len(probe_rows) == len(set(probe_rows)), probe_rows
    assert rec["epochs"]["epoch"].tolist() == [0, 1]
    assert not np.isnan(rec["steps"]["loss"]).any()


@pytest.mark.slow
def test_seeds_give_bands_and_claims_with_their_spread(tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    result = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "--profile",
            "tiny",
            "--methods",
            "ibp,tightest",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "--format",
            "png",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "runs" / "digits_eps0.1" / "seed1" / "tightest" / "checkpoint.pt").exists()
    assert (out / "figures" / "digits_eps0.1" / "seeds_probes.png").stat().st_size > 5000
    figs = out / "figures" / "digits_eps0.1"
    for stem in ("compare_gradient", "compare_verified_error_vs_eps"):  # drawn across the seeds
        assert (figs / f"{stem}.png").stat().st_size > 5000, stem
    table = (figs / "compare_verified_error.md").read_text()
    assert "Mean over 2 seeds (0, 1)" in table
    summary = json.loads((out / "summary.json").read_text())
    agg = {r["method"]: r for r in summary["methods"]}
    assert agg["ibp"]["seeds"] == [0, 1] and agg["ibp"]["verified_err_std"] is not None
    c1 = summary["claims"]["digits_eps0.1"][0]
    assert c1["claim"].startswith("C1") and all(p["seeds"] == 2 for p in c1["parts"])
    assert all(p["verdict"] in ("holds", "contradicted", "undecided") for p in c1["parts"])
    assert all(len(p["ci"]) == 2 and "p" in p for p in c1["parts"])
    md = (out / "summary.md").read_text()
    assert "± " in md and "2 seed(s): **" in md


def test_train_reads_a_reproduction_setting(tmp_path: Path) -> None:
    """Every profile's setting file is a training config too (its reproduce section ignored)."""
    from landscape.reproduce.plan import load_settings
    from train.config import load_config

    settings = load_settings()
    assert {s.profile for s in settings} >= {"tiny", "quick", "official-short", "paper"}
    for s in settings:
        cfg = load_config(s.path, {"method": "tightest"})
        assert cfg.dataset == s.dataset and cfg.method == "tightest"
    from landscape.cli import main

    tiny = next(s for s in settings if s.profile == "tiny")
    assert (
        main(
            [
                "train",
                "--config",
                str(tiny.path),
                "--method",
                "ibp",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
            ]
        )
        == 0
    )


def test_as_tight_claim_is_a_tost_against_the_declared_margin() -> None:
    """C3's "as tight as" part: equivalent inside the margin, not equivalent beyond it on either
    side (saying which), undecided when the interval is wider than the margin."""
    from landscape.reproduce.claims import Margins, claims

    def part(tightest_gaps: list[float]) -> dict:
        rows = [
            {"setting": "s", "seed": k, "method": m, "bound_gap_common": g, "loss_variation": 0.1}
            for k, gap in enumerate(tightest_gaps)
            for m, g in (("crown-ibp", 0.5), ("tightest", gap))
        ]
        c3 = next(
            c for c in claims(rows, "s", Margins(gap_relative=0.1)) if c["claim"].startswith("C3")
        )
        return c3["parts"][0]

    assert part([0.49, 0.51, 0.50, 0.505])["verdict"] == "equivalent"
    better = part([0.40, 0.41, 0.39])
    assert better["verdict"] == "not equivalent" and better["direction"] == "below"
    assert part([0.60, 0.61, 0.59])["direction"] == "above"
    assert part([0.40, 0.60, 0.50])["verdict"] == "undecided"


def test_a_larger_plan_adds_the_missing_bound_gaps_to_a_certified_run(tmp_path: Path) -> None:
    """A run certified by a one-method plan (one process per method) gets the other methods'
    bound gaps added when a plan with more methods reaches it; the rest of the file is kept."""
    import numpy as np

    from common import store
    from landscape import reproduce
    from landscape.reproduce.steps import certify_run, gap_column
    from train.config import TrainConfig
    from train.loop import load_data

    one = reproduce.make_plan("tiny", methods=["ibp"])
    run = one.runs[0]
    data = load_data(TrainConfig.from_dict(run.config))
    reproduce.train_run(run, tmp_path, one, data, progress=False)
    path = certify_run(run, tmp_path, one, data)
    before = store.read(str(path))
    assert gap_column("tightest") not in before["results"]

    two = reproduce.make_plan("tiny", methods=["ibp", "tightest"])
    same = next(r for r in two.runs if r.method == "ibp")
    assert same.run_dir(tmp_path) == run.run_dir(tmp_path)
    after = store.read(str(certify_run(same, tmp_path, two, data)))
    assert after["attrs"]["complete"]
    assert np.isfinite(after["results"][gap_column("tightest")]).all()
    for column, values in before["results"].items():
        np.testing.assert_array_equal(after["results"][column], values)
    assert after["attrs"]["created"] == before["attrs"]["created"]

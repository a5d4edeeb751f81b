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
    result = CliRunner().invoke(cli, ["reproduce", "--profile", "tiny", "--out", str(out), "--format", "png"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    fig = out / "figures" / "digits_eps0.1"
    for stem in FIGURES:
        png = fig / f"{stem}.png"
        assert png.exists() and png.stat().st_size > 5000, stem
    for m in METHODS:
        assert (out / "runs" / "digits_eps0.1" / m / "checkpoint.pt").exists()
        assert (fig / f"{m}_gradient.png").exists() and (fig / f"{m}_random-2d_heatmap.png").exists()
    table = (fig / "compare_verified_error.md").read_text()
    for name in ("IBP", "CROWN-IBP", "CAP", "Tightest (ours)"):
        assert f"| {name} |" in table
    assert (fig / "compare_verified_error.tex").read_text().count(r"\\") >= 9  # header + 4 methods x 2 eps
    rows = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert 0.0 <= r["verified_err"] <= 1.0 and r["loss_variation"] >= 0.0 and r["bound_gap"] >= -1e-4

    ckpt = out / "runs" / "digits_eps0.1" / "ibp" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = CliRunner().invoke(cli, ["reproduce", "--profile", "tiny", "--out", str(out), "--format", "png"])
    assert again.exit_code == 0, again.output
    assert "trained 0 runs, reused 4" in again.output
    assert ckpt.stat().st_mtime_ns == stamp


def test_plans_write_down_the_settings() -> None:
    from landscape.reproduce import describe_plan, make_plan

    paper = make_plan("paper", device="cuda")
    assert {r.setting for r in paper.runs} == {"mnist_eps0.4", "cifar10_eps2_255", "cifar10_eps8_255"}
    mnist = [r.config for r in paper.runs if r.setting == "mnist_eps0.4"]
    assert all(c["eps"] == 0.4 and c["model"] == "ibp-large" and c["epochs"] == 200 for c in mnist)
    assert {r.method for r in paper.runs} == set(METHODS)
    assert all(r.config["device"] == "cuda" and r.config["beta_end"] == 1.0 for r in paper.runs)
    text = describe_plan(make_plan("quick"))
    assert "ibp" in text and "tightest" in text and "certify" in text
    tiny = make_plan("tiny", methods=["ibp", "tightest"])
    assert [r.method for r in tiny.runs] == ["ibp", "tightest"]


def test_bad_profile_and_method(tmp_path: Path, capsys) -> None:
    from landscape.reproduce import make_plan

    with pytest.raises(ValueError, match="unknown profile"):
        make_plan("huge")
    with pytest.raises(ValueError, match="unknown method 'crown'"):
        make_plan("tiny", methods=["crown"])
    assert main(["reproduce", "--profile", "tiny", "--methods", "bogus", "--out", str(tmp_path / "o")]) == 1
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "huge", "--out", str(tmp_path / "o")]) != 0


def test_dry_run_prints_plan(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["reproduce", "--profile", "paper", "--out", str(tmp_path / "p"), "--dry-run"])
    assert result.exit_code == 0
    assert "mnist_eps0.4/tightest" in result.output and "cifar10_eps8_255/cap" in result.output
    assert not (tmp_path / "p").exists()


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    """A run interrupted after its epoch-1 checkpoint wrote step and probe rows past it; the
    resumed run writes them again, so each step must appear once in train.h5."""
    import numpy as np

    from landscape import reproduce, store
    from train.config import TrainConfig
    from train.loop import load_data

    plan = reproduce.make_plan("tiny", methods=["ibp"])
    run = plan.runs[0]
    run_dir = tmp_path / "ibp"
    data = load_data(TrainConfig.from_dict(run.config))
    assert reproduce.train_run(run, run_dir, plan, data, progress=False)
    for name in ("checkpoint.pt", "checkpoint_epoch2.pt"):  # as if it died during epoch 2
        (run_dir / name).unlink()
    assert reproduce.train_run(run, run_dir, plan, data, progress=False)
    rec = store.read(str(run_dir / "train.h5"))
    steps = rec["steps"]["step"].tolist()
    assert steps == sorted(set(steps)), steps
    probe_rows = list(zip(rec["probes"]["step"].tolist(), rec["probes"]["t"].tolist()))
    assert len(probe_rows) == len(set(probe_rows)), probe_rows
    assert rec["epochs"]["epoch"].tolist() == [0, 1]
    assert not np.isnan(rec["steps"]["loss"]).any()

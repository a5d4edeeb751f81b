"""A new user's first run: defaults that scale with the run, a collapse that is reported, every
data command taking --download, and the small rough edges found by trying it."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common import store
from landscape.cli import cli, main
from train.config import DEFAULT_LR, RAMP_FRACTION, WARMUP_FRACTION, TrainConfig

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[8]",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--batch-size",
    "32",
    "--quiet",
]


# ----------------------------------------------------------------------------- defaults


def test_the_schedule_defaults_scale_with_the_run() -> None:
    for epochs in (5, 30, 200):
        cfg = TrainConfig(epochs=epochs)
        assert cfg.eps_start_epoch == pytest.approx(WARMUP_FRACTION * epochs)
        assert cfg.eps_ramp_epochs == pytest.approx(RAMP_FRACTION * epochs)
    assert (
        TrainConfig().lr == DEFAULT_LR["adam"]
        and TrainConfig(optimizer="sgd").lr == DEFAULT_LR["sgd"]
    )
    explicit = TrainConfig(epochs=30, eps_start_epoch=0.0, eps_ramp_epochs=1.0, lr=5e-4)
    assert (explicit.eps_start_epoch, explicit.eps_ramp_epochs, explicit.lr) == (0.0, 1.0, 5e-4)
    stored = TrainConfig.from_dict(TrainConfig(epochs=30).to_dict())
    assert stored.replace(epochs=60).eps_ramp_epochs == pytest.approx(
        RAMP_FRACTION * 30
    )  # derived once, kept


def test_train_help_shows_every_default() -> None:
    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    flat = " ".join(text.split())
    for needle in (
        "[default: (5% of --epochs)]",
        "ramps over epochs 5%-60% of the run",
        "[default: (0.001 for adam,",
        "[default: (32)]",
        "[default: (20)]",
        "[default: (linear)]",
        "[default: (0.1)]",
        "[default: (digits)]",
        "[default: (the method's own)]",
    ):
        assert needle in flat, needle


@pytest.mark.slow
def test_the_first_command_trains(tmp_path) -> None:
    """The issue's command with nothing else set: IBP on the digits MLP does not collapse (it
    used to end at 90% error: a one-epoch ramp jumped eps to 0.1 after 12 steps)."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--method",
                "ibp",
                "--eps",
                "0.1",
                "--epochs",
                "30",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rec = store.read(out / "train.h5")
    assert rec["attrs"]["warnings"] == []
    assert (
        rec["epochs"]["test_verified_err_ibp"][-1] <= 0.40
        and rec["epochs"]["test_clean_err"][-1] <= 0.15
    )


@pytest.mark.slow
def test_train_with_nothing_but_out_trains(tmp_path, capsys) -> None:
    """`landscape train --out X` alone (IBP, cnn-tiny, digits, eps 0.1) ends at most at 40 %
    verified error by its own bound, with no collapse warning (it used to end at 90 % after seven)."""
    out = tmp_path / "X"
    assert main(["train", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Warning" not in err, err
    rec = store.read(out / "train.h5")
    assert rec["attrs"]["warnings"] == [] and rec["attrs"]["method"] == "ibp"
    assert (
        rec["epochs"]["test_verified_err_ibp"][-1] <= 0.40
        and rec["epochs"]["test_clean_err"][-1] <= 0.15
    )


def test_a_collapse_that_recovers_is_not_warned_about(monkeypatch) -> None:
    """Only a collapse that lasts to the end is reported: epochs 1-2 collapsed, 3 fine -> none;
    epochs 2-3 collapsed -> one warning, after epoch 3, since epoch 2."""
    from train import loop

    for pattern, expected in (
        ((1, 1, 0), []),
        ((0, 1, 1), ["after epoch 3 (collapsed since epoch 2)"]),
    ):
        calls = iter(pattern)

        def fake(model, x, y, n, r, c, when, _calls=calls):
            return (
                f"the model predicts class 0 for 99% of the test samples {when}: training has collapsed; advice"
                if next(_calls)
                else None
            )

        monkeypatch.setattr(loop, "collapse_warning", fake)
        cfg = TrainConfig(
            dataset="digits",
            model="mlp",
            model_options={"widths": [8]},
            method="ibp",
            epochs=3,
            batch_size=32,
            train_size=64,
            test_size=32,
            eval_size=32,
        )
        seen: list[str] = []
        result = loop.train(cfg, progress=False, warn=seen.append)
        assert len(seen) == len(expected) and all(e in w for e, w in zip(expected, seen)), seen
        assert [h["collapsed"] for h in result.history] == [float(v) for v in pattern]


# ----------------------------------------------------------------------------- collapse


def test_a_collapse_is_reported_and_recorded(tmp_path, capsys) -> None:
    """A run that ends predicting one class gets one warning line (saying since when), an
    epoch column ``collapsed`` and the root attribute ``warnings``; reproduce's summary lists it."""
    from landscape.reproduce.summary import summary_markdown

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY,
                "--method",
                "ibp",
                "--eps",
                "0.4",
                "--epochs",
                "2",
                "--eps-start-epoch",
                "0",
                "--eps-ramp-epochs",
                "0",
                "--kappa-start",
                "0",
                "--lr",
                "0.5",
                "--eval-size",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("Warning:")]
    assert (
        len(lines) == 1 and "training has collapsed" in lines[0] and "--eps-ramp-epochs" in lines[0]
    )
    assert "after epoch 2 (collapsed since epoch 1)" in lines[0]
    rec = store.read(out / "train.h5")
    assert rec["epochs"]["collapsed"].tolist() == [1.0, 1.0]
    assert len(rec["attrs"]["warnings"]) == 1 and "after epoch 2" in rec["attrs"]["warnings"][0]
    md = summary_markdown(
        [{"setting": "s", "method": "ibp", "model": "mlp", "warnings": rec["attrs"]["warnings"]}]
    )
    assert "Warnings" in md and "training has collapsed" in md


def test_a_certified_loss_stuck_at_log_n_is_a_collapse() -> None:
    from torch import nn

    from train.collapse import collapse_warning

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    model[1].bias.data[1] = 1.0
    x, y = torch.rand(30, 1, 2, 2), torch.arange(30) % 3
    assert "predicts class 1 for 100%" in collapse_warning(model, x, y, 3, None, None, "now")
    model[1].bias.data[1] = 0.0
    model[1].weight.data[:, :] = torch.randn(3, 4)
    assert collapse_warning(model, x, y, 3, 0.5, 0.4, "now") is None
    assert collapse_warning(model, x, y, 3, math.log(3), 0.4, "now") is None  # common mid-ramp
    assert "stuck at log(3)" in collapse_warning(
        model, x, y, 3, math.log(3) * 1.003, math.log(3), "now"
    )


# ----------------------------------------------------------------------------- --download


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and no Fashion-MNIST files anywhere the loader looks."""
    import train.sources as sources

    def refuse(request, timeout=0):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(sources, "SYSTEM_ROOT", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LANDSCAPE_DATA", raising=False)


def test_every_data_command_takes_download_and_fails_fast_offline(
    tmp_path, capsys, offline
) -> None:
    from train.checkpoint import save_checkpoint
    from train.models import build_model, model_description

    net = build_model("mlp", (1, 28, 28), 10, (0.3,), (0.3,), widths=[4])
    ckpt = tmp_path / "fm.pt"
    save_checkpoint(
        ckpt,
        net,
        model_desc=model_description("mlp", (1, 28, 28), 10, (0.3,), (0.3,), widths=[4]),
        config=TrainConfig(dataset="fashion-mnist", model="mlp").to_dict(),
        epoch=1,
        step=1,
    )
    commands = [
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--model",
            "mlp",
            "--out",
            str(tmp_path / "r"),
            "--download",
        ],
        ["certify", str(ckpt), "--download"],
        ["scan", str(ckpt), "--out", str(tmp_path / "s.h5"), "--download"],
        [
            "reproduce",
            "--profile",
            "quick",
            "--dataset",
            "fashion-mnist",
            "--out",
            str(tmp_path / "q"),
            "--download",
        ],
    ]
    for args in commands:
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            "Error: --download of dataset 'fashion-mnist' failed"
        ), (args, err)
    assert not (tmp_path / "s.h5").exists()


# ----------------------------------------------------------------------------- small edges


@pytest.mark.parametrize(
    "data, words",
    [
        ({"model_options": [1, 2]}, "model_options must be a mapping"),
        ({"lr_milestones": 5}, "lr_milestones must be a list"),
        ({"data_dir": 5}, "data_dir must be a folder name"),
        ({"method": "natural", "fused_loss": True}, "natural training has none"),
    ],
)
def test_config_errors_name_the_key(data, words) -> None:
    with pytest.raises(ValueError, match=words):
        TrainConfig.from_dict(data)


def test_landscape_debug_zero_keeps_tracebacks_off(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LANDSCAPE_DEBUG", "0")
    assert main(["certify", "/nonexistent/ckpt.pt"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("LANDSCAPE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["certify", "/nonexistent/ckpt.pt"])


def test_dry_run_checks_the_format_and_the_digits_plan_counts_its_test_set(tmp_path) -> None:
    bad = CliRunner().invoke(
        cli,
        ["reproduce", "--profile", "tiny", "--out", str(tmp_path), "--dry-run", "--format", "gif"],
    )
    assert bad.exit_code != 0 and "unknown image format 'gif'" in bad.output
    good = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "--profile",
            "quick",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path),
            "--dry-run",
        ],
    )
    assert (
        good.exit_code == 0
        and "(360 test samples" in good.output
        and "500 test samples" not in good.output
    )


def test_summary_json_is_valid_json_with_null_for_nan() -> None:
    from landscape.reproduce.summary import json_ready

    text = json.dumps(
        json_ready([{"a": float("nan"), "b": np.float32(0.5), "c": [float("inf"), 1]}]),
        allow_nan=False,
    )
    assert json.loads(text) == [{"a": None, "b": 0.5, "c": [None, 1]}]


def test_latex_table_bolds_only_the_best_of_a_comparison() -> None:
    from figures.tables import verified_error_latex

    one = [
        {"method": "ibp", "eps": e, "clean_err": 0.1, "pgd_err": 0.2, "verified_err": v}
        for e, v in ((0.05, 0.3), (0.1, 0.4))
    ]
    assert r"\textbf" not in verified_error_latex(one)  # one method: nothing to win
    two = one + [
        {"method": "crown-ibp", "eps": 0.1, "clean_err": 0.1, "pgd_err": 0.2, "verified_err": 0.35}
    ]
    tex = verified_error_latex(two)
    assert tex.count(r"\textbf") == 1 and r"\textbf{35.0}" in tex
    tie = [dict(r, verified_err=0.4) for r in two if r["eps"] == 0.1]
    assert r"\textbf" not in verified_error_latex(tie)  # all equal: no best


def test_points_one_scans_the_checkpoint_itself() -> None:
    from landscape.scans import grid_coords

    assert grid_coords(-1.0, 1.0, 1).tolist() == [0.0]
    assert grid_coords(-0.5, 1.5, 1).tolist() == [0.0]
    assert grid_coords(0.5, 1.5, 1).tolist() == [1.0]
    assert grid_coords(-1.0, 1.0, 3).tolist() == [-1.0, 0.0, 1.0]


def test_certify_writes_a_results_file(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY,
                "--method",
                "ibp",
                "--epochs",
                "1",
                "--eval-size",
                "0",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "c.h5"
    assert (
        main(
            [
                "certify",
                str(run / "checkpoint.pt"),
                "--eps",
                "0.05,0.1",
                "--methods",
                "ibp,crown-ibp",
                "--pgd-steps",
                "3",
                "--test-size",
                "40",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    rec = store.read(out)
    assert rec["attrs"]["kind"] == "certify" and rec["attrs"]["complete"] is True
    np.testing.assert_allclose(rec["results"]["eps"], [0.05, 0.1])
    assert [r["eps"] for r in printed] == [0.05, 0.1]
    np.testing.assert_allclose(
        rec["results"]["verified_err"], [r["verified_err"] for r in printed], rtol=1e-6
    )
    assert rec["results"]["method"].tolist() == ["ibp", "ibp"]
    for row in printed:
        assert row["clean_err"] <= row["pgd_err"] <= row["verified_err"]
    import figures

    assert figures.plot_file(out, tmp_path / "fig", formats="png")  # the figures read it


def test_reproduce_runs_record_their_probe_period() -> None:
    from landscape.reproduce import make_plan

    plan = make_plan("tiny")
    assert all(r.config["probe_every"] == r.probe_every == 2 for r in plan.runs)

"""`train --checkpoint-every-steps K`: checkpoints between epochs for finer PCA trajectories, which
change nothing of the run and keep its resume bit-exact; and `train --probe-hessian`, the
probes' curvature columns, which change nothing of the run either."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common import store
from landscape.cli import main

CFG = dict(
    dataset="digits",
    model="mlp",
    model_options={"widths": [8]},
    method="ibp",
    eps=0.1,
    epochs=3,
    batch_size=40,
    train_size=100,
    test_size=20,
    eval_size=0,
    lr=1e-3,
)  # 3 steps per epoch


def _weights(path: Path) -> list[torch.Tensor]:
    return list(torch.load(path, weights_only=True)["state_dict"].values())


def _same(a: Path, b: Path) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same run with a checkpoint every 2 steps and without."""
    from train.loop import train

    stepped, plain = tmp_path_factory.mktemp("stepped"), tmp_path_factory.mktemp("plain")
    train({**CFG, "checkpoint_every_steps": 2}, out_dir=stepped, progress=False)
    train(CFG, out_dir=plain, progress=False)
    return stepped, plain


def test_step_checkpoints_are_written_between_epochs(runs):
    from landscape import trajectory

    stepped, plain = runs
    names = sorted(p.name for p in stepped.glob("checkpoint_*.pt"))
    # steps 2, 4 and 8 (steps 6 and 9 end an epoch, whose checkpoint holds them) and the initialisation
    assert names == [
        "checkpoint_epoch1.pt",
        "checkpoint_epoch2.pt",
        "checkpoint_epoch3.pt",
        "checkpoint_step0.pt",
        "checkpoint_step2.pt",
        "checkpoint_step4.pt",
        "checkpoint_step8.pt",
    ]
    assert not list(plain.glob("checkpoint_step*.pt"))
    ck = torch.load(stepped / "checkpoint_step4.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 4)  # one epoch done, four steps
    assert _same(
        stepped / "checkpoint.pt", plain / "checkpoint.pt"
    )  # checkpointing changes nothing
    t = trajectory.load_trajectory(
        stepped / "checkpoint.pt"
    )  # the PCA default picks them up, in order
    assert [p.name for p in t.paths] == [
        "checkpoint_step0.pt",
        "checkpoint_step2.pt",
        "checkpoint_epoch1.pt",
        "checkpoint_step4.pt",
        "checkpoint_epoch2.pt",
        "checkpoint_step8.pt",
        "checkpoint_epoch3.pt",
        "checkpoint.pt",
    ]
    assert t.steps == [0, 2, 3, 4, 6, 8, 9, 9]


def test_resume_from_an_epoch_checkpoint_stays_bit_exact(runs, tmp_path):
    from train.loop import train

    stepped, _ = runs
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(stepped / "checkpoint_epoch1.pt", again / "checkpoint_epoch1.pt")
    train(
        {**CFG, "checkpoint_every_steps": 2},
        out_dir=again,
        resume_from=again / "checkpoint_epoch1.pt",
        progress=False,
    )
    assert _same(again / "checkpoint.pt", stepped / "checkpoint.pt")
    for name in ("checkpoint_step4.pt", "checkpoint_step8.pt", "checkpoint_epoch2.pt"):
        assert _same(again / name, stepped / name), name
    assert not (
        again / "checkpoint_step0.pt"
    ).exists()  # a resume does not start the trajectory again
    with pytest.raises(ValueError, match="middle of epoch 2 .*resume from a checkpoint_epoch"):
        train(
            {**CFG, "checkpoint_every_steps": 2},
            out_dir=tmp_path / "x",
            resume_from=stepped / "checkpoint_step4.pt",
            progress=False,
        )


def test_cli_option_and_overwrite_clears_step_checkpoints(tmp_path):
    out = tmp_path / "run"
    base = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--model-option",
        "widths=[8]",
        "--method",
        "ibp",
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--train-size",
        "100",
        "--test-size",
        "20",
        "--eval-size",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main([*base, "--checkpoint-every-steps", "1"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint_step*.pt")) == [
        "checkpoint_step0.pt",
        "checkpoint_step1.pt",
        "checkpoint_step2.pt",
    ]
    assert main([*base, "--overwrite"]) == 0
    assert not list(
        out.glob("checkpoint_step*.pt")
    )  # a stale one would join the new run's trajectory


def test_probe_hessian_records_curvature_and_changes_nothing(tmp_path):
    from landscape.runs import train_in_dir
    from train.config import TrainConfig
    from train.loop import load_data

    cfg = TrainConfig(**{**CFG, "epochs": 1, "probe_every": 2})
    data = load_data(cfg)
    train_in_dir(tmp_path / "a", cfg, data, probe_t=[0.0, 1.0], progress=False)
    train_in_dir(
        tmp_path / "b", cfg.replace(probe_hessian=True), data, probe_t=[0.0, 1.0], progress=False
    )
    assert _same(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    plain, probed = (
        store.read(tmp_path / "a" / "train.h5")["probes"],
        store.read(tmp_path / "b" / "train.h5")["probes"],
    )
    assert "hessian_top_eig" not in plain
    np.testing.assert_array_equal(probed["step"], [0, 0, 2, 2])
    for name in ("hessian_top_eig", "hessian_trace", "hessian_trace_stderr"):
        col = probed[name]
        assert (
            col.dtype == np.float32
            and np.isfinite(col).all()
            and col[0] == col[1]
            and col[2] == col[3]
        ), name
    assert (probed["hessian_trace_stderr"] > 0).all()
    np.testing.assert_array_equal(probed["loss"], plain["loss"])  # the probe itself is unchanged

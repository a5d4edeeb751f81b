"""Training across processes: ``torchrun -m landscape.cli train`` makes the one-process update
on every global batch (shards, weighted gradient sums, the same random slopes), and rank 0
alone writes the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bounds.relaxations import ShardGenerator, rand_rows
from train import parallel

ROOT = Path(__file__).resolve().parents[1]

# 190 = 3 x 63 + 1: every full global batch splits into unequal non-empty shards of 32 and 31 rows
# (weights 32/63 and 31/63, not 1/2), and the last one has one row, so rank 1's shard of it is empty.
ARGS = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[32]",
    "--method",
    "crown-ibp",
    "--slope",
    "uniform",
    "--eps",
    "0.05",
    "--eps-start-epoch",
    "0",
    "--eps-ramp-epochs",
    "0.5",
    "--epochs",
    "1",
    "--train-size",
    "190",
    "--test-size",
    "50",
    "--batch-size",
    "63",
    "--eval-size",
    "50",
    "--quiet",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "landscape.cli",
        "train",
        *ARGS,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained crown-ibp") == 1  # rank 0 alone reports

    from landscape.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # the same thread count as each torchrun process, for the same rounding
    try:
        assert main(["train", *ARGS, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)

    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    for k, a in one["state_dict"].items():
        b = two["state_dict"][k]
        assert torch.allclose(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max())), k
    with (
        h5py.File(tmp_path / "one" / "train.h5") as f1,
        h5py.File(tmp_path / "two" / "train.h5") as f2,
    ):
        assert f1.attrs["world_size"] == 1 and f2.attrs["world_size"] == 2
        assert (
            len(f2["steps/step"]) == len(f1["steps/step"]) == 4
        )  # rows of rank 0 only, global stats
        for col in (
            "loss",
            "robust_ce",
            "clean_err",
            "robust_err",
            "grad_norm",
            "unstable_frac_l0",
        ):
            np.testing.assert_allclose(
                f2["steps"][col][:], f1["steps"][col][:], rtol=1e-5, err_msg=col
            )
        np.testing.assert_allclose(
            f2["epochs/train_loss"][:], f1["epochs/train_loss"][:], rtol=1e-5
        )
        np.testing.assert_allclose(f2["epochs/test_clean_err"][:], f1["epochs/test_clean_err"][:])


def test_a_shard_draws_its_rows_of_the_whole_batch_draw():
    whole = torch.rand((5, 3, 2), generator=torch.Generator().manual_seed(7))
    for ctx in (parallel.Context(0, 2), parallel.Context(1, 2)):
        shard = parallel.batch_shard(ctx, 5)
        gen = shard.generator(7, torch.device("cpu"))
        assert isinstance(gen, ShardGenerator)
        assert torch.equal(rand_rows((shard.size, 3, 2), gen), whole[shard.rows])
    one = parallel.batch_shard(parallel.Context(), 5)
    assert one.rows == slice(0, 5) and one.weight == 1.0
    assert torch.equal(rand_rows((5, 3, 2), one.generator(7, torch.device("cpu"))), whole)


def test_a_global_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="smaller than the 3 processes"):
        parallel.check_batch(parallel.Context(0, 3), 2)
    parallel.check_batch(parallel.Context(0, 3), 3)

"""The official-short profile (a CPU-sized run of the paper code's protocol on Fashion-MNIST),
shortened with --steps to a smoke test on a small Fashion-MNIST-shaped dataset, with two seeds:
its probes reach eps > 0, and a summary with too few probes at the final eps gives no verdict."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from landscape.cli import main


def fake_fashion(folder: Path, n_train: int = 240, n_test: int = 200) -> Path:
    """A small Fashion-MNIST-shaped IDX set (random images, balanced labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(
                bytes([0, 0, 8, 3])
                + np.array([n, 28, 28], dtype=">u4").tobytes()
                + images.tobytes()
            )
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 8, 1]) + np.array([n], dtype=">u4").tobytes() + labels.tobytes())
    return folder


@pytest.mark.slow
def test_official_short_profile_smoke_with_two_seeds(tmp_path: Path, capsys) -> None:
    from common import store

    data = fake_fashion(tmp_path / "fm")
    out = tmp_path / "official-short"
    args = [
        "reproduce",
        "--profile",
        "official-short",
        "--steps",
        "2",
        "--methods",
        "ibp,cap",
        "--seeds",
        "0,1",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--format",
        "png",
    ]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["method"], r["seed"]) for r in summary["runs"]} == {
        ("ibp", 0),
        ("cap", 0),
        ("ibp", 1),
        ("cap", 1),
    }
    run = out / "runs" / "fashion-mnist_eps0.1" / "seed1" / "cap"
    config = json.loads((run / "config.json").read_text())
    assert (
        config["model"] == "model-small"
        and config["batch_size"] == 80
        and config["bounded_input"] is False
    )
    assert config["probe_fresh_slopes"] is True and config["kappa_start"] == 0.0
    probes = store.read(run / "train.h5")["probes"]
    assert float(np.max(probes["eps"])) == pytest.approx(
        0.1
    )  # a probe at the final eps, not only at step 0
    assert np.isfinite(probes["loss_variation"][probes["eps"] > 0]).all()
    md = (out / "summary.md").read_text()
    assert "C2: CROWN-IBP and CAP are tighter than IBP but rougher: undecided" in md
    assert "fewer than 3 probes at the final eps" in md  # a smoke test gives no verdict
    assert "shortened to about 2 steps" in (out / "plan.txt").read_text()

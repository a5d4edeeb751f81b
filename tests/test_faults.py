"""Faults a user meets: a full disk, a killed writer, a scan value that overflows, bad or
broken checkpoints, a resume that cannot work. Each is one clear error (or warning) and leaves
no partial file behind."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import store
from landscape.cli import main

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
    "--eval-size",
    "0",
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-epoch crown-ibp run of a tiny MLP on 64 digits."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(["train", *TINY, "--method", "crown-ibp", "--epochs", "2", "--out", str(out)]) == 0
    return out


def _landscape(args: list[str], file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run the command line in a child process; with ``file_size_limit`` every file it writes is
    capped at that many bytes (a write past it fails as on a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=limit if file_size_limit else None,
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.endswith(".tmp") or p.name.endswith(".partial.h5")
    )


# ----------------------------------------------------------------------------- a full disk


@pytest.mark.slow
def test_a_full_disk_is_one_error_and_leaves_no_partial_file(run, tmp_path) -> None:
    # scan: the results file cannot be written
    out = tmp_path / "scan" / "s.h5"
    proc = _landscape(
        [
            "scan",
            str(run / "checkpoint.pt"),
            "--kind",
            "random-2d",
            "--points",
            "5",
            "--samples",
            "8",
            "--out",
            str(out),
            "--quiet",
        ],
        file_size_limit=4000,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert err[0].startswith(f"Error: cannot write {out}: the disk is full")
    assert not out.exists() and _leftovers(out.parent) == []
    # train: the first checkpoint cannot be written
    train_out = tmp_path / "train"
    proc = _landscape(
        [
            "train",
            *TINY[:5],
            "widths=[256]",
            *TINY[6:],
            "--method",
            "ibp",
            "--epochs",
            "1",
            "--out",
            str(train_out),
        ],
        file_size_limit=60_000,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert "checkpoint_epoch1.pt: the disk is full" in err[0] and "inline_container" not in err[0]
    assert not (train_out / "checkpoint_epoch1.pt").exists() and _leftovers(train_out) == []
    # plot: the image cannot be written in full
    scan = tmp_path / "ok.h5"
    assert (
        main(
            [
                "scan",
                str(run / "checkpoint.pt"),
                "--kind",
                "random-2d",
                "--points",
                "5",
                "--samples",
                "8",
                "--out",
                str(scan),
                "--quiet",
            ]
        )
        == 0
    )
    figs = tmp_path / "figs"
    figs.mkdir()
    proc = _landscape(
        ["plot", str(scan), "--out", str(figs), "--format", "png"], file_size_limit=10_000
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "the disk is full" in err[0], proc.stderr
    assert [p.name for p in figs.iterdir()] == []  # no truncated PNG


def test_the_store_maps_no_space_left_to_one_error(tmp_path, monkeypatch) -> None:
    """The error a full file system gives (errno 28) becomes one DiskFullError naming the
    file, the old file is kept and no temporary is left."""
    import builtins
    import errno

    from common.store import files

    path = tmp_path / "t.h5"
    store.append_rows(str(path), "steps", {"step": [0, 1]})
    before = path.read_bytes()
    real_open = builtins.open

    class Full:
        def __init__(self, name, mode):
            self.fh = real_open(name, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        files,
        "open",
        lambda name, mode="r": Full(name, mode) if "w" in mode else real_open(name, mode),
        raising=False,
    )
    with pytest.raises(store.DiskFullError) as info:
        store.append_rows(str(path), "steps", {"step": [2]})
    assert (
        str(info.value)
        == f"cannot write {path}: the disk is full (no space left on device); free some space "
        "and run the command again"
    )
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- killed writers


def test_stale_temporaries_of_a_killed_writer_are_cleaned(tmp_path) -> None:
    from train.checkpoint import save_checkpoint
    from train.models import build_model, model_description

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    h5 = tmp_path / "train.h5"
    stale = [tmp_path / f".train.h5.{dead}.0a1b2c3d.tmp", tmp_path / ".train.h5.k3j4h5g6.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    os.utime(stale[1], (1_000_000, 1_000_000))  # an old temporary without a process id
    alive = tmp_path / f".train.h5.{os.getpid()}.deadbeef.tmp"  # a writer still running: kept
    alive.write_bytes(b"in progress")
    store.write_attrs(str(h5), {"kind": "train"})
    assert _leftovers(tmp_path) == [alive.name]
    ckpt = tmp_path / "checkpoint.pt"
    old = tmp_path / f".checkpoint.pt.{dead}.12345678.tmp"
    old.write_bytes(b"half")
    net = build_model("mlp", (1, 2, 2), 2, (0.0,), (1.0,), widths=[3])
    save_checkpoint(
        ckpt,
        net,
        model_desc=model_description("mlp", (1, 2, 2), 2, (0.0,), (1.0,), widths=[3]),
        config={"dataset": "digits", "method": "ibp", "model": "mlp"},
        epoch=0,
        step=0,
    )
    assert not old.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (
        ckpt.stat().st_mode & 0o777 == 0o666 & ~umask == h5.stat().st_mode & 0o777
    )  # like every result


# ----------------------------------------------------------------------------- scans


def test_an_overflowing_scan_completes_and_reports_it(run, tmp_path, capsys) -> None:
    out = tmp_path / "g.h5"
    args = [
        "scan",
        str(run / "checkpoint.pt"),
        "--kind",
        "gradient",
        "--lr",
        "1e30",
        "--points",
        "2",
        "--samples",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Warning:" in err and "not finite" in err
    rec = store.read(out)
    assert (
        rec["attrs"]["complete"] is True and rec["attrs"]["schema_version"] == store.SCHEMA_VERSION
    )
    loss, computed = rec["results"]["crown-ibp"]["loss"], rec["results"]["crown-ibp"]["computed"]
    assert computed.all() and not np.isfinite(loss).all() and np.isfinite(loss[0])
    assert rec["results"]["crown-ibp"]["attrs"]["nonfinite_points"] == int(
        (~np.isfinite(loss)).sum()
    )
    before = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == before  # complete: a rerun computes nothing


def test_scan_files_of_schema_version_1_are_still_read_and_resumed(tmp_path) -> None:
    import h5py

    path = tmp_path / "v1.h5"
    scan = store.create_scan(
        str(path), kind="random-1d", args={"a": 1}, coords={"x": [0.0, 1.0, 2.0]}, labels=["ibp"]
    )
    scan.set_point("ibp", 0, {"loss": 1.5})
    scan.flush()
    with h5py.File(path, "r+") as f:  # as version 1 wrote it: no mask, NaN = not computed
        del f["results/ibp/computed"]
        f.attrs["schema_version"] = 1
    old = store.open_scan(str(path), args={"a": 1})
    assert old.missing().tolist() == [1, 2]
    old.set_point("ibp", 1, {"loss": float("inf")})
    old.flush()
    again = store.open_scan(str(path), args={"a": 1})
    assert again.missing().tolist() == [2] and again.nonfinite("ibp") == 1
    import figures

    assert figures.plot_file(path, tmp_path / "fig", formats="png")


# ----------------------------------------------------------------------------- checkpoints


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    ckpt = torch.load(src, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, dst)
    return dst


def test_bad_checkpoints_are_one_clear_error_and_create_no_output(run, tmp_path, capsys) -> None:
    src = run / "checkpoint.pt"
    not_dict = _rewrite(src, tmp_path / "cfg.pt", config=[1, 2, 3])
    other_data = torch.load(src, weights_only=True)
    other_data["config"] = dict(other_data["config"], dataset="fashion-mnist")
    foreign = tmp_path / "foreign.pt"
    torch.save(other_data, foreign)
    for ckpt, words in (
        (not_dict, "its 'config' entry is a list"),
        (foreign, "holds a model for inputs (1, 8, 8), but dataset 'fashion-mnist' has inputs"),
    ):
        for cmd in (
            [
                "scan",
                str(ckpt),
                "--kind",
                "random-1d",
                "--points",
                "3",
                "--samples",
                "8",
                "--out",
                str(tmp_path / "out" / "s.h5"),
                "--quiet",
            ],
            ["certify", str(ckpt), "--test-size", "8", "--pgd-steps", "1"],
        ):
            if ckpt is foreign:
                cmd += ["--data-dir", str(_fake_fashion(tmp_path))]
            assert main(cmd) == 1, cmd
            err = capsys.readouterr().err
            assert words in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()


def _fake_fashion(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST-shaped IDX set."""
    import gzip

    folder = tmp_path / "fm"
    if folder.exists():
        return folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 100), ("t10k", 40)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(
                bytes([0, 0, 8, 3])
                + np.array([n, 28, 28], dtype=">u4").tobytes()
                + images.tobytes()
            )
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 8, 1]) + np.array([n], dtype=">u4").tobytes() + labels.tobytes())
    return folder


def test_the_unsafe_checkpoint_message_keeps_the_reason_whole(tmp_path, capsys) -> None:
    import collections

    class Something:
        pass

    something = type(
        "AVeryLongClassNameThatWouldHaveBeenCutMidWordBeforeBecauseOfALengthLimit", (Something,), {}
    )
    globals()[something.__name__] = something
    something.__module__ = __name__
    path = tmp_path / "unsafe.pt"
    torch.save(
        {"format": "cert-landscape-checkpoint", "x": collections.OrderedDict(a=something())}, path
    )
    assert main(["certify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"GLOBAL {__name__}.{something.__name__} was not an allowed global by default" in err
    assert "add_safe_globals" not in err


def test_resume_from_nan_weights_names_the_checkpoint(run, tmp_path, capsys) -> None:
    import shutil

    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    ckpt = broken / "checkpoint_epoch2.pt"
    state = torch.load(ckpt, weights_only=True)
    first = next(k for k in state["state_dict"] if k.endswith("weight"))
    state["state_dict"][first][0, 0] = float("nan")
    torch.save(state, ckpt)
    before = (broken / "config.json").read_text()
    assert main(["train", "--out", str(broken), "--resume", "--epochs", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert (
        "cannot resume" in err
        and "NaN or Inf" in err
        and "checkpoint_epoch2.pt" in err
        and "lr" in err
    )
    assert "diverged: the loss is" not in err
    assert (broken / "config.json").read_text() == before


def test_a_failed_resume_writes_nothing(run, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in copy.iterdir()}
    assert main(["train", "--out", str(copy), "--resume", "--epochs", "1", "--quiet"]) == 1
    assert "has already trained 2 epochs, more than the 1 asked for" in capsys.readouterr().err
    assert main(["train", "--out", str(copy), "--resume", "--lr", "0.5", "--quiet"]) == 1
    assert "different config (lr" in capsys.readouterr().err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in copy.iterdir()} == stamps
    assert (
        main(["train", "--out", str(copy), "--resume", "--epochs", "3", "--quiet"]) == 0
    )  # extending works
    assert torch.load(copy / "checkpoint.pt", weights_only=True)["epoch"] == 3

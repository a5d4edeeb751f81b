"""`landscape scan` end to end on digits checkpoints from a tiny training run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import store
from landscape.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints (after epoch 1 and 2) of a tiny IBP run on 100 digits."""
    from train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = dict(dataset="digits", model="mlp", model_options={"widths": [16, 16]}, method="crown-ibp", eps=0.1,
               epochs=2, batch_size=50, train_size=100, test_size=20, eval_size=0, lr=1e-3, eps_ramp_epochs=1.0)
    train(cfg, out_dir=out, progress=False)
    return out / "checkpoint_epoch1.pt", out / "checkpoint.pt"


def _run(args: list[str]) -> int:
    return main([str(a) for a in args])


def _bytes(path) -> bytes:
    return Path(path).read_bytes()


COMMON = ["--samples", "16", "--quiet"]


def test_every_kind(ckpts, tmp_path):
    a, b = ckpts
    out = tmp_path / "g.h5"
    assert _run(["scan", b, "--kind", "gradient", "--out", out, "--methods", "crown-ibp,ibp,clean", "--points", "3",
                 "--hessian", *COMMON]) == 0
    d = store.read(out)
    assert d["attrs"]["kind"] == "gradient" and d["attrs"]["complete"] is True
    assert d["attrs"]["labels"] == ["crown-ibp", "ibp", "clean"] and d["attrs"]["eps"] == pytest.approx(0.1)
    assert d["coords"]["t"].shape == (5,)  # 0, 3 log-spaced points, 1
    r = d["results"]["crown-ibp"]
    assert np.isfinite(r["loss"]).all() and r["cos"][0] == pytest.approx(1.0) and r["a_sign"][0] == 0.0
    assert np.isnan(d["results"]["ibp"]["a_sign"]).all()
    assert np.isfinite(r["attrs"]["hessian_top_eig"]) and r["attrs"]["loss_variation"] >= 0
    assert d["arrays"]["gradient"].size == (64 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)  # mlp 64-16-16-10

    out = tmp_path / "new" / "folder" / "r1.h5"  # the output's folder is created, like train --out
    assert _run(["scan", b, "--kind", "random-1d", "--out", out, "--loss", "clean", "--points", "5", *COMMON]) == 0
    d = store.read(out)
    assert d["results"]["clean"]["loss"].shape == (5,) and "direction_x" in d["arrays"]

    out = tmp_path / "r2.h5"
    assert _run(["scan", b, "--kind", "random-2d", "--out", out, "--methods", "ibp,pgd", "--points", "3",
                 "--range", "-0.5,0.5", "--norm", "layer", *COMMON]) == 0
    d = store.read(out)
    assert d["results"]["pgd"]["loss"].shape == (3, 3) and np.isfinite(d["results"]["pgd"]["loss"]).all()
    np.testing.assert_allclose(d["coords"]["x"], [-0.5, 0, 0.5])

    out = tmp_path / "i.h5"
    assert _run(["scan", a, "--kind", "interpolate", "--to", b, "--out", out, "--points", "5", *COMMON]) == 0
    d = store.read(out)
    loss = d["results"]["crown-ibp"]["loss"]
    np.testing.assert_allclose(d["coords"]["alpha"], [-0.5, 0, 0.5, 1.0, 1.5])
    # alpha = 0 and 1 are the two checkpoints: compare with the gradient scans' t = 0 losses
    g1 = tmp_path / "g1.h5"
    assert _run(["scan", a, "--out", g1, "--points", "1", "--no-metrics", *COMMON]) == 0
    g2 = tmp_path / "g2.h5"
    assert _run(["scan", b, "--out", g2, "--points", "1", "--no-metrics", *COMMON]) == 0
    assert loss[1] == pytest.approx(store.read(g1)["results"]["crown-ibp"]["loss"][0], rel=1e-5)
    assert loss[3] == pytest.approx(store.read(g2)["results"]["crown-ibp"]["loss"][0], rel=1e-5)


def test_resume_after_a_killed_scan(ckpts, tmp_path, monkeypatch):
    from landscape import evaluators, scan_runner

    _, b = ckpts
    args = ["scan", b, "--kind", "random-2d", "--methods", "crown-ibp,ibp", "--points", "3", *COMMON]
    full = tmp_path / "full.h5"
    assert _run([*args, "--out", full]) == 0

    real = evaluators.DirectionEvaluator.__call__
    calls: list[int] = []

    def dying(self, indices):
        if len(calls) >= 4:
            raise KeyboardInterrupt  # the "kill"
        calls.extend(indices)
        return real(self, indices)

    part = tmp_path / "part.h5"
    monkeypatch.setattr(scan_runner.Chunker, "update", lambda self, n, seconds: None)  # one point per call
    monkeypatch.setattr(evaluators.DirectionEvaluator, "__call__", dying)
    assert _run([*args, "--out", part]) == 130
    d = store.read(part)
    assert d["attrs"]["complete"] is False
    assert int(np.isnan(d["results"]["ibp"]["loss"]).sum()) == 9 - 4
    calls.clear()
    resumed: list[int] = []

    def recording(self, indices):
        resumed.extend(indices)
        return real(self, indices)

    monkeypatch.setattr(evaluators.DirectionEvaluator, "__call__", recording)
    assert _run([*args, "--out", part]) == 0
    assert len(resumed) == 5
    d, ref = store.read(part), store.read(full)
    assert d["attrs"]["complete"] is True
    for lab in ("crown-ibp", "ibp"):
        np.testing.assert_array_equal(d["results"][lab]["loss"], ref["results"][lab]["loss"])
    before = _bytes(part)
    resumed.clear()
    assert _run([*args, "--out", part]) == 0 and resumed == []  # complete: nothing to do
    assert _run([*args[:-1], "--seed", "1", "--quiet", "--out", part]) == 1  # other arguments: refused
    assert _bytes(part) == before


def test_bad_input_gives_one_clear_error(ckpts, tmp_path, capsys):
    from train.checkpoint import load_checkpoint

    _, b = ckpts
    out = tmp_path / "o.h5"
    ckpt = load_checkpoint(b)
    nan_ckpt, arch_ckpt = tmp_path / "nan.pt", tmp_path / "arch.pt"
    bad = dict(ckpt, state_dict={k: v.clone() for k, v in ckpt["state_dict"].items()})
    first = next(k for k in bad["state_dict"] if k.endswith("weight"))
    bad["state_dict"][first][0, 0] = float("nan")
    torch.save(bad, nan_ckpt)
    arch = dict(ckpt, model=dict(ckpt["model"], options={**ckpt["model"]["options"], "widths": [8, 8]}))
    torch.save(arch, arch_ckpt)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    not_dir = tmp_path / "file.txt"
    not_dir.write_text("x")
    cases = [
        (["scan", tmp_path / "missing.pt", "--out", out], "does not exist"),
        (["scan", corrupt, "--out", out], "corrupt"),
        (["scan", nan_ckpt, "--out", out], "NaN"),
        (["scan", arch_ckpt, "--out", out], "architecture"),
        (["scan", b, "--out", out, "--eps", "-0.1"], "eps"),
        (["scan", b, "--out", out, "--methods", "crown-ibp,bogus"], "bogus"),
        (["scan", b, "--out", out, "--kind", "bogus"], "bogus"),
        (["scan", b, "--out", out, "--kind", "interpolate"], "--to"),
        (["scan", b, "--out", not_dir / "x.h5"], "cannot write"),
        (["scan", b, "--out", out, "--range", "1,0", "--kind", "random-1d"], "range"),
    ]
    for args, needle in cases:
        assert _run(args) != 0, args
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (args, err)
    assert not out.exists()
    junk = tmp_path / "junk.h5"
    junk.write_text("not a scan")
    assert _run(["scan", b, "--out", junk, *COMMON]) == 1
    assert junk.read_text() == "not a scan"


def test_two_process_torchrun_equals_one_process(ckpts, tmp_path):
    _, b = ckpts
    args = ["scan", str(b), "--kind", "random-2d", "--methods", "crown-ibp,clean", "--points", "3", *COMMON]
    one = tmp_path / "one.h5"
    assert _run([*args, "--out", one]) == 0
    two = tmp_path / "two.h5"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", str(port), "-m", "landscape.cli",
                           *args, "--out", str(two)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, c = store.read(one), store.read(two)
    assert c["attrs"]["world_size"] == 2 and c["attrs"]["complete"] is True
    for lab in ("crown-ibp", "clean"):
        np.testing.assert_array_equal(c["results"][lab]["loss"], a["results"][lab]["loss"])  # same code per point
    np.testing.assert_array_equal(c["arrays"]["direction_x"], a["arrays"]["direction_x"])


def test_torchrun_finishes_a_scan_whose_points_are_all_done(ckpts, tmp_path):
    """All points written but not marked complete (killed while storing the summaries): a
    torchrun resume must finish it, not leave rank 0 waiting for ranks that returned."""
    _, b = ckpts
    out = tmp_path / "s.h5"
    args = ["scan", str(b), "--kind", "random-1d", "--loss", "clean", "--points", "3", *COMMON, "--out", str(out)]
    assert _run(args) == 0
    store.write_attrs(out, {"complete": False})
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", str(port), "-m", "landscape.cli", *args],
                          capture_output=True, text=True, env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.read(out)["attrs"]["complete"] is True

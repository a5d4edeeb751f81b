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
from run_helpers import train_tiny_run

from common import store
from landscape.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints (after epoch 1 and 2) of a tiny IBP run on 100 digits."""
    out = train_tiny_run(tmp_path_factory.mktemp("run"))
    return out / "checkpoint_epoch1.pt", out / "checkpoint.pt"


def _run(args: list[str]) -> int:
    return main([str(a) for a in args])


def _bytes(path) -> bytes:
    return Path(path).read_bytes()


COMMON = ["--samples", "16", "--quiet"]


def test_every_kind(ckpts, tmp_path):
    a, b = ckpts
    out = tmp_path / "g.h5"
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "gradient",
                "--out",
                out,
                "--methods",
                "crown-ibp,ibp,clean",
                "--points",
                "3",
                "--hessian",
                *COMMON,
            ]
        )
        == 0
    )
    d = store.read(out)
    assert d["attrs"]["kind"] == "gradient" and d["attrs"]["complete"] is True
    assert d["attrs"]["labels"] == ["crown-ibp", "ibp", "clean"] and d["attrs"][
        "eps"
    ] == pytest.approx(0.1)
    assert d["coords"]["t"].shape == (5,)  # 0, 3 log-spaced points, 1
    r = d["results"]["crown-ibp"]
    assert (
        np.isfinite(r["loss"]).all() and r["cos"][0] == pytest.approx(1.0) and r["a_sign"][0] == 0.0
    )
    assert np.isnan(d["results"]["ibp"]["a_sign"]).all()
    assert np.isfinite(r["attrs"]["hessian_top_eig"]) and r["attrs"]["loss_variation"] >= 0
    assert d["arrays"]["gradient"].size == (64 * 16 + 16) + (16 * 16 + 16) + (
        16 * 10 + 10
    )  # mlp 64-16-16-10

    out = tmp_path / "new" / "folder" / "r1.h5"  # the output's folder is created, like train --out
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "random-1d",
                "--out",
                out,
                "--loss",
                "clean",
                "--points",
                "5",
                *COMMON,
            ]
        )
        == 0
    )
    d = store.read(out)
    assert d["results"]["clean"]["loss"].shape == (5,) and "direction_x" in d["arrays"]

    out = tmp_path / "r2.h5"
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "random-2d",
                "--out",
                out,
                "--methods",
                "ibp,pgd",
                "--points",
                "3",
                "--range",
                "-0.5,0.5",
                "--norm",
                "layer",
                *COMMON,
            ]
        )
        == 0
    )
    d = store.read(out)
    assert (
        d["results"]["pgd"]["loss"].shape == (3, 3)
        and np.isfinite(d["results"]["pgd"]["loss"]).all()
    )
    np.testing.assert_allclose(d["coords"]["x"], [-0.5, 0, 0.5])

    out = tmp_path / "i.h5"
    assert (
        _run(
            ["scan", a, "--kind", "interpolate", "--to", b, "--out", out, "--points", "5", *COMMON]
        )
        == 0
    )
    d = store.read(out)
    loss = d["results"]["crown-ibp"]["loss"]
    np.testing.assert_allclose(d["coords"]["alpha"], [-0.5, 0, 0.5, 1.0, 1.5])
    out11 = tmp_path / "i11.h5"  # 11 points miss 0 and 1: both are added
    assert (
        _run(
            [
                "scan",
                a,
                "--kind",
                "interpolate",
                "--to",
                b,
                "--out",
                out11,
                "--points",
                "11",
                *COMMON,
            ]
        )
        == 0
    )
    d11 = store.read(out11)
    assert len(d11["coords"]["alpha"]) == 13 and {0.0, 1.0} <= set(d11["coords"]["alpha"].tolist())
    i0, i1 = (int(np.flatnonzero(d11["coords"]["alpha"] == v)[0]) for v in (0.0, 1.0))
    assert (
        d11["results"]["crown-ibp"]["loss"][i0] == loss[1]
        and d11["results"]["crown-ibp"]["loss"][i1] == loss[3]
    )
    # alpha = 0 and 1 are the two checkpoints: compare with the gradient scans' t = 0 losses
    g1 = tmp_path / "g1.h5"
    assert _run(["scan", a, "--out", g1, "--points", "1", "--no-metrics", *COMMON]) == 0
    g2 = tmp_path / "g2.h5"
    assert _run(["scan", b, "--out", g2, "--points", "1", "--no-metrics", *COMMON]) == 0
    assert loss[1] == pytest.approx(store.read(g1)["results"]["crown-ibp"]["loss"][0], rel=1e-5)
    assert loss[3] == pytest.approx(store.read(g2)["results"]["crown-ibp"]["loss"][0], rel=1e-5)


def test_multi_method_gradient_scan_moves_each_along_its_own_gradient(ckpts, tmp_path):
    """A 3-method gradient scan equals three single-method scans, label by label and field by
    field; --direction-from METHOD moves all three along that method's gradient instead."""
    _, b = ckpts
    methods = ["ibp", "crown-ibp", "tightest"]
    both = tmp_path / "all.h5"
    assert (
        _run(["scan", b, "--out", both, "--methods", ",".join(methods), "--points", "3", *COMMON])
        == 0
    )
    d = store.read(both)
    assert d["attrs"]["direction_from"] == "own"
    for m in methods:
        one = tmp_path / f"{m}.h5"
        assert _run(["scan", b, "--out", one, "--methods", m, "--points", "3", *COMMON]) == 0
        s = store.read(one)
        for name, value in s["results"][m].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(d["results"][m][name], value, err_msg=f"{m} {name}")
        key = "gradient" if m == methods[0] else f"gradient_{m}"
        np.testing.assert_array_equal(d["arrays"][key], s["arrays"]["gradient"])

    shared = tmp_path / "shared.h5"
    assert (
        _run(
            [
                "scan",
                b,
                "--out",
                shared,
                "--methods",
                ",".join(methods),
                "--points",
                "3",
                "--direction-from",
                "crown-ibp",
                *COMMON,
            ]
        )
        == 0
    )
    sh = store.read(shared)
    assert sh["attrs"]["direction_from"] == "crown-ibp"
    np.testing.assert_array_equal(sh["arrays"]["gradient"], d["arrays"]["gradient_crown-ibp"])
    np.testing.assert_array_equal(
        sh["results"]["crown-ibp"]["loss"], d["results"]["crown-ibp"]["loss"]
    )
    for m in ("ibp", "tightest"):  # another direction: other losses away from t = 0
        assert sh["results"][m]["loss"][0] == d["results"][m]["loss"][0]
        assert not np.array_equal(sh["results"][m]["loss"], d["results"][m]["loss"])
    assert (
        _run(
            [
                "scan",
                b,
                "--out",
                tmp_path / "bad.h5",
                "--methods",
                "ibp,crown-ibp",
                "--direction-from",
                "cap",
                *COMMON,
            ]
        )
        == 1
    )
    assert not (tmp_path / "bad.h5").exists()


def test_resume_after_a_killed_scan(ckpts, tmp_path, monkeypatch):
    from landscape import evaluators, scan_runner

    _, b = ckpts
    args = [
        "scan",
        b,
        "--kind",
        "random-2d",
        "--methods",
        "crown-ibp,ibp",
        "--points",
        "3",
        *COMMON,
    ]
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
    monkeypatch.setattr(
        scan_runner.Chunker, "update", lambda self, n, seconds: None
    )  # one point per call
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
    assert (
        _run([*args[:-1], "--seed", "1", "--quiet", "--out", part]) == 1
    )  # other arguments: refused
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
    arch = dict(
        ckpt, model=dict(ckpt["model"], options={**ckpt["model"]["options"], "widths": [8, 8]})
    )
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
    args = [
        "scan",
        str(b),
        "--kind",
        "random-2d",
        "--methods",
        "crown-ibp,clean",
        "--points",
        "3",
        *COMMON,
    ]
    one = tmp_path / "one.h5"
    assert _run([*args, "--out", one]) == 0
    two = tmp_path / "two.h5"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "landscape.cli",
            *args,
            "--out",
            str(two),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, c = store.read(one), store.read(two)
    assert c["attrs"]["world_size"] == 2 and c["attrs"]["complete"] is True
    for lab in ("crown-ibp", "clean"):
        np.testing.assert_array_equal(
            c["results"][lab]["loss"], a["results"][lab]["loss"]
        )  # same code per point
    np.testing.assert_array_equal(c["arrays"]["direction_x"], a["arrays"]["direction_x"])


def test_torchrun_finishes_a_scan_whose_points_are_all_done(ckpts, tmp_path):
    """All points written but not marked complete (killed while storing the summaries): a
    torchrun resume must finish it, not leave rank 0 waiting for ranks that returned."""
    _, b = ckpts
    out = tmp_path / "s.h5"
    args = [
        "scan",
        str(b),
        "--kind",
        "random-1d",
        "--loss",
        "clean",
        "--points",
        "3",
        *COMMON,
        "--out",
        str(out),
    ]
    assert _run(args) == 0
    store.write_attrs(out, {"complete": False})
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "landscape.cli",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.read(out)["attrs"]["complete"] is True


# ----------------------------------------------------------------------------- PCA and Hessian scans


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> Path:
    """A 2-epoch crown-ibp run on 100 digits with a checkpoint after every step: step 0, 1, 3,
    the epoch checkpoints (steps 2, 4) and checkpoint.pt."""
    out = train_tiny_run(tmp_path_factory.mktemp("stepped"), checkpoint_every_steps=1)
    return out


def _torchrun(args: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "landscape.cli",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=timeout,
    )


def test_pca_scan_of_a_trajectory(stepped, tmp_path):
    from common.tensors import flatten
    from landscape import trajectory as tj
    from landscape.directions import perturbed
    from landscape.scan_losses import LossClosure, LossSpec, select_samples
    from train.checkpoint import load_model
    from train.data import load_dataset

    ckpt = stepped / "checkpoint.pt"
    out = tmp_path / "pca.h5"
    args = [
        "scan",
        ckpt,
        "--kind",
        "pca",
        "--methods",
        "crown-ibp,clean",
        "--points",
        "3",
        *COMMON,
        "--out",
        out,
    ]
    assert _run(args) == 0
    d = store.read(out)
    a = d["attrs"]
    assert (
        a["kind"] == "pca"
        and a["complete"] is True
        and a["dims"] == ["x", "y"]
        and a["trajectory_checkpoints"] == 6
    )
    ratios = np.asarray(a["explained_variance"])
    assert ratios.shape == (2,) and ratios[0] >= ratios[1] >= 0 and ratios.sum() <= 1 + 1e-9
    # the same plane from the trajectory module: the file's directions and path
    t = tj.load_trajectory(ckpt)
    assert [p.name for p in t.paths] == [
        "checkpoint_step0.pt",
        "checkpoint_step1.pt",
        "checkpoint_epoch1.pt",
        "checkpoint_step3.pt",
        "checkpoint_epoch2.pt",
        "checkpoint.pt",
    ]
    pca = tj.pca_directions(t.params, t.final)
    np.testing.assert_allclose(ratios, pca.explained_variance_ratio, rtol=1e-10)
    path = d["arrays"]["trajectory"]
    assert path.shape == (6, 2) and path.dtype == np.float32
    np.testing.assert_allclose(path, pca.path, atol=1e-6)
    np.testing.assert_allclose(
        d["arrays"]["direction_x"], flatten(pca.directions[0]).numpy(), atol=1e-7
    )
    # the default range covers the path (and theta_f) on each axis, with a margin
    for k, dim in enumerate("xy"):
        c = d["coords"][dim]
        assert c[0] < min(path[:, k].min(), 0) and c[-1] > max(path[:, k].max(), 0)
    # a grid point is the loss at theta_f + x d_1 + y d_2
    model, ck = load_model(ckpt)
    data = load_dataset("digits", train_size=100, test_size=20, seed=0)
    x, y = select_samples(data, 16, "train", 0)
    spec = LossSpec(
        kind="certified", method="crown-ibp", beta=1.0, kappa=0.0, eps=0.1, domain=(0.0, 1.0)
    )
    params = [p for p in model.parameters()]
    moved = perturbed(
        [p.detach().clone() for p in params],
        pca.directions,
        [float(d["coords"]["x"][2]), float(d["coords"]["y"][0])],
    )
    with torch.no_grad():
        for p, v in zip(params, moved):
            p.copy_(v)
    with torch.no_grad():
        direct = float(LossClosure(model, x, y, spec)())
    assert d["results"]["crown-ibp"]["loss"][2, 0] == pytest.approx(direct, rel=1e-5)
    # resumed: nothing to do; another trajectory: refused
    before = _bytes(out)
    assert _run(args) == 0 and _bytes(out) == before
    assert (
        _run([*args[:-2], "--trajectory", str(stepped / "checkpoint_epoch*.pt"), "--out", out]) == 1
    )
    assert _bytes(out) == before
    sub = tmp_path / "epochs.h5"
    assert (
        _run(
            [
                *args[:-2],
                "--trajectory",
                str(stepped / "checkpoint_epoch*.pt"),
                "--zero-bias",
                "--out",
                sub,
            ]
        )
        == 0
    )
    e = store.read(sub)
    assert e["arrays"]["trajectory"].shape == (3, 2)  # two epochs and checkpoint.pt
    direction, meta = store.read_array(sub, "direction_y")
    sizes = [int(np.prod(s)) for s in meta["param_shapes"]]
    parts = np.split(direction, np.cumsum(sizes)[:-1])
    assert all(
        (part == 0).all() == (len(shape) == 1) for part, shape in zip(parts, meta["param_shapes"])
    )
    # export and plot work on it
    assert _run(["export", out, "--out", tmp_path / "vtk"]) == 0
    assert sorted(p.name for p in (tmp_path / "vtk").iterdir()) == [
        "pca_clean.vtu",
        "pca_crown-ibp.vtu",
    ]
    assert _run(["plot", out, "--out", tmp_path / "fig", "--format", "png"]) == 0
    assert (tmp_path / "fig" / "pca_contour.png").stat().st_size > 5000


def test_pca_scan_under_torchrun_equals_one_process(stepped, tmp_path):
    args = [
        "scan",
        stepped / "checkpoint.pt",
        "--kind",
        "pca",
        "--loss",
        "clean",
        "--points",
        "3",
        *COMMON,
    ]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert _run([*args, "--out", one]) == 0
    proc = _torchrun([*args, "--out", two])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = store.read(one), store.read(two)
    assert b["attrs"]["world_size"] == 2 and b["attrs"]["complete"] is True
    np.testing.assert_array_equal(a["results"]["clean"]["loss"], b["results"]["clean"]["loss"])
    np.testing.assert_array_equal(a["arrays"]["trajectory"], b["arrays"]["trajectory"])


SPECTRUM = [
    "--top-k",
    "2",
    "--lanczos-steps",
    "10",
    "--trace-samples",
    "4",
    "--density-runs",
    "2",
    "--density-steps",
    "8",
    "--density-points",
    "50",
]


def test_hessian_scan_resumes_per_label(ckpts, tmp_path, monkeypatch):
    from landscape import spectrum

    _, b = ckpts
    out = tmp_path / "h.h5"
    args = [
        "scan",
        b,
        "--kind",
        "hessian",
        "--methods",
        "clean,ibp,crown-ibp",
        *SPECTRUM,
        *COMMON,
        "--out",
        out,
    ]
    real = spectrum.SpectrumEvaluator.__call__
    done: list[int] = []

    def dying(self, indices):
        if done:
            raise KeyboardInterrupt  # killed during the second label
        done.extend(indices)
        return real(self, indices)

    monkeypatch.setattr(spectrum.SpectrumEvaluator, "__call__", dying)
    assert _run(args) == 130
    d = store.read(out)
    assert (
        d["attrs"]["complete"] is False
        and d["attrs"]["kind"] == "hessian"
        and d["attrs"]["dims"] == []
    )
    assert [int(d["results"][lab]["computed"]) for lab in ("clean", "ibp", "crown-ibp")] == [
        1,
        0,
        0,
    ]
    resumed: list[int] = []

    def recording(self, indices):
        resumed.extend(indices)
        return real(self, indices)

    monkeypatch.setattr(spectrum.SpectrumEvaluator, "__call__", recording)
    assert _run(args) == 0 and resumed == [1, 2]
    d = store.read(out)
    assert d["attrs"]["complete"] is True and d["attrs"]["hessian_lanczos_steps"] == 10
    for lab in ("clean", "ibp", "crown-ibp"):
        r = d["results"][lab]
        eig = r["eigenvalues"]
        assert eig.shape == (2,) and eig[0] >= eig[1]
        assert r["attrs"]["top_eigenvalue"] == eig[0] and np.isfinite(r["attrs"]["trace"])
        assert r["attrs"]["trace_stderr"] > 0 and np.isfinite(r["loss"])
        assert np.trapezoid(r["density"], r["density_grid"]) == pytest.approx(1.0, abs=1e-9)
        assert r["slq_nodes"].shape == r["slq_weights"].shape == (2, 8)
    before = _bytes(out)
    assert _run(args) == 0 and _bytes(out) == before  # complete
    assert _run(["plot", out, "--out", tmp_path / "fig", "--format", "png"]) == 0
    assert (tmp_path / "fig" / "h_hessian.png").exists()


def test_hessian_scan_values_and_its_options(ckpts, tmp_path, capsys):
    from landscape.hessian import hessian_trace, spectral_density, top_eigenvalues
    from landscape.scan_losses import LossClosure, LossSpec, select_samples
    from train.checkpoint import load_model
    from train.data import load_dataset

    _, b = ckpts
    out = tmp_path / "h.h5"
    assert (
        _run(["scan", b, "--kind", "hessian", "--loss", "clean", *SPECTRUM, *COMMON, "--out", out])
        == 0
    )
    r = store.read(out)["results"]["clean"]
    model, _ = load_model(b)
    data = load_dataset("digits", train_size=100, test_size=20, seed=0)
    fn = LossClosure(model, *select_samples(data, 16, "train", 0), LossSpec(kind="clean"))
    np.testing.assert_allclose(
        r["eigenvalues"], top_eigenvalues(fn, model, k=2, iters=10, seed=0).numpy(), rtol=1e-6
    )
    trace = hessian_trace(fn, model, samples=4, seed=1)
    assert r["attrs"]["trace"] == pytest.approx(trace.mean, rel=1e-6)
    dens = spectral_density(fn, model, runs=2, steps=8, seed=2, grid_points=50)
    np.testing.assert_allclose(r["density"], dens.density, rtol=1e-6)
    for extra, needle in (
        (["--hessian"], "--hessian"),
        (["--points", "3"], "--points"),
        (["--top-k", "0"], "--top-k"),
        (["--density-sigma", "-1"], "--density-sigma"),
    ):
        assert (
            _run(["scan", b, "--kind", "hessian", *COMMON, *extra, "--out", tmp_path / "x.h5"]) == 1
        )
        assert needle in capsys.readouterr().err
    assert (
        _run(
            ["scan", b, "--kind", "random-1d", "--top-k", "3", *COMMON, "--out", tmp_path / "x.h5"]
        )
        == 1
    )
    assert "only used with --kind hessian" in capsys.readouterr().err
    assert (
        _run(["scan", b, "--kind", "gradient", "--center", *COMMON, "--out", tmp_path / "x.h5"])
        == 1
    )
    assert "only used with --kind pca" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_hessian_scan_per_layer_interlaces_and_accumulates_minibatches(ckpts, tmp_path, capsys):
    """Per-layer records on trained checkpoints: every layer's top eigenvalue is at most the whole
    model's (Cauchy interlacing) and the layer traces add up to about the whole trace; a scan of
    the whole split in mini-batches (--samples all --batch-size 30) gives the values of one batch."""
    a, b = ckpts
    for ckpt in (a, b):
        out = tmp_path / f"h_{Path(ckpt).stem}.h5"
        assert (
            _run(
                [
                    "scan",
                    ckpt,
                    "--kind",
                    "hessian",
                    "--methods",
                    "crown-ibp,ibp,clean",
                    "--top-k",
                    "2",
                    "--trace-samples",
                    "40",
                    "--density-runs",
                    "1",
                    "--density-steps",
                    "5",
                    "--density-points",
                    "20",
                    *COMMON,
                    "--out",
                    out,
                ]
            )
            == 0
        )
        d = store.read(out)
        for label, r in d["results"].items():
            if label == "attrs":
                continue
            layers = r["layers"]
            assert sorted(k for k in layers if k != "attrs") == [
                "2",
                "4",
                "6",
            ]  # mlp: Linear at 2, 4, 6
            top = r["eigenvalues"][0]
            for name, rec in layers.items():
                if name == "attrs":
                    continue
                assert (
                    rec["eigenvalues"].shape == (2,)
                    and rec["eigenvalues"][0] >= rec["eigenvalues"][1]
                )
                assert rec["eigenvalues"][0] <= top + 1e-5 * abs(top), (
                    label,
                    name,
                    rec["eigenvalues"][0],
                    top,
                )
            total = sum(float(rec["trace"]) for n, rec in layers.items() if n != "attrs")
            err = np.sqrt(
                sum(float(rec["trace_stderr"]) ** 2 for n, rec in layers.items() if n != "attrs")
            )
            assert abs(total - r["attrs"]["trace"]) <= 5 * (err + r["attrs"]["trace_stderr"]) + 1e-6
            sizes = sum(float(rec["size"]) for n, rec in layers.items() if n != "attrs")
            assert sizes == (64 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)

    one, mini = tmp_path / "one.h5", tmp_path / "mini.h5"
    base = [
        "scan",
        b,
        "--kind",
        "hessian",
        "--methods",
        "crown-ibp",
        "--top-k",
        "2",
        "--trace-samples",
        "4",
        "--density-runs",
        "1",
        "--density-steps",
        "5",
        "--density-points",
        "20",
        "--no-layers",
        "--quiet",
        "--samples",
        "all",
    ]
    assert _run([*base, "--out", one]) == 0
    assert _run([*base, "--batch-size", "30", "--out", mini]) == 0
    r1, r2 = store.read(one), store.read(mini)
    assert r2["attrs"]["samples"] == "all" and "layers" not in r2["results"]["crown-ibp"]
    for key in ("loss", "eigenvalues"):
        np.testing.assert_allclose(
            r2["results"]["crown-ibp"][key], r1["results"]["crown-ibp"][key], rtol=1e-4
        )
    assert r2["results"]["crown-ibp"]["attrs"]["trace"] == pytest.approx(
        r1["results"]["crown-ibp"]["attrs"]["trace"], rel=1e-4
    )
    for bad, needle in ((["--samples", "many"], "--samples"), (["--samples", "0"], "--samples")):
        assert _run([*base[:-2], *bad, "--out", tmp_path / "x.h5"]) == 1
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_hessian_scan_under_torchrun_splits_the_labels(ckpts, tmp_path):
    _, b = ckpts
    args = ["scan", b, "--kind", "hessian", "--methods", "clean,ibp,crown-ibp", *SPECTRUM, *COMMON]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert _run([*args, "--out", one]) == 0
    proc = _torchrun([*args, "--out", two])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, c = store.read(one), store.read(two)
    assert c["attrs"]["world_size"] == 2 and c["attrs"]["complete"] is True
    for lab in ("clean", "ibp", "crown-ibp"):
        np.testing.assert_allclose(
            c["results"][lab]["eigenvalues"], a["results"][lab]["eigenvalues"], rtol=1e-5
        )
        assert c["results"][lab]["attrs"]["trace"] == pytest.approx(
            a["results"][lab]["attrs"]["trace"], rel=1e-5
        )


def test_scan_hessian_flag_is_the_lanczos_top_eigenvalue(ckpts, tmp_path):
    from landscape.hessian import top_eigenvalues
    from landscape.scan_losses import LossClosure, LossSpec, select_samples
    from train.checkpoint import load_model
    from train.data import load_dataset

    _, b = ckpts
    out = tmp_path / "r.h5"
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "random-1d",
                "--loss",
                "clean",
                "--points",
                "1",
                "--hessian",
                *COMMON,
                "--out",
                out,
            ]
        )
        == 0
    )
    d = store.read(out)
    assert '"hessian":"lanczos-magnitude"' in d["attrs"]["args_json"]
    model, _ = load_model(b)
    data = load_dataset("digits", train_size=100, test_size=20, seed=0)
    fn = LossClosure(model, *select_samples(data, 16, "train", 0), LossSpec(kind="clean"))
    expected = float(top_eigenvalues(fn, model, k=1, seed=0, which="magnitude")[0])
    assert d["results"]["clean"]["attrs"]["hessian_top_eig"] == pytest.approx(expected, rel=1e-6)


def test_error_fields_beside_the_loss(ckpts, tmp_path, capsys):
    """--fields stores the clean, PGD and verified error at every point, equal to
    train.evaluate.evaluate of the model there, ordered clean <= PGD <= verified; an
    interpolation with verified_err answers at both checkpoints as certify does."""
    from landscape.scan_losses import select_samples
    from train.checkpoint import load_model
    from train.data import load_dataset
    from train.evaluate import evaluate

    a, b = ckpts
    out = tmp_path / "e.h5"
    fields = "clean_err,pgd_err,verified_err"
    assert (
        _run(
            [
                "scan",
                a,
                "--kind",
                "interpolate",
                "--to",
                b,
                "--out",
                out,
                "--points",
                "3",
                "--fields",
                fields,
                "--methods",
                "crown-ibp,clean",
                *COMMON,
            ]
        )
        == 0
    )
    d = store.read(out)
    alpha = d["coords"]["alpha"]
    assert alpha.tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    r = d["results"]["crown-ibp"]
    for f in fields.split(","):
        assert r[f].shape == alpha.shape and np.isfinite(r[f]).all()
        np.testing.assert_array_equal(
            r[f], d["results"]["clean"][f]
        )  # the model's, whatever the loss
    assert (r["clean_err"] <= r["pgd_err"]).all() and (r["pgd_err"] <= r["verified_err"]).all()
    data = load_dataset("digits", train_size=100, test_size=20, seed=0)
    x, y = select_samples(data, 16, "train", 0)
    for i, ckpt in ((1, a), (3, b)):
        model, _ = load_model(ckpt)
        res = evaluate(
            model, x, y, 0.1, methods=["ibp", "crown-ibp"], pgd_steps=10, seed=0, progress=False
        )
        for f in fields.split(","):
            assert r[f][i] == pytest.approx(res[f], abs=1e-6), (f, i)

    out2 = tmp_path / "e2.h5"
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "random-2d",
                "--out",
                out2,
                "--points",
                "2",
                "--fields",
                "verified_err",
                "--verify-methods",
                "ibp",
                *COMMON,
            ]
        )
        == 0
    )
    r2 = store.read(out2)["results"]["crown-ibp"]
    assert r2["verified_err"].shape == (2, 2) and "pgd_err" not in r2

    out3 = tmp_path / "e3.h5"  # all three on a plane: the gap panel too
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "random-2d",
                "--out",
                out3,
                "--points",
                "2",
                "--fields",
                fields,
                *COMMON,
            ]
        )
        == 0
    )
    figs = tmp_path / "figs"
    assert _run(["plot", out, out2, out3, "--out", figs, "--format", "png"]) == 0
    drawn = sorted(p.name for p in figs.glob("*_errors.png"))
    assert len(drawn) == 3, drawn
    for bad, needle in (
        (["--fields", "nope"], "--fields"),
        (["--fields", "verified_err", "--verify-methods", "x"], "--verify-methods"),
    ):
        assert (
            _run(["scan", b, "--kind", "random-1d", *bad, *COMMON, "--out", tmp_path / "x.h5"]) == 1
        )
        assert needle in capsys.readouterr().err
    assert (
        _run(
            [
                "scan",
                b,
                "--kind",
                "gradient",
                "--fields",
                "clean_err",
                *COMMON,
                "--out",
                tmp_path / "x.h5",
            ]
        )
        == 1
    )
    assert "--fields" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_pca_path_is_coloured_by_the_unstable_fraction_with_milestones(tmp_path, monkeypatch):
    """plot with a PCA scan and its run's train.h5: the path's points carry the unstable fraction
    of their checkpoint's step (mean over layers, from train.h5), and the eps ramp's milestones
    are marked on the path."""
    from figures import data, paths

    stepped = tmp_path / "run"
    assert (
        _run(
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--method",
                "crown-ibp",
                "--eps",
                "0.1",
                "--epochs",
                "2",
                "--batch-size",
                "50",
                "--train-size",
                "100",
                "--test-size",
                "20",
                "--eval-size",
                "0",
                "--eps-ramp-epochs",
                "1",
                "--checkpoint-every-steps",
                "1",
                "--out",
                stepped,
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "pca.h5"
    assert (
        _run(
            [
                "scan",
                stepped / "checkpoint.pt",
                "--kind",
                "pca",
                "--out",
                out,
                "--points",
                "2",
                *COMMON,
            ]
        )
        == 0
    )
    scan, run = data.load(out), data.load(stepped / "train.h5")
    (pair,) = paths.path_pairs([scan], [run])
    kept = {}
    monkeypatch.setattr(
        paths, "save", lambda fig, o, stem, formats=("png",): kept.setdefault(stem, fig) and []
    )
    paths.plot_pca_paths([pair], tmp_path, "p", ("png",))
    fig = kept["p"]
    ax = fig.axes[0]
    (points,) = [c for c in ax.collections if c.get_array() is not None]
    steps = scan.path_steps[pair[1]]
    assert steps.tolist() == [
        0.0,
        1.0,
        2.0,
        3.0,
        4.0,
        4.0,
    ]  # the final checkpoint is the last epoch's
    uf_steps, uf = paths.unstable_fraction(run)
    want = [uf[0] if s < uf_steps[0] else float(np.interp(s, uf_steps, uf)) for s in steps]
    np.testing.assert_allclose(np.asarray(points.get_array()), want, rtol=1e-6)
    labels = [h.get_label() for h in fig.legends[0].legend_handles]
    assert "ε reaches its final value" in labels, labels
    monkeypatch.undo()
    figs = tmp_path / "figs"
    assert _run(["plot", out, stepped / "train.h5", "--out", figs, "--format", "png"]) == 0
    assert list(figs.glob("*pca_path.png"))

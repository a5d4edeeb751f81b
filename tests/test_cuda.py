"""The GPU path: on CUDA, what the suite checks on the CPU.

- the engine: IBP, CROWN-IBP, CROWN, CAP and tightest-slope bounds of random networks (float64)
  and the certified losses (fused and not) contain every value a sampling / corner / PGD search
  finds in the box (the search runs on the CPU model), and equal the CPU's; tightest starts its
  search from a random draw of a generator on the device, whose stream is not the CPU's, so
  there the same seed must give the same bounds again on the device instead;
- a training step of every training method (``landscape train --device cuda``) gives the CPU's
  first-step loss (where the step draws nothing at random: natural, IBP, CROWN-IBP, CROWN, CAP;
  else a finite one), and ``--compile`` the eager path's;
- gradient, random-1d and random-2d scans of a checkpoint give the CPU's values;
- torchrun with nccl: every visible GPU a process (one process with one GPU), the checkpoint of
  the one-process CPU run; and an nccl group of one process reduces and broadcasts.

Every test is marked ``cuda`` (``pytest -m cuda`` runs only these) and skipped without a GPU.
``LANDSCAPE_TEST_DEVICE=cpu pytest -m cuda`` runs them on the CPU against itself, which checks
the tests' own code on a machine without one. ``benchmarks/gpu_check.sh`` runs them and a timing.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bounds_helpers import (
    Case,
    assert_close,
    assert_le,
    cases,
    empirical_margin_range,
    empirical_max_ce,
    input_box,
    tolerance,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from run_helpers import train_tiny_run

from bounds import compute_bounds, margin_spec, robust_cross_entropy

DEVICE = os.environ.get("LANDSCAPE_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parents[1]

ENGINE = [
    ("ibp", "adaptive"),
    ("crown-ibp", "adaptive"),
    ("crown", "adaptive"),
    ("cap", "same-slope"),
    ("crown-ibp", "tightest"),
    ("crown", "tightest"),
]


def _on(case: Case) -> tuple:
    """The case's model, inputs, labels and eps on the device."""
    eps = case.eps.to(DEVICE) if isinstance(case.eps, torch.Tensor) else case.eps
    return copy.deepcopy(case.model).to(DEVICE), case.x.to(DEVICE), case.y.to(DEVICE), eps


@pytest.mark.parametrize("method,slope", ENGINE, ids=[f"{m}-{s}" for m, s in ENGINE])
@settings(max_examples=15)
@given(case=cases(), beta=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_device_bounds_equal_the_cpu_and_are_sound(
    method: str, slope: str, case: Case, beta: float, seed: int
) -> None:
    beta = beta if method == "crown-ibp" else 1.0
    kw = dict(method=method, slope=slope, beta=beta, domain=case.domain, opt_steps=3)
    C = margin_spec(case.y, case.n_classes).to(case.x.dtype)
    model, x, y, eps = _on(case)

    def on_device(**more):
        return compute_bounds(model, x, eps, C=C.to(DEVICE), y=y, **kw, **more)

    got = on_device(generator=torch.Generator(device=DEVICE).manual_seed(seed))
    assert got.lower.device.type == torch.device(DEVICE).type
    lower, upper = got.lower.cpu(), got.upper.cpu()
    what = f"{method}/{slope} beta={beta} on {DEVICE}"
    if slope == "tightest":  # a random start: the device's own stream, so the device's own repeat
        ref = on_device(generator=torch.Generator(device=DEVICE).manual_seed(seed))
    else:
        ref = compute_bounds(case.model, case.x, case.eps, C=C, y=case.y, **kw)
    tol = tolerance(case.x.dtype, ref.lower.cpu(), ref.upper.cpu())
    assert_close(lower, ref.lower.cpu(), tol, f"{what}: lower vs the reference")
    assert_close(upper, ref.upper.cpu(), tol, f"{what}: upper vs the reference")
    for (l_ref, u_ref), (l, u) in zip(ref.preact, got.preact):
        t = tolerance(case.x.dtype, l_ref.cpu(), u_ref.cpu())
        assert_close(l.cpu(), l_ref.cpu(), t, f"{what}: preact lower")
        assert_close(u.cpu(), u_ref.cpu(), t, f"{what}: preact upper")
    lo, hi = input_box(case.x, case.eps, case.domain)
    vmin, vmax = empirical_margin_range(
        case.model, C, lo, hi, n_uniform=24, n_corners=24, pgd_steps=20, seed=seed
    )
    sound = tolerance(case.x.dtype, vmin, vmax, lower, upper)
    assert_le(lower, vmin, sound, f"{what}: lower bound above a value attained in the box")
    assert_le(vmax, upper, sound, f"{what}: upper bound below a value attained in the box")
    worst = empirical_max_ce(
        case.model, case.y, lo, hi, n_uniform=24, n_corners=24, pgd_steps=20, restarts=1, seed=seed
    )
    for fused in (False, True):
        l_dev = robust_cross_entropy(
            model,
            x,
            y,
            eps,
            fused=fused,
            reduction="none",
            **kw,
            generator=torch.Generator(device=DEVICE).manual_seed(seed),
        ).cpu()
        assert_le(
            worst,
            l_dev,
            tolerance(case.x.dtype, worst, l_dev),
            f"{what} fused={fused}: CE above its bound",
        )
        if slope != "tightest":
            l_ref = robust_cross_entropy(
                case.model, case.x, case.y, case.eps, fused=fused, reduction="none", **kw
            )
            assert_close(
                l_dev,
                l_ref,
                tolerance(case.x.dtype, l_ref),
                f"{what} fused={fused}: loss vs the CPU's",
            )


def test_zoo_cnn_in_float32_on_the_device() -> None:
    """A zoo CNN in float32 (cuDNN, TF32 where allowed): bounds within 1e-3 of the CPU's and sound."""
    from train import models

    model = models.build_model(
        "cnn-tiny", input_shape=(1, 8, 8), n_classes=10, mean=(0.3,), std=(0.3,), linear_size=16
    ).eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 8, 1, 0])
    case = Case(model, x, y, 0.05, (0.0, 1.0), 10, "cnn-tiny")
    C = margin_spec(y, 10)
    dev_model, dx, dy, _ = _on(case)
    lo, hi = input_box(x, 0.05, (0.0, 1.0))
    vmin, vmax = empirical_margin_range(model, C, lo, hi, pgd_steps=20)
    for method, slope in ENGINE:
        kw = dict(method=method, slope=slope, domain=(0.0, 1.0), opt_steps=3)
        ref = compute_bounds(
            model, x, 0.05, C=C, y=y, **kw, generator=torch.Generator().manual_seed(0)
        )
        got = compute_bounds(
            dev_model,
            dx,
            0.05,
            C=C.to(DEVICE),
            y=dy,
            **kw,
            generator=torch.Generator(device=DEVICE).manual_seed(0),
        )
        scale = 1e-3 * (1.0 + float(ref.lower.abs().max()))
        if slope != "tightest":  # (a random start from the device's stream)
            assert_close(got.lower.cpu(), ref.lower, scale, f"{method}/{slope}: lower vs the CPU's")
        assert_le(
            got.lower.cpu(), vmin, scale, f"{method}/{slope}: lower bound above an attained value"
        )
        assert_le(
            vmax, got.upper.cpu(), scale, f"{method}/{slope}: upper bound below an attained value"
        )


# ---------------------------------------------------------------------------------------- training

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[16]",
    "--eps",
    "0.05",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--eps-ramp-epochs",
    "0.5",
    "--eval-size",
    "16",
    "--quiet",
]


def _train(out: Path, method: str, device: str, *extra: str) -> dict:
    import h5py

    from landscape.cli import main

    assert (
        main(["train", *TINY, "--method", method, "--device", device, *extra, "--out", str(out)])
        == 0
    )
    with h5py.File(out / "train.h5") as f:
        return {c: f["steps"][c][:] for c in ("loss", "grad_norm")}


def _methods() -> list[str]:
    from common.names import TRAIN_METHODS

    return list(TRAIN_METHODS)


@pytest.mark.parametrize("method", _methods())
def test_a_training_step_of_every_method_on_the_device(tmp_path: Path, method: str) -> None:
    ref = _train(tmp_path / "cpu", method, "cpu")
    got = _train(tmp_path / "dev", method, DEVICE)
    assert np.isfinite(got["loss"]).all() and np.isfinite(got["grad_norm"]).all()
    if method in ("natural", "ibp", "crown-ibp", "crown", "cap"):
        # the first step starts from the same weights and batch and draws nothing: the same loss
        np.testing.assert_allclose(got["loss"][0], ref["loss"][0], rtol=1e-4)
        np.testing.assert_allclose(got["grad_norm"][0], ref["grad_norm"][0], rtol=1e-3)
    ckpt = torch.load(tmp_path / "dev" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_compile_on_the_device_gives_the_eager_steps(tmp_path: Path) -> None:
    eager = _train(tmp_path / "eager", "crown-ibp", DEVICE)
    compiled = _train(tmp_path / "compiled", "crown-ibp", DEVICE, "--compile")
    np.testing.assert_allclose(compiled["loss"], eager["loss"], rtol=1e-4)
    np.testing.assert_allclose(compiled["grad_norm"], eager["grad_norm"], rtol=1e-3)


# ------------------------------------------------------------------------------------------- scans


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = train_tiny_run(tmp_path_factory.mktemp("run"), epochs=1)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("kind", ["gradient", "random-1d", "random-2d"])
def test_scans_on_the_device_give_the_cpu_values(
    checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    from common import store
    from landscape.cli import main

    args = [
        "scan",
        str(checkpoint),
        "--kind",
        kind,
        "--methods",
        "crown-ibp,ibp,clean",
        "--points",
        "3",
        "--samples",
        "16",
        "--quiet",
    ]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "cpu.h5")]) == 0
    assert main([*args, "--device", DEVICE, "--out", str(tmp_path / "dev.h5")]) == 0
    a, b = store.read(str(tmp_path / "cpu.h5")), store.read(str(tmp_path / "dev.h5"))
    assert b["attrs"]["complete"] is True
    for label in ("crown-ibp", "ibp", "clean"):
        np.testing.assert_allclose(
            b["results"][label]["loss"], a["results"][label]["loss"], rtol=1e-4, atol=1e-6
        )


# --------------------------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARGS = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[32]",
    "--method",
    "crown-ibp",
    "--eps",
    "0.05",
    "--eps-start-epoch",
    "0",
    "--eps-ramp-epochs",
    "0.5",
    "--epochs",
    "1",
    "--train-size",
    "193",
    "--test-size",
    "50",
    "--batch-size",
    "64",
    "--eval-size",
    "50",
    "--quiet",
]


def test_torchrun_on_the_device_trains_as_one_process(tmp_path: Path) -> None:
    """Every visible GPU one process (nccl when there are several; one GPU: one process)."""
    n = max(1, torch.cuda.device_count()) if ON_GPU else 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(n),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "landscape.cli",
        "train",
        *ARGS,
        "--device",
        DEVICE,
        "--out",
        str(tmp_path / "torchrun"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from landscape.cli import main

    assert main(["train", *ARGS, "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    one = torch.load(tmp_path / "one" / "checkpoint.pt", map_location="cpu", weights_only=True)
    two = torch.load(tmp_path / "torchrun" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for k, a in one["state_dict"].items():
        assert torch.allclose(
            two["state_dict"][k], a, rtol=1e-4, atol=1e-4 * float(a.abs().max())
        ), k


_NCCL = """
import os, torch, torch.distributed as dist
from train import parallel
assert parallel.backend_for(os.environ["DEV"]) == ("nccl" if os.environ["DEV"].startswith("cuda") else "gloo")
dist.init_process_group(parallel.backend_for(os.environ["DEV"]), rank=0, world_size=1)
dev = torch.device(os.environ["DEV"])
if dev.type == "cuda":
    torch.cuda.set_device(0)
t = torch.arange(5.0, device=dev)
dist.all_reduce(t)
box = [{"a": 1}]
dist.broadcast_object_list(box, src=0, device=dev)
assert t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and box == [{"a": 1}]
dist.destroy_process_group()
print("nccl ok" if dev.type == "cuda" else "gloo ok")
"""


def test_an_nccl_group_of_one_process_reduces_and_broadcasts() -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "DEV": DEVICE,
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _NCCL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")

"""``compile=True``: the compiled element-wise kernels of :mod:`bounds.compiled` give the eager
path's bounds, losses and gradients (to float rounding), and a second process finds the
compiled code in the disk cache instead of compiling it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bounds import Normalize, compiled, compute_bounds, margin_spec, mode, robust_cross_entropy
from bounds.bound_spec import training_bound
from train.objective import certified_loss

ROOT = Path(__file__).resolve().parents[1]


def small_cnn() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        Normalize([0.3], [0.4]),
        nn.Conv2d(1, 4, 3, 2),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 7 * 7, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 15, 15, generator=g), torch.randint(0, 5, (n,), generator=g)


def loss_and_grads(model, x, y, compile, **kw):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    loss = robust_cross_entropy(
        model, x, y, 0.08, compile=compile, generator=torch.Generator().manual_seed(0), **kw
    )
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]


@pytest.mark.parametrize(
    "method,slope,fused",
    [
        ("ibp", None, False),
        ("crown-ibp", "adaptive", False),
        ("crown-ibp", "same-slope", False),
        ("crown-ibp", "tightest", False),
        ("crown-ibp", "optimized", False),
        ("crown-ibp", "adaptive", True),
        ("crown-ibp", "tightest", "min"),
        ("crown", "adaptive", False),
    ],
)
def test_compiled_loss_and_gradients_equal_eager(method, slope, fused):
    model, (x, y) = small_cnn(), batch()
    kw = dict(method=method, slope=slope, fused=fused, opt_steps=3)
    ref, ref_grads = loss_and_grads(model, x, y, False, **kw)
    got, got_grads = loss_and_grads(model, x, y, True, **kw)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(got_grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6 * max(1.0, float(r.abs().max())))


def test_the_relaxation_policies_run_the_compiled_upper_line_only_inside_the_engine(monkeypatch):
    """compile=True makes the kernels active while the engine computes relaxations, so the upper
    line runs compiled, forward and backward; the slope search reuses the lines prepare made
    (one forward per ReLU layer); outside the engine, nothing is active."""
    calls = {"forward": 0, "backward": 0}
    fwd, bwd = compiled.Kernels.upper_forward, compiled.Kernels.upper_backward

    def spy_fwd(self, l, u):
        calls["forward"] += 1
        return fwd(self, l, u)

    def spy_bwd(self, *args):
        calls["backward"] += 1
        return bwd(self, *args)

    monkeypatch.setattr(compiled.Kernels, "upper_forward", spy_fwd)
    monkeypatch.setattr(compiled.Kernels, "upper_backward", spy_bwd)
    model, (x, y) = small_cnn(), batch()
    loss_and_grads(model, x, y, True, method="crown-ibp", slope="tightest")
    assert calls["forward"] == 3 and calls["backward"] >= 3  # 3 ReLU layers: prepare only; gradient
    assert mode.active_kernels() is None
    before = dict(calls)
    loss_and_grads(model, x, y, False, method="crown-ibp", slope="adaptive")
    assert calls == before


def test_compiled_bounds_equal_eager_also_in_float64_and_other_batch_sizes():
    model = small_cnn().double()
    for n in (5, 2):
        x, y = batch(n)
        C = margin_spec(y, 5).double()
        for method in ("ibp", "crown-ibp"):
            ref = compute_bounds(model, x.double(), 0.1, method, C=C)
            got = compute_bounds(model, x.double(), 0.1, method, C=C, compile=True)
            assert torch.allclose(got.lower, ref.lower, atol=1e-10) and torch.allclose(
                got.upper, ref.upper, atol=1e-10
            )
            for (l0, u0), (l1, u1) in zip(ref.preact, got.preact):
                assert torch.allclose(l0, l1, atol=1e-10) and torch.allclose(u0, u1, atol=1e-10)
            if ref.lower_A is not None:
                assert torch.allclose(got.lower_A, ref.lower_A, atol=1e-10)


def test_hessian_vector_products_with_compile_equal_eager():
    model, (x, y) = small_cnn().double(), batch(3)
    x = x.double()
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    out = []
    for comp in (False, True):
        loss = robust_cross_entropy(model, x, y, 0.05, "crown-ibp", compile=comp)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(
            sum((g * w).sum() for g, w in zip(grads, v)), params, allow_unused=True
        )
        out.append([torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)])
    for a, b in zip(*out):
        assert torch.allclose(a, b, atol=1e-9)


def test_certified_loss_passes_compile_through():
    model, (x, y) = small_cnn(), batch()
    ref, ref_stats = certified_loss(
        model, x, y, 0.05, method="tightest", generator=torch.Generator().manual_seed(2)
    )
    got, got_stats = certified_loss(
        model,
        x,
        y,
        0.05,
        method="tightest",
        bound=training_bound("tightest", compile=True),
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.allclose(got, ref, rtol=1e-5)
    assert got_stats["robust_err"] == ref_stats["robust_err"]


def test_cache_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv(compiled.ENV_VAR, "/some/where")
    assert compiled.cache_dir() == "/some/where"
    monkeypatch.delenv(compiled.ENV_VAR)
    assert compiled.cache_dir() == os.path.join(
        os.path.expanduser("~"), ".cache", "landscape", "compile"
    )


SCRIPT = textwrap.dedent(
    """
    import json, sys, time, torch
    from torch import nn
    from bounds import Normalize, robust_cross_entropy
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.5], [0.5]), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    t0 = time.perf_counter()
    robust_cross_entropy(model, x, y, 0.1, "crown-ibp", compile=True).backward()
    print(json.dumps(dict(hits=counters["inductor"]["fxgraph_cache_hit"],
                          misses=counters["inductor"]["fxgraph_cache_miss"],
                          seconds=time.perf_counter() - t0)))
    """
)


@pytest.mark.slow
def test_a_second_process_reuses_the_disk_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env[compiled.ENV_VAR] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["misses"] > 0 and first["hits"] == 0
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())

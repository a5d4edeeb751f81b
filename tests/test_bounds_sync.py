"""The bound computations never wait for the device.

On an accelerator a conversion of a tensor to a Python number (``.item()``, ``float()``,
``int()``, ``bool()``, ``.tolist()``) stops the host until the device has caught up. The engine
(``compute_bounds``, ``robust_cross_entropy``) and the training objective's loss
(``certified_loss``; its stats are read lazily) must not make any for the training methods, so
that scans and training steps can queue up on the device. The value checks of
``bounds/spec.py`` are the one exception, and they run for CPU tensors only; here they are
switched off as on an accelerator, and every conversion raises.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from bounds import Normalize, compute_bounds, margin_spec, robust_cross_entropy
from bounds.bound_spec import training_bound
from train.objective import certified_loss

CONVERSIONS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")


@contextlib.contextmanager
def no_host_round_trips(monkeypatch):
    monkeypatch.setattr("bounds.spec.host_checks", lambda t: False)

    def forbid(name):
        def raiser(self, *a, **k):
            raise AssertionError(f"host round-trip: Tensor.{name} called")

        return raiser

    with monkeypatch.context() as m:
        for name in CONVERSIONS:
            m.setattr(torch.Tensor, name, forbid(name))
        yield


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize([0.3], [0.4]),
        nn.Conv2d(1, 3, 3, 2),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize(
    "method,slope,beta",
    [
        ("ibp", None, 1.0),
        ("crown-ibp", "adaptive", 1.0),
        ("crown-ibp", "adaptive", 0.5),
        ("crown-ibp", "tightest", 1.0),
        ("crown-ibp", "optimized", 1.0),
        ("crown-ibp", "same-slope", 1.0),
        ("crown-ibp", "uniform", 1.0),
    ],
)
def test_no_host_round_trips_in_the_bound_and_the_loss(monkeypatch, method, slope, beta):
    model = small_cnn()
    x, y = torch.rand(5, 1, 9, 9), torch.tensor([0, 1, 2, 3, 0])
    eps = torch.full((5,), 0.05)  # per-sample radii stay tensors too
    C = margin_spec(y, 4)
    kw = dict(slope=slope, beta=beta, opt_steps=2, generator=torch.Generator().manual_seed(0))
    with no_host_round_trips(monkeypatch):
        res = compute_bounds(model, x, eps, method, C=C, y=y, need_upper=False, **kw)
        total = res.lower.sum()
        for fused in (False, True, "min"):
            total = total + robust_cross_entropy(model, x, y, eps, method, fused=fused, **kw)
        loss, stats = certified_loss(
            model,
            x,
            y,
            eps,
            method,
            training_bound(method, slope, beta),
            generator=torch.Generator().manual_seed(0),
        )
        loss.backward()
    # stats are read afterwards (a host round-trip each, when the caller wants them)
    assert set(stats) >= {"clean_ce", "clean_err", "robust_ce", "robust_err"}
    assert 0.0 <= stats["robust_err"] <= 1.0 and all(isinstance(v, float) for v in stats.values())
    assert torch.isfinite(total)

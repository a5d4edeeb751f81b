"""Extending the toolkit takes only the steps the README names: a new lower-slope policy is one
function and one entry in ``bounds.relaxations.POLICIES`` plus its name in
``common.names.SLOPES``; every layer (engine, config, training objective, scan losses, the
``train`` and ``scan`` commands) then accepts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bounds import compute_bounds, margin_spec, relaxations
from common import names, store
from landscape.cli import main


def _half(
    l: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None
) -> relaxations.Relaxation:
    """a = 1/2 on every unstable neuron."""
    return relaxations.with_lower_slope(l, u, torch.full_like(u, 0.5))


def test_a_new_slope_policy_needs_only_the_readme_steps(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(relaxations.POLICIES, "half", _half)
    monkeypatch.setitem(names.SLOPES, "half", "a = 1/2")

    from bounds.bound_spec import training_bound
    from landscape.scan_losses import LossSpec
    from train.config import TrainConfig
    from train.models import build_model
    from train.objective import certified_loss

    torch.manual_seed(0)
    net = build_model("mlp", (1, 8, 8), 10, (0.3,), (0.4,), widths=(16,))
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    res = compute_bounds(net, x, 0.2, method="crown-ibp", slope="half", C=margin_spec(y, 10))
    (l, u), a = res.preact[0], res.slopes[0]
    unstable = (l < 0) & (u > 0)
    assert unstable.any() and bool((a[unstable] == 0.5).all())
    assert TrainConfig(method="crown-ibp", slope="half").resolved_slope == "half"
    loss, _ = certified_loss(net, x, y, 0.1, "crown", training_bound("crown", slope="half"))
    assert torch.isfinite(loss)
    assert LossSpec(method="crown-ibp", slope="half").slope == "half"

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--model-option",
                "widths=[8]",
                "--method",
                "crown-ibp",
                "--slope",
                "half",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--test-size",
                "16",
                "--eval-size",
                "0",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "g.h5"
    assert (
        main(
            [
                "scan",
                str(run / "checkpoint.pt"),
                "--points",
                "1",
                "--samples",
                "8",
                "--slope",
                "half",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert np.isfinite(store.read(out)["results"]["crown-ibp"]["loss"]).all()


def test_an_unknown_slope_is_refused_everywhere(tmp_path, capsys) -> None:
    from train.config import TrainConfig

    with pytest.raises(ValueError, match="unknown slope 'half'"):
        TrainConfig(method="crown-ibp", slope="half")
    with pytest.raises(ValueError, match="unknown slope 'half'"):
        compute_bounds(
            torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.rand(1, 2), 0.1, slope="half"
        )
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--method",
                "crown-ibp",
                "--slope",
                "half",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "unknown slope 'half'" in capsys.readouterr().err

"""``fused_ramp`` (``train --fused-ramp``): the ``fused="min"`` loss while eps ramps up, the
run's own loss from the final eps on (``benchmarks/time_to_error.py`` measures what it buys)."""

from __future__ import annotations

import pytest

from train import loop
from train.config import TrainConfig


def test_fused_at_follows_the_eps_ramp():
    cfg = TrainConfig(method="crown-ibp", eps=0.1, fused_ramp=True)
    assert cfg.fused_at(0.0) == "min" and cfg.fused_at(0.099) == "min"
    assert cfg.fused_at(0.1) is False
    assert (
        TrainConfig(method="crown-ibp", eps=0.1, fused_ramp=True, fused_loss=True).fused_at(0.1)
        is True
    )
    assert TrainConfig(method="crown-ibp", eps=0.1).fused_at(0.0) is False
    with pytest.raises(ValueError, match="natural training"):
        TrainConfig(method="natural", fused_ramp=True)


def test_each_training_step_takes_the_loss_of_its_eps(monkeypatch):
    seen: list[tuple[float, object]] = []
    real = loop.certified_loss

    def spy(*args, **kw):
        seen.append((float(args[3]), args[5].fused))  # args[5]: the step's BoundSpec
        return real(*args, **kw)

    monkeypatch.setattr(loop, "certified_loss", spy)
    cfg = TrainConfig(
        dataset="digits",
        model="mlp",
        model_options={"widths": [16]},
        method="crown-ibp",
        eps=0.05,
        epochs=2,
        batch_size=64,
        train_size=128,
        test_size=32,
        eval_size=0,
        eps_start_epoch=0.0,
        eps_ramp_epochs=1.0,
        fused_ramp=True,
    )
    loop.train(cfg, progress=False)
    assert len(seen) == 4
    assert [f for _, f in seen] == ["min" if e < 0.05 else False for e, _ in seen]
    assert {f for _, f in seen} == {"min", False}

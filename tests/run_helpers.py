"""The tiny training run several test modules scan: one place for its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_RUN: dict[str, Any] = dict(
    dataset="digits",
    model="mlp",
    model_options={"widths": [16, 16]},
    method="crown-ibp",
    eps=0.1,
    epochs=2,
    batch_size=50,
    train_size=100,
    test_size=20,
    eval_size=0,
    lr=1e-3,
    eps_ramp_epochs=1.0,
)
"""A CROWN-IBP MLP (16, 16) on 100 digits: 2 epochs of 2 steps, eps 0.1 ramped over the first."""


def train_tiny_run(out: Path, **changes: Any) -> Path:
    """Train :data:`TINY_RUN` (with ``changes`` to its settings) into ``out``; returns ``out``."""
    from train.loop import train

    train({**TINY_RUN, **changes}, out_dir=out, progress=False)
    return out

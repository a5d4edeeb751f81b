"""The callback protocol of the training loop: what a callback sees at every step.

Callbacks are how other modules (``landscape.probes``) watch training without ``train``
importing them. ``on_step`` runs after ``backward`` and before ``optimizer.step``: parameters
are those the gradient was taken at and ``p.grad`` holds the raw (unclipped) gradient.
Callbacks must leave parameters and gradients as they found them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bounds.bound_spec import BoundSpec
from train.config import TrainConfig


@dataclass
class StepContext:
    """Everything needed to analyse one training step (passed to ``Callback.on_step``).

    ``loss_fn(m)`` is the certified loss of this step (same batch, eps, beta, kappa, method and
    random slopes) evaluated at module ``m``: ``loss_fn(model)`` equals ``loss``.
    ``final_loss_fn(m)`` is the same at the end of the schedules (eps = eps_train,
    beta = beta_end, kappa = kappa_end): the paper code's ``loss_max``.
    ``bound`` is the bound this step used (a :class:`bounds.BoundSpec`: engine method, slope,
    the step's beta, domain; None for natural training) and ``n_classes`` the number of
    classes, so an analysis can repeat it without re-deriving it.
    ``loss_at(x, y, final=False, seed=None)`` is the step's loss (or its final-schedule loss) on
    another batch, with the step's random slopes (or those drawn from ``seed``); ``loss_fn`` is
    ``loss_at(ctx.x, ctx.y)``. ``data`` is the training run's dataset (``train_x``, ...).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    step: int
    epoch: int
    eps: float
    beta: float
    kappa: float
    lr: float
    loss: float
    stats: dict[str, float]
    loss_fn: Callable[[nn.Module], torch.Tensor]
    final_loss_fn: Callable[[nn.Module], torch.Tensor]
    method: str
    bound: BoundSpec | None
    n_classes: int
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    wall_time: float = 0.0
    grad_norm: float = float("nan")
    loss_at: Callable[..., Callable[[nn.Module], torch.Tensor]] | None = None
    data: Any = None


@runtime_checkable
class Callback(Protocol):
    """Training observer (see the module docstring). ``epoch`` is always the 0-based epoch
    index (``ctx.epoch`` too); ``on_epoch_end(e, ...)`` runs after ``checkpoint_epoch{e+1}.pt``
    is written."""

    def on_step(self, ctx: StepContext) -> None: ...

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict) -> None: ...

    def on_train_end(self, model: nn.Module, metrics: dict) -> None: ...


class BaseCallback:
    """A callback that does nothing; subclass and override what you need."""

    def on_step(self, ctx: StepContext) -> None:
        pass

    def on_epoch_end(self, epoch: int, model: nn.Module, metrics: dict) -> None:
        pass

    def on_train_end(self, model: nn.Module, metrics: dict) -> None:
        pass


def call(cb: Any, name: str, *args: Any) -> None:
    """``cb.<name>(*args)`` when the callback has that hook."""
    fn = getattr(cb, name, None)
    if fn is not None:
        fn(*args)

"""Per-step schedules of eps, beta, kappa and the learning rate.

All ramps are functions of the global step ``s`` (0-based, counted over the whole run), a start
step ``s0`` and a length ``n`` (steps), moving a value from ``v0`` to ``v1``:

* ``linear``: ``v(s) = v0 + (v1 - v0) * clip((s - s0) / n, 0, 1)``.
* ``smooth``: the smoothed ramp of Gowal et al. (2018)'s IBP code, used by CROWN-IBP
  (Zhang et al., 2020) and the short-warmup work of Shi et al. (2021): a polynomial start that
  turns into a straight line with the same slope. With ``m = s0 + p * n`` (``p`` = mid point,
  default 0.25) and power ``k`` (default 4)::

      v(s) = v0 + alpha * (s - s0)^k                        for s0 <= s < m
      v(s) = v_m + (v1 - v_m) * (s - m) / (s0 + n - m)      for m <= s <= s0 + n
      alpha = (v1 - v0) / ((m - s0)^(k-1) * (k * (s0 + n - m) + (m - s0))),
      v_m = v0 + alpha * (m - s0)^k

  ``alpha`` makes the value and the slope continuous at ``m`` (slope there
  ``k * alpha * (m - s0)^(k-1)`` equals ``(v1 - v_m) / (s0 + n - m)``), so eps grows very slowly
  at first, when the bounds of an untrained network explode fastest.

Before ``s0`` the value is ``v0``, after ``s0 + n`` it is ``v1``; ``n = 0`` jumps at ``s0``.
The learning rate is piecewise constant: ``lr(epoch) = lr0 * decay^#{milestones <= epoch}``;
per step, a milestone ``m`` (epochs, fractions allowed) acts from step ``round(m * steps_per_epoch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import TrainConfig


def linear_ramp(step: float, start: float, length: float, v0: float, v1: float) -> float:
    """Linear ramp from ``v0`` (at ``step <= start``) to ``v1`` (at ``step >= start + length``)."""
    if step < start:
        return float(v0)
    if length <= 0 or step >= start + length:
        return float(v1)
    return float(v0 + (v1 - v0) * (step - start) / length)


def smooth_ramp(
    step: float,
    start: float,
    length: float,
    v0: float,
    v1: float,
    mid_point: float = 0.25,
    power: float = 4.0,
) -> float:
    """Polynomial-then-linear ramp (see the module docstring for the formula)."""
    if not 0.0 <= mid_point <= 1.0:
        raise ValueError(f"mid_point must lie in [0, 1], got {mid_point}")
    if power < 1.0:
        raise ValueError(f"power must be >= 1, got {power}")
    if step < start:
        return float(v0)
    end = start + length
    if length <= 0 or step >= end:
        return float(v1)
    mid = start + mid_point * length
    if mid <= start:  # no polynomial part: plain linear ramp
        return linear_ramp(step, start, length, v0, v1)
    if mid >= end:  # no linear part: pure power curve reaching v1 at the end
        return float(v0 + (v1 - v0) * ((step - start) / length) ** power)
    head = mid - start
    alpha = (v1 - v0) / (head ** (power - 1.0) * (power * (end - mid) + head))
    if step < mid:
        return float(v0 + alpha * (step - start) ** power)
    v_mid = v0 + alpha * head**power
    return float(v_mid + (v1 - v_mid) * (step - mid) / (end - mid))


def ramp(kind: str, step: float, start: float, length: float, v0: float, v1: float) -> float:
    """Dispatch to :func:`linear_ramp` (``kind='linear'``) or :func:`smooth_ramp` (``'smooth'``)."""
    if kind == "linear":
        return linear_ramp(step, start, length, v0, v1)
    if kind == "smooth":
        return smooth_ramp(step, start, length, v0, v1)
    raise ValueError(f"unknown ramp {kind!r}; choose linear or smooth")


def lr_at(epoch: float, lr0: float, milestones: Sequence[float], decay: float) -> float:
    """``lr0 * decay^k`` with ``k`` the number of milestones ``<= epoch`` (any one unit: epochs or steps)."""
    k = sum(1 for m in milestones if epoch >= m)
    return float(lr0 * decay**k)


@dataclass(frozen=True)
class Schedule:
    """All per-step values of a run, from a :class:`train.config.TrainConfig`.

    ``steps_per_epoch`` converts the config's epoch units to steps: the ramp window is
    ``[round(eps_start_epoch * spe), round(eps_start_epoch * spe) + round(eps_ramp_epochs * spe)]``.
    eps ramps 0 -> eps; beta and kappa ramp from start to end over the same window with their
    own ramp kinds.
    """

    eps: float
    eps_kind: str
    beta: tuple[float, float]
    beta_kind: str
    kappa: tuple[float, float]
    kappa_kind: str
    start_step: int
    ramp_steps: int
    lr0: float
    milestones: tuple[float, ...]
    lr_decay: float
    steps_per_epoch: int

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int) -> Schedule:
        """Build from a ``TrainConfig`` and the number of steps per epoch."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        start, ramp, lr = config.eps_start_epoch, config.eps_ramp_epochs, config.lr
        if start is None or ramp is None or lr is None:  # TrainConfig.__post_init__ fills them
            raise ValueError("the config's eps ramp window or learning rate is not resolved")
        return cls(
            eps=float(config.eps),
            eps_kind=config.eps_schedule,
            beta=(float(config.beta_start), float(config.beta_end)),
            beta_kind=config.beta_schedule,
            kappa=(float(config.kappa_start), float(config.kappa_end)),
            kappa_kind=config.kappa_schedule,
            start_step=int(round(start * steps_per_epoch)),
            ramp_steps=int(round(ramp * steps_per_epoch)),
            lr0=float(lr),
            milestones=tuple(float(m) for m in config.lr_milestones),
            lr_decay=float(config.lr_decay),
            steps_per_epoch=steps_per_epoch,
        )

    def eps_at(self, step: int) -> float:
        """Training radius at global step ``step`` (0 before the ramp, eps after it)."""
        return ramp(self.eps_kind, step, self.start_step, self.ramp_steps, 0.0, self.eps)

    def beta_at(self, step: int) -> float:
        """CROWN-IBP mixing weight at ``step``."""
        return ramp(self.beta_kind, step, self.start_step, self.ramp_steps, *self.beta)

    def kappa_at(self, step: int) -> float:
        """Clean-loss weight at ``step``."""
        return ramp(self.kappa_kind, step, self.start_step, self.ramp_steps, *self.kappa)

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``; milestone ``m`` (epochs) acts from step ``round(m * spe)``."""
        milestone_steps = [round(m * self.steps_per_epoch) for m in self.milestones]
        return lr_at(step, self.lr0, milestone_steps, self.lr_decay)

    def values(self, step: int) -> dict[str, float]:
        """``{"eps", "beta", "kappa", "lr"}`` at ``step``."""
        return {
            "eps": self.eps_at(step),
            "beta": self.beta_at(step),
            "kappa": self.kappa_at(step),
            "lr": self.lr_at(step),
        }

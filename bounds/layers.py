"""Layers that the bound engine understands beyond torch's own.

The model zoo builds every network as ``nn.Sequential`` of ``Normalize``, ``Linear``,
``Conv2d``, ``ReLU``, ``Flatten`` and (``cnn7``) BatchNorm; ``Normalize`` and ``Residual`` live
here (not in ``train``) because the bound engine must recognise them and ``bounds`` imports
nothing from the rest of the toolkit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel affine input normalisation: ``y[:, c] = (x[:, c] - mean[c]) / std[c]``.

    Input ``x`` has shape ``[batch, C, *spatial]`` (or ``[batch, C]``); ``mean`` and ``std``
    have ``C`` entries each, every ``std`` strictly positive.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).flatten()
        std_t = torch.as_tensor(list(std), dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(
                f"Normalize needs as many means as stds, got {mean_t.numel()} and {std_t.numel()}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"Normalize needs positive stds, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(
                f"Normalize expects input [batch, {self.mean.numel()}, ...], got {tuple(x.shape)}"
            )
        return (x - self._shaped(self.mean, x)) / self._shaped(self.std, x)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"


class Residual(nn.Module):
    """A residual block: ``y = branch(x) + shortcut(x)`` (``shortcut`` None: the identity).

    ``branch``: an ``nn.Sequential`` of layers the bound engine accepts; ``shortcut``: None, one
    such layer or an ``nn.Sequential`` of them. Both paths map ``[B, *shape]`` to the same
    ``[B, *shape_out]``. The engine bounds it as two paths from one input box whose results are
    added (``docs/design.md``).
    """

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(branch, nn.Sequential):
            raise ValueError(f"Residual needs an nn.Sequential branch, got {type(branch).__name__}")
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + (x if self.shortcut is None else self.shortcut(x))

"""Random crops and horizontal flips of a whole batch, as tensor operations on its device.

The paper code (Lee et al. 2021, through torchvision's transforms) trains CIFAR-10 with
``RandomHorizontalFlip()`` then ``RandomCrop(32, padding=4)`` and SVHN with ``RandomCrop(32,
padding=4)`` alone, on the pixels before normalisation. :func:`crop_and_flip` draws the same
distributions for every sample of a batch at once (no per-sample Python): each image is mirrored
left-right with probability 1/2, then zero-padded by ``pad`` pixels on every side and cut back
to its size at an offset ``(dy, dx)`` uniform in ``{0, ..., 2 pad}^2``.

The draws come from a generator the training loop seeds from ``(seed, step)``, so a resumed run
and every torchrun process see the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["crop_and_flip", "batch_augmenter"]


def crop_and_flip(
    x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` with each image flipped left-right with probability 1/2 (``flip``)
    and randomly cropped from its ``pad``-pixel zero padding (``pad > 0``); the same shape,
    dtype and device. ``generator`` is a CPU generator (the draws are ``[B]`` tensors moved to
    ``x``'s device)."""
    if x.ndim != 4:
        raise ValueError(
            f"random crops and flips need image batches [B, C, H, W], got shape {tuple(x.shape)}"
        )
    if pad < 0:
        raise ValueError(f"the crop padding must be >= 0, got {pad}")
    B, C, H, W = x.shape
    out = x
    if flip:
        mirror = (torch.rand(B, generator=generator) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    if pad > 0:
        padded = F.pad(out, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        rows = dy[:, None] + torch.arange(H, device=x.device)  # [B, H]
        cols = dx[:, None] + torch.arange(W, device=x.device)  # [B, W]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        out = padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    return out


def batch_augmenter(
    config: Any, inputs: torch.Tensor, seed_of: Callable[[int], int]
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``augment(xb, step)`` for a run config's ``random_crop`` / ``random_flip`` (the identity
    when it asks for neither), drawing from a generator seeded with ``seed_of(step)``, so every
    process and a resumed run see the same batch. ValueError when the training ``inputs`` are
    not images ``[N, C, H, W]``."""
    pad, flip = int(config.random_crop), bool(config.random_flip)
    if pad == 0 and not flip:
        return lambda xb, step: xb
    if inputs.ndim != 4:
        raise ValueError(
            f"random_crop and random_flip augment images; dataset {config.dataset!r} has inputs of "
            f"shape {tuple(inputs.shape[1:])}"
        )
    if pad > min(
        inputs.shape[2:]
    ):  # a larger padding only adds blank images, at quadratic memory cost
        raise ValueError(
            f"random_crop: {pad} pixels of padding is more than the {inputs.shape[2]}x{inputs.shape[3]} "
            f"images of dataset {config.dataset!r} have"
        )
    return lambda xb, step: crop_and_flip(
        xb, pad, flip, torch.Generator().manual_seed(seed_of(step))
    )

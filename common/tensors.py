"""The torch half of the ground floor: flat parameter vectors and the loss-function type.

A flat vector is every tensor of a parameter list concatenated in order; :func:`flatten` makes
one and :func:`unflatten` splits one back into tensors shaped (and typed, and placed) like the
list. ``figures`` never imports this module: it is the one part of :mod:`common` that needs
torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module], Tensor]
"""A loss as a function of the model: ``loss_fn(model)`` is a scalar tensor."""


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one vector (like ``parameters_to_vector``)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split ``vector`` into tensors shaped like ``like``, each with its dtype and device (the
    inverse of :func:`flatten`); a vector whose length is not the parameters' is refused."""
    total = sum(t.numel() for t in like)
    if vector.numel() != total:
        raise ValueError(f"vector has {vector.numel()} entries, the parameters have {total}")
    out, start = [], 0
    for t in like:
        part = vector[start : start + t.numel()].reshape(t.shape)
        out.append(part.to(device=t.device, dtype=t.dtype))
        start += t.numel()
    return out

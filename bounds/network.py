"""Validate a model and list it as flat layer operations with their shapes.

The bound engine understands ``nn.Sequential`` models built from ``Normalize``, ``Linear``,
``Conv2d``, ``ReLU`` and ``Flatten`` only. :func:`layer_ops` checks every layer, works out the
per-sample shape before and after each one from the input shape (no forward pass needed), and
returns :class:`LayerOp` records holding the layer's parameters cast to the input's dtype and
device. Every other module of ``bounds`` walks this list instead of the ``nn.Module``.

Positions: position ``i`` is the *input* of ``ops[i]``; position 0 is the network input and
position ``len(ops)`` its output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from bounds.layers import Normalize

KINDS = ("normalize", "linear", "conv", "relu", "flatten")


@dataclass(frozen=True)
class LayerOp:
    """One layer of the network, in bound-propagation terms.

    ``kind``: one of :data:`KINDS`. ``in_shape`` / ``out_shape``: per-sample shapes (no batch
    dimension). ``weight`` / ``bias``: for ``linear`` the ``[out, in]`` matrix and ``[out]``
    bias (or None), for ``conv`` the ``[C_out, C_in/groups, kH, kW]`` kernel and ``[C_out]``
    bias (or None), for ``normalize`` the per-channel ``std`` and ``mean`` (``[C]`` each);
    None for ``relu`` and ``flatten``. ``conv_args``: stride, padding, dilation, groups.
    """

    index: int
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    conv_args: Optional[dict] = None

    def detached(self) -> "LayerOp":
        """The same op with its parameters cut from the autograd graph (cloned if inference tensors)."""
        return replace(
            self,
            weight=None if self.weight is None else plain(self.weight),
            bias=None if self.bias is None else plain(self.bias),
        )


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached; cloned if it is an inference tensor (so autograd may use it in a search)."""
    return t.clone() if t.is_inference() else t.detach()


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _conv_padding(layer: nn.Conv2d, index: int) -> tuple[int, int]:
    if layer.padding_mode != "zeros":
        raise ValueError(
            f"layer {index} (Conv2d) uses padding_mode={layer.padding_mode!r}; only 'zeros' is supported"
        )
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        k, d, s = _pair(layer.kernel_size), _pair(layer.dilation), _pair(layer.stride)
        if s != (1, 1) or any((dd * (kk - 1)) % 2 for kk, dd in zip(k, d)):
            raise ValueError(f"layer {index} (Conv2d) uses asymmetric 'same' padding, which is not supported")
        return tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))  # type: ignore[return-value]
    return _pair(pad)


def _conv_out(shape: tuple[int, ...], layer: nn.Conv2d, index: int, padding: tuple[int, int]) -> tuple[int, ...]:
    if len(shape) != 3 or shape[0] != layer.in_channels:
        raise ValueError(
            f"layer {index} (Conv2d) expects input [{layer.in_channels}, H, W] per sample, got {list(shape)}"
        )
    k, s, d = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
    hw = []
    for size, kk, ss, dd, pp in zip(shape[1:], k, s, d, padding):
        out = (size + 2 * pp - dd * (kk - 1) - 1) // ss + 1
        if out < 1:
            raise ValueError(f"layer {index} (Conv2d) gets a {shape[1]}x{shape[2]} input, too small for its kernel")
        hw.append(out)
    return (layer.out_channels, hw[0], hw[1])


def layer_ops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> list[LayerOp]:
    """Validate ``model`` and return its layers as :class:`LayerOp` records.

    ``input_shape`` is the per-sample shape of ``x``. Parameters are cast to ``dtype`` and
    ``device`` (a no-op, still in the autograd graph, when they already match).
    Raises ``ValueError`` naming the layer and its index for any unsupported layer or shape
    mismatch, and for a network whose output is not a vector.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"the bound engine needs an nn.Sequential model, got {type(model).__name__}")
    if len(model) == 0:
        raise ValueError("the model is an empty nn.Sequential")

    def cast(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(dtype=dtype, device=device)

    ops: list[LayerOp] = []
    shape = tuple(int(s) for s in input_shape)
    for i, layer in enumerate(model):
        name = type(layer).__name__
        if isinstance(layer, Normalize):
            if len(shape) < 1 or shape[0] != layer.mean.numel():
                raise ValueError(
                    f"layer {i} (Normalize) has {layer.mean.numel()} channels but its input is {list(shape)}"
                )
            ops.append(LayerOp(i, "normalize", shape, shape, cast(layer.std), cast(layer.mean)))
        elif isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ValueError(
                    f"layer {i} (Linear) expects {layer.in_features} input features, got input {list(shape)}"
                )
            out = (layer.out_features,)
            ops.append(LayerOp(i, "linear", shape, out, cast(layer.weight), cast(layer.bias)))
            shape = out
        elif isinstance(layer, nn.Conv2d):
            padding = _conv_padding(layer, i)
            out = _conv_out(shape, layer, i, padding)
            args = dict(
                stride=_pair(layer.stride), padding=padding, dilation=_pair(layer.dilation), groups=layer.groups
            )
            ops.append(LayerOp(i, "conv", shape, out, cast(layer.weight), cast(layer.bias), args))
            shape = out
        elif isinstance(layer, nn.ReLU):
            ops.append(LayerOp(i, "relu", shape, shape))
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"layer {i} (Flatten) must flatten dims 1..-1, got {layer.start_dim}..{layer.end_dim}")
            out = (int(torch.Size(shape).numel()),)
            ops.append(LayerOp(i, "flatten", shape, out))
            shape = out
        else:
            raise ValueError(
                f"layer {i} ({name}) is not supported by the bound engine; "
                "use Normalize, Linear, Conv2d, ReLU and Flatten only"
            )
    if len(shape) != 1:
        raise ValueError(f"the model's output must be a vector per sample, got shape {list(shape)}; add a Flatten")
    return ops


def relu_indices(ops: list[LayerOp]) -> list[int]:
    """Op indices (into ``ops``) of the ReLU layers, in order."""
    return [k for k, op in enumerate(ops) if op.kind == "relu"]


def shape_at(ops: list[LayerOp], position: int) -> tuple[int, ...]:
    """Per-sample shape at ``position`` (the input of ``ops[position]``; ``len(ops)`` is the output)."""
    return ops[position].in_shape if position < len(ops) else ops[-1].out_shape

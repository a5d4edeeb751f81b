"""Validate a model and list it as flat layer operations with their shapes.

The bound engine understands ``nn.Sequential`` models built from ``Normalize``, ``Linear``,
``Conv2d``, ``ReLU``, ``Flatten``, ``BatchNorm1d``/``BatchNorm2d``, ``AvgPool2d`` and
``Residual`` blocks (a nested ``nn.Sequential`` is flattened). :func:`layer_ops` checks every
layer, works out the per-sample shape before and after each one from the input shape, and
returns :class:`LayerOp` records holding the layer's parameters cast to the input's dtype and
device. Every other module of ``bounds`` walks this list instead of the ``nn.Module``.

- BatchNorm becomes a per-channel affine op ``scale``: ``y = w z + b`` with, in evaluation mode,
  ``w = gamma / sqrt(running_var + eps)`` and ``b = beta - running_mean w``; in training mode
  (or without running statistics) the mean and biased variance of the clean batch ``x`` at that
  layer, from a clean forward pass through the ops (Shi et al. 2021, auto_LiRPA's default).
  Those statistics stay in the autograd graph as part of the affine map.
- AvgPool2d is the grouped convolution (``groups = C``) with the constant kernel ``1 / (kh kw)``.
- ``Residual(branch, shortcut)`` becomes ``fork`` (push a copy of the current value), the branch's
  ops, ``swap`` (exchange the current value with the pushed one), the shortcut's ops and ``add``
  (pop and add to the current value): a stack machine, so that positions stay integers.

Positions: position ``i`` is the *input* of ``ops[i]``; position 0 is the network input and
position ``len(ops)`` its output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bounds.layers import Normalize, Residual

KINDS = ("normalize", "linear", "conv", "relu", "flatten", "scale", "fork", "swap", "add")
#: the ops that move values between the current value and the stack (residual blocks)
STACK_KINDS = ("fork", "swap", "add")


@dataclass(frozen=True)
class LayerOp:
    """One layer of the network, in bound-propagation terms.

    ``kind``: one of :data:`KINDS`. ``in_shape`` / ``out_shape``: per-sample shapes (no batch
    dimension). ``weight`` / ``bias``: for ``linear`` the ``[out, in]`` matrix and ``[out]``
    bias (or None), for ``conv`` the ``[C_out, C_in/groups, kH, kW]`` kernel and ``[C_out]``
    bias (or None), for ``normalize`` the per-channel ``std`` and ``mean`` (``[C]`` each), for
    ``scale`` (BatchNorm) the per-channel ``w`` and ``b`` of ``y = w z + b`` (``[C]`` each; None
    for training-mode BatchNorm when :func:`layer_ops` got no batch); None for ``relu``,
    ``flatten`` and the stack ops. ``conv_args``: stride, padding, dilation, groups.
    """

    index: int
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    conv_args: dict | None = None

    @property
    def w(self) -> torch.Tensor:
        """``weight`` of an op that has one (linear, conv, normalize, evaluated BatchNorm)."""
        if self.weight is None:
            raise ValueError(f"layer {self.index} ({self.kind}) has no weight")
        return self.weight

    @property
    def b(self) -> torch.Tensor:
        """``bias`` of an op that must have one (normalize's mean, evaluated BatchNorm's shift)."""
        if self.bias is None:
            raise ValueError(f"layer {self.index} ({self.kind}) has no bias")
        return self.bias

    @property
    def conv(self) -> dict:
        """``conv_args`` (stride, padding, dilation, groups); empty for other kinds."""
        return self.conv_args or {}

    def detached(self) -> LayerOp:
        """The same op with its parameters cut from the autograd graph (cloned if inference tensors)."""
        return replace(
            self,
            weight=None if self.weight is None else cut_graph(self.weight),
            bias=None if self.bias is None else cut_graph(self.bias),
        )


def cut_graph(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached; cloned if it is an inference tensor (so autograd may use it in a search)."""
    return t.clone() if t.is_inference() else t.detach()


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _conv_padding(layer: nn.Conv2d, name: str) -> tuple[int, int]:
    if layer.padding_mode != "zeros":
        raise ValueError(
            f"{name} uses padding_mode={layer.padding_mode!r}; only 'zeros' is supported"
        )
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        k, d, s = _pair(layer.kernel_size), _pair(layer.dilation), _pair(layer.stride)
        if s != (1, 1) or any((dd * (kk - 1)) % 2 for kk, dd in zip(k, d)):
            raise ValueError(f"{name} uses asymmetric 'same' padding, which is not supported")
        return tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))  # type: ignore[return-value]
    return _pair(pad)


def _spatial_out(
    shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    name: str,
) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window on a ``[C, H, W]`` input:
    ``(n + 2 p - d (k - 1) - 1) // s + 1`` per side; ValueError when the input is too small."""
    hw = [
        (n + 2 * pp - dd * (kk - 1) - 1) // ss + 1
        for n, kk, ss, dd, pp in zip(shape[1:], kernel, stride, dilation, padding)
    ]
    if min(hw) < 1:
        raise ValueError(f"{name} gets a {shape[1]}x{shape[2]} input, too small for its kernel")
    return hw[0], hw[1]


def _conv_out(
    shape: tuple[int, ...], layer: nn.Conv2d, name: str, padding: tuple[int, int]
) -> tuple[int, ...]:
    if len(shape) != 3 or shape[0] != layer.in_channels:
        raise ValueError(
            f"{name} expects input [{layer.in_channels}, H, W] per sample, got {list(shape)}"
        )
    hw = _spatial_out(
        shape, _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation), padding, name
    )
    return (layer.out_channels, *hw)


class _Builder:
    """Walks the layers, appending ops and tracking (with a batch) the clean forward values that
    training-mode BatchNorm takes its statistics from."""

    def __init__(
        self, dtype: torch.dtype, device: torch.device | None, x: torch.Tensor | None
    ) -> None:
        self.dtype, self.device = dtype, device
        self.ops: list[LayerOp] = []
        self.z = None if x is None else x.to(dtype=dtype, device=device)
        self.stack: list[torch.Tensor | None] = []

    def cast(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype=self.dtype, device=self.device)

    def add(self, op: LayerOp) -> tuple[int, ...]:
        self.ops.append(op)
        if op.kind == "fork":
            self.stack.append(self.z)
        elif op.kind == "swap":
            self.z, self.stack[-1] = self.stack[-1], self.z
        elif op.kind == "add":
            top = self.stack.pop()
            self.z = None if self.z is None else self.z + top
        elif self.z is not None:
            self.z = clean_forward(op, self.z)
        return op.out_shape

    def layers(self, seq: nn.Module, shape: tuple[int, ...], i: int, where: str) -> tuple[int, ...]:
        for j, layer in enumerate(seq):
            shape = self.layer(layer, shape, i, f"{where}.{j}")
        return shape

    def layer(
        self, layer: nn.Module, shape: tuple[int, ...], i: int, where: str
    ) -> tuple[int, ...]:
        name = f"layer {where} ({type(layer).__name__})"
        if isinstance(layer, nn.Sequential):
            return self.layers(layer, shape, i, where)
        if isinstance(layer, Normalize):
            if len(shape) < 1 or shape[0] != layer.mean.numel():
                raise ValueError(
                    f"{name} has {layer.mean.numel()} channels but its input is {list(shape)}"
                )
            return self.add(
                LayerOp(i, "normalize", shape, shape, self.cast(layer.std), self.cast(layer.mean))
            )
        if isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ValueError(
                    f"{name} expects {layer.in_features} input features, got input {list(shape)}"
                )
            out = (layer.out_features,)
            return self.add(
                LayerOp(i, "linear", shape, out, self.cast(layer.weight), self.cast(layer.bias))
            )
        if isinstance(layer, nn.Conv2d):
            padding = _conv_padding(layer, name)
            out = _conv_out(shape, layer, name, padding)
            args = dict(
                stride=_pair(layer.stride),
                padding=padding,
                dilation=_pair(layer.dilation),
                groups=layer.groups,
            )
            return self.add(
                LayerOp(i, "conv", shape, out, self.cast(layer.weight), self.cast(layer.bias), args)
            )
        if isinstance(layer, nn.AvgPool2d):
            return self.add(self.avgpool(layer, shape, i, name))
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.add(self.batchnorm(layer, shape, i, name))
        if isinstance(layer, nn.ReLU):
            return self.add(LayerOp(i, "relu", shape, shape))
        if isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(
                    f"{name} must flatten dims 1..-1, got {layer.start_dim}..{layer.end_dim}"
                )
            return self.add(LayerOp(i, "flatten", shape, (int(torch.Size(shape).numel()),)))
        if isinstance(layer, Residual):
            self.add(LayerOp(i, "fork", shape, shape))
            out = self.layers(layer.branch, shape, i, f"{where}.branch")
            self.add(LayerOp(i, "swap", out, shape))
            short = (
                shape
                if layer.shortcut is None
                else self.layer(layer.shortcut, shape, i, f"{where}.shortcut")
            )
            if short != out:
                raise ValueError(
                    f"{name}: its branch gives {list(out)} per sample but its shortcut {list(short)}"
                )
            return self.add(LayerOp(i, "add", out, out))
        raise ValueError(
            f"{name} is not supported by the bound engine; use Normalize, Linear, Conv2d, ReLU, Flatten, "
            "BatchNorm1d/2d, AvgPool2d and Residual only"
        )

    def avgpool(self, layer: nn.AvgPool2d, shape: tuple[int, ...], i: int, name: str) -> LayerOp:
        """AvgPool2d as the grouped convolution with the constant kernel ``1 / (kh kw)`` per channel."""
        k, p = _pair(layer.kernel_size), _pair(layer.padding)
        s = _pair(layer.stride) if layer.stride is not None else k
        if layer.ceil_mode:
            raise ValueError(f"{name} uses ceil_mode=True, which the bound engine does not support")
        if layer.divisor_override:
            raise ValueError(
                f"{name} uses divisor_override, which the bound engine does not support"
            )
        if not layer.count_include_pad and p != (0, 0):
            raise ValueError(
                f"{name} uses count_include_pad=False with padding, which the bound engine does not support"
            )
        if len(shape) != 3:
            raise ValueError(f"{name} expects input [C, H, W] per sample, got {list(shape)}")
        c = shape[0]
        out = (c, *_spatial_out(shape, k, s, (1, 1), p, name))
        weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), dtype=self.dtype, device=self.device)
        return LayerOp(
            i,
            "conv",
            shape,
            out,
            weight,
            None,
            dict(stride=s, padding=p, dilation=(1, 1), groups=c),
        )

    def batchnorm(self, layer: nn.Module, shape: tuple[int, ...], i: int, name: str) -> LayerOp:
        """BatchNorm as ``y = w z + b`` per channel (module doc): running or clean-batch statistics."""
        want = 3 if isinstance(layer, nn.BatchNorm2d) else 1
        if len(shape) != want or shape[0] != layer.num_features:
            what = "[C, H, W]" if want == 3 else "[C]"
            raise ValueError(
                f"{name} expects input {what} with C = {layer.num_features} per sample, got {list(shape)}"
            )
        if layer.training or layer.running_mean is None or layer.running_var is None:
            if self.z is None:
                return LayerOp(
                    i, "scale", shape, shape
                )  # a shape check only: no batch to take statistics from
            dims = [0, *range(2, self.z.dim())]
            mean, var = self.z.mean(dims), self.z.var(dims, unbiased=False)
        else:
            mean, var = self.cast(layer.running_mean), self.cast(layer.running_var)
        w = torch.rsqrt(var + layer.eps)
        if layer.affine:
            w = self.cast(layer.weight) * w
            return LayerOp(i, "scale", shape, shape, w, self.cast(layer.bias) - mean * w)
        return LayerOp(i, "scale", shape, shape, w, -mean * w)


def clean_forward(op: LayerOp, z: torch.Tensor) -> torch.Tensor:
    """The (non-stack) op applied to a batch ``z`` ``[B, *in_shape]``."""
    if op.kind == "relu":
        return F.relu(z)
    if op.kind == "flatten":
        return z.reshape(z.shape[0], -1)
    if op.kind == "linear":
        return F.linear(z, op.w, op.bias)
    if op.kind == "conv":
        return F.conv2d(z, op.w, op.bias, **op.conv)
    view = (-1, *([1] * (z.dim() - 2)))
    if op.kind == "normalize":
        return (z - op.b.view(view)) / op.w.view(view)
    return z * op.w.view(view) + op.b.view(view)  # scale


def layer_ops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    x: torch.Tensor | None = None,
) -> list[LayerOp]:
    """Validate ``model`` and return its layers as :class:`LayerOp` records.

    ``input_shape`` is the per-sample shape of ``x``. Parameters are cast to ``dtype`` and
    ``device`` (a no-op, still in the autograd graph, when they already match). ``x``
    ``[B, *input_shape]``: the clean batch whose statistics training-mode BatchNorm layers use
    (without it their ``scale`` ops carry no parameters: a shape check only).
    Raises ``ValueError`` naming the layer and its index for any unsupported layer or shape
    mismatch, and for a network whose output is not a vector.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"the bound engine needs an nn.Sequential model, got {type(model).__name__}"
        )
    if len(model) == 0:
        raise ValueError("the model is an empty nn.Sequential")
    batch_stats = any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and (m.training or m.running_mean is None)
        for m in model.modules()
    )
    builder = _Builder(
        dtype, device, x if batch_stats else None
    )  # the clean forward pass only when needed
    shape = tuple(int(s) for s in input_shape)
    for i, layer in enumerate(model):
        shape = builder.layer(layer, shape, i, str(i))
    if len(shape) != 1:
        raise ValueError(
            f"the model's output must be a vector per sample, got shape {list(shape)}; add a Flatten"
        )
    return builder.ops


def stack_depth(ops: list[LayerOp], position: int) -> int:
    """How many values residual blocks hold on the stack at ``position`` (forks minus adds before it)."""
    return sum(int(op.kind == "fork") - int(op.kind == "add") for op in ops[:position])


def relu_indices(ops: list[LayerOp]) -> list[int]:
    """Op indices (into ``ops``) of the ReLU layers, in order."""
    return [k for k, op in enumerate(ops) if op.kind == "relu"]


def affine_layers_before(ops: list[LayerOp], k: int) -> int:
    """Linear, conv and residual ops before ``k`` (IBP is exact through at most one of them; the
    per-channel Normalize and BatchNorm maps keep it exact)."""
    return sum(1 for op in ops[:k] if op.kind in ("linear", "conv", "fork"))


def shape_at(ops: list[LayerOp], position: int) -> tuple[int, ...]:
    """Per-sample shape at ``position`` (the input of ``ops[position]``; ``len(ops)`` is the output)."""
    return ops[position].in_shape if position < len(ops) else ops[-1].out_shape

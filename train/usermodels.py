"""Models that are not in the zoo: built by your function, recorded as a list of layers.

A model function (``--model FILE.py:function`` or ``package.module:function``,
:mod:`train.plugins`) is called as::

    function(input_shape, n_classes, **model_options)          # input_shape: a tuple (C, H, W)

and must return an ``nn.Sequential`` the bound engine accepts (``bounds.network.layer_ops``):
``bounds.Normalize``, ``nn.Linear``, ``nn.Conv2d`` (zero padding), ``nn.ReLU``, ``nn.Flatten``,
``nn.BatchNorm1d``/``nn.BatchNorm2d`` and ``nn.AvgPool2d`` (``bounds.layers.Residual`` blocks are
bounded but not yet recorded in a layer list), with float32 parameters, giving ``n_classes`` outputs
for inputs ``[B, *input_shape]`` in
``[0, 1]``. The model is used as returned: nothing is put in front of it. If the function has
parameters named ``mean`` and ``std``, it also gets the dataset's per-channel statistics (zeros
and ones when the run says ``normalize_inputs: false``) to build its own ``Normalize`` layer.

Recording (:func:`describe`): a checkpoint stores any such model, and any model passed to
``train.loop.train(config, model=...)``, as a *layer list* (description version
:data:`LAYERS_VERSION`), JSON-able and free of code::

    {"version": 2, "name": reference or "custom", "options": {...}, "input_shape": [C, H, W] or None,
     "n_classes": n, "layers": [{"name": "0", "kind": "normalize", "mean": [...], "std": [...]},
                                {"name": "1", "kind": "conv", "in_channels", "out_channels",
                                 "kernel_size": [kh, kw], "stride": [..], "padding": [..],
                                 "dilation": [..], "groups", "bias": true},
                                {"name": "3", "kind": "linear", "in_features", "out_features", "bias"},
                                {"name": "2", "kind": "relu"}, {"name": "4", "kind": "flatten"},
                                {"kind": "batchnorm2d" or "batchnorm1d", "num_features", "eps",
                                 "momentum", "affine", "track_running_stats"},
                                {"kind": "avgpool", "kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad"}, ...]}

:func:`build` turns it back into the same ``nn.Sequential`` (the same child names, so the
state dict loads) of the plain torch layers the bound engine sees, without importing your code:
a checkpoint keeps working when the file that made the model is moved, edited or gone, and
loading one never runs code. ``name`` and ``options`` only say where the model came from.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bounds.layers import Normalize, Residual
from bounds.network import layer_ops
from train import plugins

__all__ = [
    "LAYERS_VERSION",
    "build_user_model",
    "describe",
    "describe_reference",
    "build",
    "check_input",
]

LAYERS_VERSION = 2
"""Version of a layer-list model description (zoo descriptions are version 1)."""

_SUPPORTED = (
    "use bounds.Normalize, nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.BatchNorm1d/2d and nn.AvgPool2d "
    "only"
)


class ModelError(ValueError):
    """Unknown model name or option, a bad option value, or an input shape a model cannot take."""


def _error(message: str) -> ValueError:
    return ModelError(message)


def _call_args(
    fn: Any, mean: Sequence[float], std: Sequence[float], options: Mapping[str, Any]
) -> dict[str, Any]:
    kwargs = dict(options)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if {"mean", "std"} <= named:
        kwargs.update(mean=list(mean), std=list(std))
    return kwargs


def check_input(
    model: nn.Module, input_shape: Sequence[int], n_classes: int | None, who: str
) -> None:
    """Raise ModelError unless the bound engine accepts ``model`` on ``input_shape`` and it gives
    ``n_classes`` outputs (the engine's own message names the layer)."""
    try:
        ops = layer_ops(model, tuple(int(s) for s in input_shape))
    except ValueError as exc:
        raise _error(f"{who} cannot be bounded on inputs {tuple(input_shape)}: {exc}") from None
    out = ops[-1].out_shape[0]
    if n_classes is not None and out != n_classes:
        raise _error(
            f"{who} gives {out} outputs per sample, but the dataset has {n_classes} classes"
        )


def build_user_model(
    ref: str,
    input_shape: Sequence[int],
    n_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: Mapping[str, Any],
) -> nn.Sequential:
    """Call the model function ``ref`` (see the module docstring) and check what it returns."""
    fn = plugins.resolve(ref, "model")
    model = plugins.call(
        ref,
        fn,
        tuple(input_shape),
        int(n_classes),
        what="model",
        **_call_args(fn, mean, std, options),
    )
    who = f"model {ref!r}"
    if not isinstance(model, nn.Module):
        raise _error(
            f"model function {ref!r} returned a {type(model).__name__}, not a torch.nn.Sequential"
        )
    if not isinstance(model, nn.Sequential):
        raise _error(
            f"model function {ref!r} returned a {type(model).__name__}; the bound engine needs an "
            f"nn.Sequential ({_SUPPORTED})"
        )
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            raise _error(
                f"{who} has {t.dtype} values in {name!r}; the data are float32, so build it in float32"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _error(
                f"model function {ref!r} returned a model with NaN or Inf values in {name!r}; it must "
                "start from finite weights"
            )
    check_input(model, input_shape, n_classes, who)
    return model


def _pair(v: Any) -> list[int]:
    return [int(v[0]), int(v[1])] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _layer(name: str, i: int, layer: nn.Module) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name}
    if isinstance(layer, Normalize):
        entry.update(kind="normalize", mean=layer.mean.tolist(), std=layer.std.tolist())
    elif isinstance(layer, nn.Linear):
        entry.update(
            kind="linear",
            in_features=layer.in_features,
            out_features=layer.out_features,
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise _error(
                f"layer {i} (Conv2d) uses padding_mode={layer.padding_mode!r}; only 'zeros' is supported"
            )
        padding = layer.padding
        if isinstance(padding, str):  # 'valid' or a symmetric 'same', as the engine reads it
            k, d = _pair(layer.kernel_size), _pair(layer.dilation)
            padding = [0, 0] if padding == "valid" else [dd * (kk - 1) // 2 for kk, dd in zip(k, d)]
        entry.update(
            kind="conv",
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            kernel_size=_pair(layer.kernel_size),
            stride=_pair(layer.stride),
            padding=_pair(padding),
            dilation=_pair(layer.dilation),
            groups=int(layer.groups),
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.ReLU):
        entry.update(kind="relu")
    elif isinstance(layer, nn.Flatten):
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise _error(
                f"layer {i} (Flatten) must flatten dims 1..-1, got {layer.start_dim}..{layer.end_dim}"
            )
        entry.update(kind="flatten")
    elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        entry.update(
            kind="batchnorm2d" if isinstance(layer, nn.BatchNorm2d) else "batchnorm1d",
            num_features=layer.num_features,
            eps=layer.eps,
            momentum=layer.momentum,
            affine=layer.affine,
            track_running_stats=layer.track_running_stats,
        )
    elif isinstance(layer, nn.AvgPool2d):
        entry.update(
            kind="avgpool",
            kernel_size=_pair(layer.kernel_size),
            stride=_pair(layer.stride if layer.stride is not None else layer.kernel_size),
            padding=_pair(layer.padding),
            ceil_mode=bool(layer.ceil_mode),
            count_include_pad=bool(layer.count_include_pad),
        )
    elif isinstance(layer, Residual):
        raise _error(
            f"layer {i} (Residual): residual blocks cannot be recorded in a layer-list description yet; "
            "train such a model through train.loop.train and rebuild it with your own code"
        )
    else:
        raise _error(
            f"layer {i} ({type(layer).__name__}) is not supported by the bound engine; {_SUPPORTED}"
        )
    return entry


def describe(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    n_classes: int | None = None,
    name: str = "custom",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The layer-list description of ``model`` (module docstring); ModelError naming the layer
    for anything the bound engine cannot take. ``input_shape`` is checked when given;
    ``n_classes`` defaults to the model's output size (None when unknown without an input shape)."""
    if not isinstance(model, nn.Sequential):
        raise _error(f"the bound engine needs an nn.Sequential model, got {type(model).__name__}")
    if len(model) == 0:
        raise _error("the model is an empty nn.Sequential")
    layers = [_layer(str(key), i, layer) for i, (key, layer) in enumerate(model.named_children())]
    if input_shape is not None:
        check_input(model, input_shape, n_classes, f"model {name!r}")
        if n_classes is None:
            n_classes = layer_ops(model, tuple(int(s) for s in input_shape))[-1].out_shape[0]
    elif n_classes is None and layers[-1]["kind"] == "linear":
        n_classes = int(layers[-1]["out_features"])
    return {
        "version": LAYERS_VERSION,
        "name": str(name),
        "options": dict(options or {}),
        "input_shape": None if input_shape is None else [int(s) for s in input_shape],
        "n_classes": n_classes,
        "layers": layers,
    }


def describe_reference(
    ref: str,
    input_shape: Sequence[int],
    n_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Build the model of ``ref`` (leaving torch's global random state as it was) and describe it."""
    with torch.random.fork_rng(devices=[]):
        model = build_user_model(ref, input_shape, n_classes, mean, std, options)
    return describe(model, input_shape, n_classes, name=ref, options=options)


def _module(entry: Mapping[str, Any]) -> nn.Module:
    kind = entry.get("kind")
    if kind == "normalize":
        return Normalize(entry["mean"], entry["std"])
    if kind == "linear":
        return nn.Linear(
            int(entry["in_features"]), int(entry["out_features"]), bias=bool(entry["bias"])
        )
    if kind == "conv":
        return nn.Conv2d(
            int(entry["in_channels"]),
            int(entry["out_channels"]),
            tuple(entry["kernel_size"]),
            stride=tuple(entry["stride"]),
            padding=tuple(entry["padding"]),
            dilation=tuple(entry["dilation"]),
            groups=int(entry["groups"]),
            bias=bool(entry["bias"]),
        )
    if kind == "relu":
        return nn.ReLU()
    if kind == "flatten":
        return nn.Flatten()
    if kind in ("batchnorm1d", "batchnorm2d"):
        bn = nn.BatchNorm2d if kind == "batchnorm2d" else nn.BatchNorm1d
        return bn(
            int(entry["num_features"]),
            eps=float(entry["eps"]),
            momentum=entry["momentum"],
            affine=bool(entry["affine"]),
            track_running_stats=bool(entry["track_running_stats"]),
        )
    if kind == "avgpool":
        return nn.AvgPool2d(
            tuple(entry["kernel_size"]),
            stride=tuple(entry["stride"]),
            padding=tuple(entry["padding"]),
            ceil_mode=bool(entry["ceil_mode"]),
            count_include_pad=bool(entry["count_include_pad"]),
        )
    raise _error(f"model description has a layer of unknown kind {kind!r}")


def build(d: Mapping[str, Any]) -> nn.Sequential:
    """The ``nn.Sequential`` a layer-list description records (weights come from a state dict)."""
    if d.get("unrecorded"):
        raise _error(
            f"the model of this checkpoint could not be recorded when it was saved ({d['unrecorded']}); "
            "build it with your own code and load the checkpoint's state_dict into it"
        )
    layers = d.get("layers")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise _error("model description lacks its layer list")
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, entry in enumerate(layers):
        if not isinstance(entry, Mapping):
            raise _error(f"model description layer {i} is a {type(entry).__name__}, not a dict")
        try:
            modules[str(entry.get("name", i))] = _module(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise _error(
                f"model description layer {i} ({entry.get('kind')}) is invalid "
                f"({plugins.describe_exception(exc)})"
            ) from None
    model = nn.Sequential(modules)
    shape = d.get("input_shape")
    if shape is not None:
        check_input(model, shape, d.get("n_classes"), "the recorded model")
    return model

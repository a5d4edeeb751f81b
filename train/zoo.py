"""The zoo's table: each model's plan of hidden layers, and :data:`MODELS`, name -> spec.

:mod:`train.models` turns a plan into modules (and documents every model); this module only
says which layers each model has. A plan is a list of :class:`Conv` and :class:`Dense` entries,
each a Conv2d/Linear followed (with ``bn=True``) by BatchNorm and then by ReLU; the last Linear
(``n_classes`` logits) is added by :mod:`train.models`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conv", "Dense", "PlanEntry", "ModelSpec", "MODELS"]


@dataclass(frozen=True)
class Conv:
    """Plan entry: ``Conv2d(in, out, kernel, stride, padding)``, ``BatchNorm2d`` if ``bn``, ReLU."""

    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    bn: bool = False


@dataclass(frozen=True)
class Dense:
    """Plan entry: ``Linear(in, out)``, ``BatchNorm1d`` if ``bn``, ReLU (hidden layer)."""

    out: int
    bn: bool = False


PlanEntry = Conv | Dense


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: ``plan(options)`` lists the hidden layers; ``defaults`` are the options
    it accepts (with their default values); ``spatial`` says whether it needs ``(C, H, W)``."""

    name: str
    plan: Callable[[Mapping[str, Any]], list[PlanEntry]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    spatial: bool = True
    summary: str = ""


def _mlp(o: Mapping[str, Any]) -> list[PlanEntry]:
    return [Dense(w) for w in o["widths"]]


def _cnn_tiny(o: Mapping[str, Any]) -> list[PlanEntry]:
    w = o["width"]
    return [Conv(8 * w, 3, 1, 1), Conv(16 * w, 4, 2, 1), Dense(o["linear_size"])]


def _dm_small(o: Mapping[str, Any]) -> list[PlanEntry]:
    return [Conv(16, 4, 2, 0), Conv(32, 4, 1, 0), Dense(100)]


def _model_small(o: Mapping[str, Any]) -> list[PlanEntry]:
    return [Conv(16, 4, 2, 1), Conv(32, 4, 1, 1), Dense(100)]


def _dm_medium(o: Mapping[str, Any]) -> list[PlanEntry]:
    return [
        Conv(32, 3, 1, 0),
        Conv(32, 4, 2, 0),
        Conv(64, 3, 1, 0),
        Conv(64, 4, 2, 0),
        Dense(512),
        Dense(512),
    ]


def _dm_large(o: Mapping[str, Any]) -> list[PlanEntry]:
    return [
        Conv(64, 3, 1, 1),
        Conv(64, 3, 1, 1),
        Conv(128, 3, 2, 1),
        Conv(128, 3, 1, 1),
        Conv(128, 3, 1, 1),
        Dense(o["linear_size"]),
    ]


def _cnn_4layer(o: Mapping[str, Any]) -> list[PlanEntry]:
    w, h = o["width"], o["linear_size"]
    return [
        Conv(4 * w, 3, 1, 1),
        Conv(4 * w, 4, 2, 1),
        Conv(8 * w, 3, 1, 1),
        Conv(8 * w, 4, 2, 1),
        Dense(h),
        Dense(h),
    ]


def _cnn7(o: Mapping[str, Any]) -> list[PlanEntry]:
    w = o["width"]
    return [
        Conv(w, 3, 1, 1, bn=True),
        Conv(w, 3, 1, 1, bn=True),
        Conv(2 * w, 3, 2, 1, bn=True),
        Conv(2 * w, 3, 1, 1, bn=True),
        Conv(2 * w, 3, 1, 1, bn=True),
        Dense(o["linear_size"], bn=True),
    ]


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        "mlp",
        _mlp,
        {"widths": (256, 256)},
        spatial=False,
        summary="fully connected ReLU network, hidden widths configurable",
    ),
    "cnn-tiny": ModelSpec(
        "cnn-tiny",
        _cnn_tiny,
        {"width": 1, "linear_size": 64},
        summary="two small convolutions and one hidden FC layer; fits 8x8 digits",
    ),
    "dm-small": ModelSpec(
        "dm-small", _dm_small, {}, summary="DM-small of Gowal et al. 2018 (CROWN-IBP paper)"
    ),
    "model-small": ModelSpec(
        "model-small",
        _model_small,
        {},
        summary="model_small of Lee et al. 2021's code: DM-small with padded convolutions",
    ),
    "dm-medium": ModelSpec(
        "dm-medium", _dm_medium, {}, summary="DM-medium of Gowal et al. 2018 (CROWN-IBP paper)"
    ),
    "dm-large": ModelSpec(
        "dm-large",
        _dm_large,
        {"linear_size": 512},
        summary="DM-large of Gowal et al. 2018 (CROWN-IBP's IBP_large)",
    ),
    "cnn-4layer": ModelSpec(
        "cnn-4layer",
        _cnn_4layer,
        {"width": 8, "linear_size": 512},
        summary="4 conv + 3 FC CIFAR-10 model of Lee et al. 2021",
    ),
    "ibp-large": ModelSpec(
        "ibp-large",
        _dm_large,
        {"linear_size": 512},
        summary="MNIST/SVHN model of Lee et al. 2021 (= dm-large / IBP_large)",
    ),
    "cnn7": ModelSpec(
        "cnn7",
        _cnn7,
        {"width": 64, "linear_size": 512},
        summary="CNN7 with BatchNorm of Shi et al. 2021 and CTBench (cnn_7layer_bn2)",
    ),
}

"""Datasets that are not in the registry: returned by your function, checked before any use.

A dataset function (``--dataset FILE.py:function`` or ``package.module:function``,
:mod:`train.plugins`) takes no arguments and returns either::

    (train_x, train_y, test_x, test_y)
    {"train_x": ..., "train_y": ..., "test_x": ..., "test_y": ...,          # required
     "classes": ["cat", "dog", ...], "mean": [...], "std": [...]}           # optional

``*_x``: images ``[N, C, H, W]`` (or ``[N, H, W]``, one channel) with values in ``[0, 1]``;
``*_y``: integer labels ``[N]`` in ``0 .. n_classes - 1``. Torch tensors, numpy arrays or
nested lists all do. ``n_classes`` is ``len(classes)`` when given, else the largest label + 1.
``mean`` / ``std`` (one number per channel, pixel units) default to the training images'
per-channel mean and standard deviation (a constant channel gets std 1). Everything is checked
and one :class:`train.dataformats.DatasetError` (a ``ValueError``) names the first problem: a
wrong return type or key, a non-numeric array, a shape that does not fit, values outside
``[0, 1]`` or not finite, labels that are not integers or out of range.

The function is called once per process (and again after its file changes); the arrays are
cached read-only. ``data_dir`` and ``download`` do not apply. A run's config records the
reference (a file's path made absolute), so ``certify`` and ``scan`` call the function again
to get the same data: certify or scan a checkpoint only if you trust the code it names.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from train import plugins
from train.dataformats import DatasetError, DatasetSpec

__all__ = ["load", "known_spec", "KEYS", "OPTIONAL_KEYS"]

KEYS = ("train_x", "train_y", "test_x", "test_y")
OPTIONAL_KEYS = ("classes", "mean", "std")

_SPECS: dict[str, Any] = {}


def _array(value: Any, key: str, who: str) -> np.ndarray:
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
    except Exception as exc:
        raise DatasetError(
            f"{who}: {key} cannot be read as an array ({plugins.describe_exception(exc)})"
        ) from None
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{who}: {key} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _images(arr: np.ndarray, key: str, who: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0 or 0 in arr.shape[1:]:
        raise DatasetError(
            f"{who}: {key} must be a non-empty stack of images [N, C, H, W] (or [N, H, W]), "
            f"got shape {tuple(arr.shape)}"
        )
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DatasetError(f"{who}: {key} holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (8-bit pixels? divide them by 255)" if hi > 1.0 and float(arr.max()) <= 255 else ""
        raise DatasetError(
            f"{who}: {key} has values in [{lo:g}, {hi:g}], outside [0, 1]; scale the images to "
            f"[0, 1]{hint}"
        )
    return x


MAX_CLASSES_WITHOUT_NAMES = 10_000
"""A label this large or larger is refused unless ``classes`` names every class: one stray label
(e.g. 1,000,000) would otherwise make a model with a million outputs."""


def _labels(arr: np.ndarray, key: str, n: int, who: str) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"{who}: {key} must hold integer class labels, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise DatasetError(
            f"{who}: {key} has shape {tuple(arr.shape)}, but there are {n} images: the labels must "
            f"be [{n}]"
        )
    if n and int(arr.min()) < 0:
        raise DatasetError(
            f"{who}: {key} holds the negative label {int(arr.min())}; labels are 0 .. n_classes - 1"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _stats(value: Any, key: str, channels: int, who: str) -> tuple[float, ...]:
    flat = _array(value, key, who).astype(np.float64).reshape(-1)
    if flat.size != channels or not np.isfinite(flat).all():
        raise DatasetError(
            f"{who}: {key} must be {channels} finite number(s), one per channel, got {value!r}"
        )
    if key == "std" and not (flat > 0).all():
        raise DatasetError(f"{who}: std must be positive, got {flat.tolist()}")
    return tuple(float(v) for v in flat)


def _parts(result: Any, who: str) -> dict[str, Any]:
    want = "(train_x, train_y, test_x, test_y) or a dict with those keys"
    if isinstance(result, Mapping):
        keys = {str(k) for k in result}
        missing = [k for k in KEYS if k not in keys]
        unknown = sorted(keys - set(KEYS) - set(OPTIONAL_KEYS))
        if missing or unknown:
            problem = (
                f"lacks {', '.join(missing)}"
                if missing
                else f"has unknown key(s) {', '.join(unknown)}"
            )
            raise DatasetError(
                f"{who} returned a dict that {problem}; it needs {', '.join(KEYS)} and may have "
                f"{', '.join(OPTIONAL_KEYS)}"
            )
        return {str(k): v for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        if len(result) != 4:
            raise DatasetError(
                f"{who} returned a {type(result).__name__} of {len(result)} items; expected {want}"
            )
        return dict(zip(KEYS, result))
    raise DatasetError(f"{who} returned a {type(result).__name__}; expected {want}")


def check(result: Any, ref: str) -> tuple[tuple[np.ndarray, ...], Any]:
    """The four arrays (float32 images, int64 labels) and the DatasetSpec of what a dataset
    function returned; one DatasetError for the first problem."""
    who = f"dataset function {ref!r}"
    parts = _parts(result, who)
    tx = _images(_array(parts["train_x"], "train_x", who), "train_x", who)
    vx = _images(_array(parts["test_x"], "test_x", who), "test_x", who)
    if tx.shape[1:] != vx.shape[1:]:
        raise DatasetError(
            f"{who}: train_x has images of shape {tx.shape[1:]} but test_x {vx.shape[1:]}"
        )
    ty = _labels(_array(parts["train_y"], "train_y", who), "train_y", tx.shape[0], who)
    vy = _labels(_array(parts["test_y"], "test_y", who), "test_y", vx.shape[0], who)
    top = int(max(ty.max(), vy.max()))
    classes = parts.get("classes")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__") or len(classes) < 2:
            raise DatasetError(
                f"{who}: classes must be a list of at least 2 class names, got {classes!r}"
            )
        classes = tuple(str(c) for c in classes)
        if top >= len(classes):
            raise DatasetError(
                f"{who}: the labels go up to {top}, but only {len(classes)} class names are given"
            )
    n_classes = len(classes) if classes is not None else top + 1
    if classes is None and n_classes > MAX_CLASSES_WITHOUT_NAMES:
        where, arr = ("train_y", ty) if ty.max() >= vy.max() else ("test_y", vy)
        raise DatasetError(
            f"{who}: {where}[{int(arr.argmax())}] is the label {top}, which would make a model of "
            f"{n_classes} classes; labels are 0 .. n_classes - 1 (to mean that many classes, give "
            f"their names as 'classes')"
        )
    if n_classes < 2:
        raise DatasetError(f"{who}: every label is 0; a classifier needs at least 2 classes")
    c = tx.shape[1]
    if parts.get("mean") is not None:
        mean = _stats(parts["mean"], "mean", c, who)
    else:
        mean = tuple(float(v) for v in tx.mean(axis=(0, 2, 3), dtype=np.float64))
    if parts.get("std") is not None:
        std = _stats(parts["std"], "std", c, who)
    else:
        std = tuple(
            float(v) if v > 0 and math.isfinite(v) else 1.0
            for v in tx.std(axis=(0, 2, 3), dtype=np.float64)
        )
    spec = DatasetSpec(
        ref, tuple(int(s) for s in tx.shape[1:]), int(n_classes), mean, std, (0.0, 1.0), classes
    )
    arrays = (tx, ty, vx, vy)
    for a in arrays:
        a.setflags(write=False)
    return arrays, spec


def _stamp(ref: str) -> tuple:
    target = ref.rpartition(":")[0]
    if target.endswith(".py"):
        try:  # the content: an edit that keeps the size and modification time counts too
            with open(target, "rb") as fh:
                return (hashlib.sha256(fh.read()).hexdigest(),)
        except OSError:
            return ()
    return ()


@functools.lru_cache(maxsize=2)
def _load(ref: str, stamp: tuple) -> tuple[tuple[np.ndarray, ...], Any]:
    fn = plugins.resolve(ref, "dataset")
    return check(plugins.call(ref, fn, what="dataset"), ref)


def load(ref: str) -> tuple[tuple[np.ndarray, ...], Any]:
    """``((train_x, train_y, test_x, test_y), spec)`` of the dataset function ``ref`` (cached)."""
    ref = plugins.canonical(ref, "dataset")
    try:
        arrays, spec = _load(ref, _stamp(ref))
    except plugins.PluginError as exc:
        raise DatasetError(str(exc)) from exc
    _SPECS[ref] = spec
    return arrays, spec


def known_spec(ref: str) -> Any | None:
    """The spec of ``ref`` if this process has loaded it (never calls the function)."""
    try:
        return _SPECS.get(plugins.canonical(ref, "dataset"))
    except plugins.PluginError:
        return None

"""Row groups of a results file: columns that grow by appending (a training run's steps,
epochs, probes; a certification's results), and cutting them back to a checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from common.store.files import SCHEMA_VERSION, StoreError, atomic_update, set_attrs


def _fill_value(dtype: np.dtype) -> Any:
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if np.issubdtype(dtype, np.integer):
        return -1
    if np.issubdtype(dtype, np.bool_):
        return False
    return ""


def _as_column(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    elif arr.dtype.kind not in "biuf" and arr.dtype != object:
        raise StoreError(f"column {name!r} has unsupported dtype {arr.dtype}")
    return arr


def append_rows(path: str, group: str, rows: Mapping[str, Any]) -> None:
    """Append ``rows`` (column name -> array with the rows along axis 0; scalars count as one
    row) to the resizable datasets ``group/<name>`` of ``path``, atomically.

    Datasets and file are created on first use (the file with ``schema_version``). All columns
    of one call must have the same number of rows. A column new to the group is back-filled
    with NaN (floats) / -1 (integers) for the earlier rows, and a known column missing from
    this call is filled the same way, so every column of a group keeps the same length.
    """
    if not rows:
        return
    cols = {str(k): _as_column(str(k), v) for k, v in rows.items()}
    lengths = {k: v.shape[0] for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise StoreError(f"append_rows needs columns of equal length, got {lengths}")
    n_new = next(iter(lengths.values()))
    if "attrs" in cols:
        raise StoreError("column name 'attrs' is reserved")
    with atomic_update(path) as f:
        if "schema_version" not in f.attrs:
            set_attrs(f, {"schema_version": SCHEMA_VERSION})
        g = f.require_group(group)
        existing = [k for k in g.keys() if isinstance(g[k], h5py.Dataset)]
        n_old = g[existing[0]].shape[0] if existing else 0
        for name, arr in cols.items():
            if name in g:
                ds = g[name]
                if tuple(ds.shape[1:]) != tuple(arr.shape[1:]):
                    raise StoreError(
                        f"column {group}/{name} has rows of shape {tuple(ds.shape[1:])}, got {tuple(arr.shape[1:])}"
                    )
            else:
                dtype = h5py.string_dtype() if arr.dtype == object else arr.dtype
                chunk_rows = max(1, min(1024, (1 << 16) // max(1, int(np.prod(arr.shape[1:])) * 4)))
                ds = g.create_dataset(
                    name,
                    shape=(n_old, *arr.shape[1:]),
                    maxshape=(None, *arr.shape[1:]),
                    dtype=dtype,
                    chunks=(chunk_rows, *arr.shape[1:]),
                    fillvalue=None if arr.dtype == object else _fill_value(arr.dtype),
                )
                if n_old and arr.dtype != object:
                    ds[...] = _fill_value(arr.dtype)
            ds.resize(n_old + n_new, axis=0)
            ds[n_old:] = arr
        for name in existing:
            if name not in cols:
                ds = g[name]
                ds.resize(n_old + n_new, axis=0)
                if ds.dtype.kind in "biuf":
                    ds[n_old:] = _fill_value(ds.dtype)


def truncate_rows(path: str, group: str, column: str, limit: float) -> int:
    """Keep only the rows of ``group`` whose ``column`` is ``< limit``, atomically; returns the
    number of rows dropped (0 when the file, group or column does not exist).

    A training run resumed from its epoch-``k`` checkpoint drops the rows that the interrupted
    attempt wrote after that checkpoint, so no step appears twice.
    """
    if not os.path.exists(path):
        return 0
    with h5py.File(path, "r") as f:
        if group not in f or column not in f[group]:
            return 0
        keep = np.asarray(f[group][column][()]) < limit
    if bool(keep.all()):
        return 0
    with atomic_update(path) as f:
        g = f[group]
        for name in list(g.keys()):
            ds = g[name]
            if not isinstance(ds, h5py.Dataset) or ds.shape[0] != keep.shape[0]:
                continue
            kept = ds[()][keep]
            ds.resize(kept.shape[0], axis=0)
            if kept.shape[0]:
                ds[...] = kept
    return int((~keep).sum())


def truncate_run(path: str, step: int, epoch: int) -> int:
    """Cut a training run's file back to a checkpoint taken after ``step`` steps and ``epoch``
    epochs: drop the ``steps``, ``probes`` and ``grads`` rows with ``step >= step`` and the
    ``epochs`` rows with ``epoch >= epoch`` (rows an interrupted attempt wrote after it).
    Returns the number of rows dropped."""
    dropped = sum(
        truncate_rows(path, group, "step", step) for group in ("steps", "probes", "grads")
    )
    return dropped + truncate_rows(path, "epochs", "epoch", epoch)

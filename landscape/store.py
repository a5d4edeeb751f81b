"""The HDF5 store: one file per training run or scan, written atomically.

This module imports only h5py, numpy and the standard library, so plotting never needs torch.

Every write goes to a temporary file in the same directory (a copy of the old file, changed
there) which then replaces the old file with ``os.replace``; a crash at any moment leaves
either the old file or the new one, never a half-written mix. Scan files also carry
``complete = False`` until the last point is written.

Schema (``schema_version`` 1)
-----------------------------
Attributes hold ints, floats, bools and strings natively; lists, dicts and ``None`` are stored
as JSON strings and their names listed in the attribute ``_json_attrs`` (``read`` decodes
them). Scan results are float32; a point not yet computed is NaN.

**Training run** (``train.h5``, written by ``landscape train`` through :func:`append_rows`):

- root attrs: ``kind = "train"``, ``schema_version``, ``method``, ``dataset``, ``model``,
  ``eps``, ``seed``, ``command``, ``toolkit_version``, ``created``.
- ``/steps/<name>``: one row per recorded step (``step``, ``epoch``, ``loss``, ``robust_ce``,
  ``clean_err``, ``robust_err``, ``grad_norm``, ``eps``, ``beta``, ``kappa``, ``lr``,
  ``wall_time``, ``unstable_frac_l{i}``).
- ``/epochs/<name>``: one row per epoch.
- ``/probes/<name>``: one row per probe and step multiple t (:mod:`landscape.probes`); rows
  of one probe share ``step``. Columns: ``step``, ``epoch``, ``t``, ``lr``, ``eps``; at
  theta_t = theta - t lr g for the step's loss: ``loss``, ``grad_norm``, ``cos``, ``rms``,
  ``smoothness`` and for the final-eps loss (the paper's loss_max): ``loss_final``,
  ``grad_norm_final``, ``cos_final``, ``rms_final``, ``smoothness_final``; per probe (repeated
  on its rows): ``loss_variation``, ``loss_final_variation``, ``rga_cos``, ``rga_rel_err``,
  ``slope_err``, ``upper_slope_err``, ``unstable_frac_l{i}``; per t: ``a_sign``,
  ``sign_flip``. NaN where a value does not apply (e.g. IBP has no slopes).
- ``/grads/<name>``: optional float16 flattened gradients.

A column keeps the dtype of its first append. Rows appended later may bring new columns:
earlier rows of a new column are filled with NaN (floats) or -1 (integers); a column missing
from an append is filled the same way, so all columns of a group have the same length.

**Scan** (``landscape scan``):

- root attrs: ``kind`` in {``gradient``, ``random-1d``, ``random-2d``, ``interpolate``},
  ``schema_version``, ``complete`` (bool), ``args_json`` (canonical JSON of the arguments that
  determine the results: a resume with other arguments is refused), ``dims`` (names of the
  grid axes, e.g. ``["t"]``, ``["alpha"]``, ``["x"]``, ``["x", "y"]``), ``labels`` (one per
  scanned loss, e.g. the methods of ``--methods``), ``fields``, ``toolkit_version``,
  ``command``, ``created``, ``checkpoint``, ``checkpoint_sha256``, ``dataset``, ``eps``,
  ``seed`` and whatever else the command records.
- ``/coords/<dim>``: float32 coordinates of each grid axis (``t`` for the gradient scan is the
  step multiple: theta_t = theta - t * lr * g; ``alpha`` for interpolation:
  theta = (1 - alpha) theta_1 + alpha theta_2; ``x``, ``y`` the multiples of the random
  directions).
- ``/results/<label>/<field>``: float32, shape = the grid (``len(coords[d]) for d in dims``),
  NaN where not yet computed. Fields: ``loss`` always; the gradient scan adds ``grad_norm``,
  ``cos`` (cosine of grad L(theta_t) with grad L(theta)), ``rms`` (RMS of their difference),
  ``smoothness`` (||grad L(theta_t) - grad L(theta)|| / ||theta_t - theta||; NaN at t = 0)
  and, with ``--metrics``, ``a_sign`` = mean |sign(A) - sign(A_t)| and ``sign_flip`` = mean
  [sign(A) != sign(A_t)] of the lower bound's input coefficients A (NaN for IBP). The gradient
  scan moves along the gradient of the *first* label's loss; every label's metrics compare
  with its own gradient at theta. Group attrs of ``/results/<label>`` hold scalar summaries
  once complete: ``loss_variation`` = max L - min L, ``loss0`` (gradient scans),
  ``hessian_top_eig`` (``--hessian``).
- ``/arrays/<name>``: anything needed to repeat the scan exactly, e.g. ``direction_x``,
  ``direction_y`` (flattened float32 directions in the order of ``parameters()``, attrs
  ``param_names``/``param_shapes``) or ``gradient``.

**Certification** (``certify.h5``, written by ``landscape reproduce``):

- root attrs: ``kind = "certify"``, ``schema_version``, ``method``, ``dataset``, ``model``,
  ``eps`` (training eps), ``checkpoint``, ``n_test``, ``bound``, ``complete``.
- ``/results/<name>``: one row per certified eps: ``eps``, ``clean_err``, ``pgd_err``,
  ``verified_err``, ``verified_err_<method>``, ``bound_gap``, ``bound_lb``, ``pgd_margin``
  (mean certified margin lower bound against the PGD margin at the training eps).

Reading: :func:`read` returns nested dicts, ``{"attrs": {...}, "results": {"crown-ibp":
{"attrs": {...}, "loss": array, ...}}, "coords": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "StoreError",
    "ScanMismatchError",
    "append_rows",
    "write_attrs",
    "truncate_rows",
    "truncate_run",
    "read",
    "canonical_json",
    "ScanFile",
    "create_scan",
    "open_scan",
    "open_or_create_scan",
    "atomic_update",
    "read_array",
]

SCHEMA_VERSION: int = 1
SCAN_KINDS = ("gradient", "random-1d", "random-2d", "interpolate")
_JSON_ATTRS = "_json_attrs"


class StoreError(ValueError):
    """A results file is missing, unreadable, or not what the caller expects."""


class ScanMismatchError(StoreError):
    """An existing scan file was made with other arguments than the ones given."""


# ----------------------------------------------------------------------------- atomic writes


def _tmp_path(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path}: directory {directory} is not writable")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_update(path: str, fresh: bool = False) -> Iterator[h5py.File]:
    """Open a writable copy of ``path`` (or an empty file when ``fresh`` or absent); on a clean
    exit the copy replaces ``path`` atomically, on an exception it is deleted and ``path`` is
    untouched."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    tmp = _tmp_path(path)
    try:
        if os.path.exists(path) and not fresh:
            _check_hdf5(path)
            shutil.copyfile(path, tmp)
            mode = "r+"
        else:
            mode = "w"
        with h5py.File(tmp, mode) as f:
            yield f
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _set_mode(tmp, path if mode == "r+" else None)
        os.replace(tmp, path)
        tmp = ""
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def _set_mode(tmp: str, like: str | None) -> None:
    """Give ``tmp`` (made 0600 by mkstemp) the mode of ``like``, or of a new file under the umask."""
    if like is not None:
        shutil.copymode(like, tmp)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _check_hdf5(path: str) -> None:
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} exists but is not an HDF5 file; refusing to overwrite it")


# ----------------------------------------------------------------------------- attributes


def _to_attr(value: Any) -> tuple[Any, bool]:
    """Return (value h5py can store, whether it was JSON-encoded)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value, False
    if isinstance(value, np.ndarray):
        value = value.tolist()
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True), True
    except TypeError as exc:
        raise StoreError(f"attribute value {value!r} is not JSON-serialisable") from exc


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return [_from_attr(v) for v in value.tolist()]
    return value


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    json_names = set(_read_json_names(obj))
    for key, value in attrs.items():
        if key == _JSON_ATTRS:
            raise StoreError(f"attribute name {_JSON_ATTRS!r} is reserved")
        stored, is_json = _to_attr(value)
        obj.attrs[key] = stored
        if is_json:
            json_names.add(key)
        else:
            json_names.discard(key)
    obj.attrs[_JSON_ATTRS] = json.dumps(sorted(json_names))


def _read_json_names(obj: h5py.HLObject) -> list[str]:
    raw = obj.attrs.get(_JSON_ATTRS)
    if raw is None:
        return []
    return list(json.loads(_from_attr(raw)))


def _get_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    json_names = set(_read_json_names(obj))
    out: dict[str, Any] = {}
    for key, value in obj.attrs.items():
        if key == _JSON_ATTRS:
            continue
        value = _from_attr(value)
        out[key] = json.loads(value) if key in json_names else value
    return out


def write_attrs(path: str, attrs: Mapping[str, Any], group: str = "/") -> None:
    """Set attributes of ``group`` (created if absent) in ``path`` (created if absent), atomically.

    Values must be JSON-able (numbers, strings, bools, lists, dicts, None, numpy scalars or
    arrays). A new file also gets ``schema_version``.
    """
    with atomic_update(path) as f:
        if "schema_version" not in f.attrs:
            _set_attrs(f, {"schema_version": SCHEMA_VERSION})
        _set_attrs(f.require_group(group), attrs)


# ----------------------------------------------------------------------------- rows


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
            _set_attrs(f, {"schema_version": SCHEMA_VERSION})
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
    dropped = sum(truncate_rows(path, group, "step", step) for group in ("steps", "probes", "grads"))
    return dropped + truncate_rows(path, "epochs", "epoch", epoch)


# ----------------------------------------------------------------------------- reading


def _read_group(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {"attrs": _get_attrs(g)}
    for key, obj in g.items():
        if isinstance(obj, h5py.Group):
            out[key] = _read_group(obj)
        else:
            value = obj[()]
            if obj.dtype.kind == "O" or h5py.check_string_dtype(obj.dtype) is not None:
                value = np.asarray(obj.asstr()[()], dtype=object)
            out[key] = value
    return out


def read(path: str) -> dict[str, Any]:
    """Read the whole file into nested dicts: ``{"attrs": {...}, "<group>": {"attrs": {...},
    "<dataset>": np.ndarray, "<subgroup>": {...}}}``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"results file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as f:
        return _read_group(f)


# ----------------------------------------------------------------------------- scans


def canonical_json(args: Mapping[str, Any]) -> str:
    """A canonical JSON text of ``args``: sorted keys, no spaces, tuples as lists, floats via
    ``repr`` (so 0.1 and 0.10 agree), numpy scalars as Python numbers."""

    def norm(v: Any) -> Any:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(dict(args)), sort_keys=True, separators=(",", ":"))


@dataclass
class ScanFile:
    """A scan held in memory and mirrored to ``path``.

    ``data[label][field]`` are float32 arrays of the grid's shape, NaN where not computed;
    :meth:`set_point` fills one point, :meth:`flush` writes the file atomically.
    """

    path: str
    kind: str
    dims: list[str]
    coords: dict[str, np.ndarray]
    labels: list[str]
    fields: list[str]
    data: dict[str, dict[str, np.ndarray]]
    attrs: dict[str, Any] = field(default_factory=dict)
    label_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    _dirty: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape: ``len(coords[d])`` for each dim."""
        return tuple(len(self.coords[d]) for d in self.dims)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    def missing(self, label: str | None = None) -> np.ndarray:
        """Flat (C-order) indices of points whose ``loss`` is NaN for ``label`` (any label if None)."""
        labels = [label] if label is not None else self.labels
        mask = np.zeros(self.shape, dtype=bool)
        for lab in labels:
            mask |= np.isnan(self.data[lab]["loss"])
        return np.flatnonzero(mask)

    def set_point(self, label: str, index: int | tuple[int, ...], values: Mapping[str, float]) -> None:
        """Store the values of one grid point (flat index or index tuple) for ``label``."""
        if isinstance(index, (int, np.integer)):
            index = np.unravel_index(int(index), self.shape)
        for name, value in values.items():
            if name not in self.data[label]:
                raise StoreError(f"scan field {name!r} is not one of {self.fields}")
            self.data[label][name][index] = np.float32(value)
        self._dirty = True

    def flush(self, complete: bool | None = None) -> None:
        """Write results (and ``complete``, label attrs) to ``path`` atomically."""
        if complete is not None:
            self.complete = bool(complete)
        with atomic_update(self.path) as f:
            for label in self.labels:
                g = f["results"][label]
                for name in self.fields:
                    g[name][...] = self.data[label][name]
                if self.label_attrs.get(label):
                    _set_attrs(g, self.label_attrs[label])
            _set_attrs(f, {"complete": self.complete})
        self._dirty = False

    def write_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set root attributes now (atomically)."""
        self.attrs.update(attrs)
        with atomic_update(self.path) as f:
            _set_attrs(f, attrs)


def _arg_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if canonical_json({"v": a.get(k)}) != canonical_json({"v": b.get(k)})]


def create_scan(
    path: str,
    *,
    kind: str,
    args: Mapping[str, Any],
    coords: Mapping[str, Sequence[float]],
    labels: Sequence[str],
    fields: Sequence[str] = ("loss",),
    attrs: Mapping[str, Any] | None = None,
    arrays: Mapping[str, tuple[np.ndarray, Mapping[str, Any]] | np.ndarray] | None = None,
) -> ScanFile:
    """Create (atomically, replacing nothing unless absent) a new scan file with NaN results.

    ``coords`` is ordered: its keys are the grid dims. ``arrays`` are extra datasets stored
    under ``/arrays`` (value or ``(value, attrs)``), e.g. the scan directions.
    """
    if kind not in SCAN_KINDS:
        raise StoreError(f"unknown scan kind {kind!r}; expected one of {', '.join(SCAN_KINDS)}")
    if os.path.exists(path):
        raise StoreError(f"{path} already exists")
    labels = [str(x) for x in labels]
    fields = [str(x) for x in fields]
    if not labels or len(set(labels)) != len(labels):
        raise StoreError(f"scan labels must be distinct and non-empty, got {labels}")
    if "loss" not in fields:
        fields = ["loss", *fields]
    dims = list(coords.keys())
    coord_arrays = {d: np.asarray(v, dtype=np.float32).reshape(-1) for d, v in coords.items()}
    shape = tuple(len(coord_arrays[d]) for d in dims)
    data = {lab: {name: np.full(shape, np.nan, dtype=np.float32) for name in fields} for lab in labels}
    root = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "complete": False,
        "args_json": canonical_json(args),
        "dims": dims,
        "labels": labels,
        "fields": fields,
        **dict(attrs or {}),
    }
    with atomic_update(path, fresh=True) as f:
        _set_attrs(f, root)
        gc = f.create_group("coords")
        for d in dims:
            gc.create_dataset(d, data=coord_arrays[d])
        gr = f.create_group("results")
        for lab in labels:
            g = gr.create_group(lab)
            for name in fields:
                ds = g.create_dataset(name, data=data[lab][name])
                _set_attrs(ds, {"dims": dims})
        if arrays:
            ga = f.create_group("arrays")
            for name, item in arrays.items():
                value, a_attrs = item if isinstance(item, tuple) else (item, {})
                ds = ga.create_dataset(name, data=np.asarray(value))
                _set_attrs(ds, a_attrs)
    return ScanFile(
        path=os.fspath(path), kind=kind, dims=dims, coords=coord_arrays, labels=labels,
        fields=fields, data=data, attrs=root,
    )


def open_scan(path: str, args: Mapping[str, Any] | None = None, kind: str | None = None) -> ScanFile:
    """Open an existing scan file for resuming. With ``args``/``kind`` given, refuse
    (:class:`ScanMismatchError`) a file made from other arguments."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"scan file {path} does not exist")
    _check_hdf5(path)
    try:
        with h5py.File(path, "r") as f:
            root = _get_attrs(f)
            if root.get("kind") not in SCAN_KINDS or "args_json" not in root:
                raise StoreError(f"{path} is not a landscape scan file; refusing to overwrite it")
            dims = list(root["dims"])
            labels = list(root["labels"])
            fields = list(root["fields"])
            coords = {d: np.asarray(f["coords"][d][()], dtype=np.float32) for d in dims}
            data = {
                lab: {name: np.asarray(f["results"][lab][name][()], dtype=np.float32) for name in fields}
                for lab in labels
            }
            label_attrs = {lab: _get_attrs(f["results"][lab]) for lab in labels}
    except (OSError, KeyError) as exc:
        raise StoreError(f"{path} is not a readable landscape scan file ({exc})") from exc
    if kind is not None and root["kind"] != kind:
        raise ScanMismatchError(
            f"{path} holds a scan of kind {root['kind']!r}, not {kind!r}; choose another --out or delete it"
        )
    if args is not None and canonical_json(args) != root["args_json"]:
        diff = _arg_diff(json.loads(root["args_json"]), json.loads(canonical_json(args)))
        raise ScanMismatchError(
            f"{path} holds a scan made with different arguments (differs in: {', '.join(diff)}); "
            "choose another --out or delete it"
        )
    return ScanFile(
        path=path, kind=root["kind"], dims=dims, coords=coords, labels=labels, fields=fields,
        data=data, attrs=root, label_attrs=label_attrs, complete=bool(root.get("complete", False)),
    )


def open_or_create_scan(
    path: str,
    *,
    kind: str,
    args: Mapping[str, Any],
    coords: Mapping[str, Sequence[float]],
    labels: Sequence[str],
    fields: Sequence[str] = ("loss",),
    attrs: Mapping[str, Any] | None = None,
    arrays: Mapping[str, Any] | None = None,
) -> tuple[ScanFile, bool]:
    """Resume ``path`` if it holds a scan of the same kind and arguments, else create it.

    Returns ``(scan, resumed)``. A file from other arguments raises :class:`ScanMismatchError`
    and is left untouched.
    """
    if os.path.exists(path):
        return open_scan(path, args=args, kind=kind), True
    return create_scan(path, kind=kind, args=args, coords=coords, labels=labels, fields=fields,
                       attrs=attrs, arrays=arrays), False


def read_array(path: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``/arrays/<name>`` of a scan file with its attributes."""
    with h5py.File(path, "r") as f:
        if "arrays" not in f or name not in f["arrays"]:
            raise StoreError(f"{path} has no stored array {name!r}")
        ds = f["arrays"][name]
        return np.asarray(ds[()]), _get_attrs(ds)

"""Scan files: a grid of points per scanned loss, filled point by point and resumable.

A :class:`ScanFile` holds the scan in memory and mirrors it to its file atomically. Whether a
point is computed is kept in its own mask (``/results/<label>/computed``, schema version 2), so
a computed value that is not finite (an overflow) is stored as it is and never mistaken for a
missing point; in files of version 1 a point is computed when its loss is not NaN.

Schema version 3 adds two things. A scan may have no grid (``dims = []``, e.g. the Hessian's
spectrum): each label then holds one record, its fields are scalars and its ``computed`` mask
is a single flag, and the unit of work is the label (:meth:`ScanFile.missing` gives the
positions of the labels not computed). And each label may hold *label arrays*, float64 datasets
of any shape named in the root attribute ``label_arrays`` (e.g. eigenvalues, a density), written
with the point or record that computes them, beside label attributes set at the same time.
:func:`open_or_create_scan` resumes a file made with the same arguments and refuses
(:class:`ScanMismatchError`) one made with others. Layout in ``docs/schema.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from common.store.files import (
    SCHEMA_VERSION,
    StoreError,
    atomic_update,
    canonical_json,
    check_hdf5,
    check_version,
    get_attrs,
    set_attrs,
)
from common.store.lock import Stamp, WriterLock, check_stamp, stamp_of


class ScanMismatchError(StoreError):
    """An existing scan file was made with other arguments than the ones given."""


@dataclass
class ScanFile:
    """A scan held in memory and mirrored to ``path``.

    ``data[label][field]`` are float32 arrays of the grid's shape (NaN where not computed) and
    ``computed[label]`` a bool array of the same shape (0-d in a scan without a grid);
    ``label_data[label][name]`` the label arrays set so far (names in ``label_arrays``);
    :meth:`set_point` fills one point (or one label's record), :meth:`flush` writes the file
    atomically.
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
    computed: dict[str, np.ndarray] = field(default_factory=dict)
    dirty: bool = False
    """True while points set since the last :meth:`flush` are not on disk yet."""
    label_arrays: list[str] = field(default_factory=list)
    label_data: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stamp: Stamp | None = field(default=None, repr=False, compare=False)
    """Identity of the file as this writer last wrote or read it; a flush refuses any other."""
    lock: WriterLock | None = field(default=None, repr=False, compare=False)
    """This process's writer lock on the file (:func:`open_or_create_scan` with ``lock=True``)."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape: ``len(coords[d])`` for each dim."""
        return tuple(len(self.coords[d]) for d in self.dims)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    @property
    def gridless(self) -> bool:
        """True for a scan without a grid (one record per label)."""
        return not self.dims

    def __post_init__(self) -> None:
        for lab in self.labels:  # version 1: computed = the loss is not NaN
            self.computed.setdefault(lab, np.array(~np.isnan(self.data[lab]["loss"])))
            self.label_data.setdefault(lab, {})

    def missing(self, label: str | None = None) -> np.ndarray:
        """Flat (C-order) indices of points not computed for ``label`` (for any label if None);
        in a scan without a grid, the positions in ``labels`` of the labels not computed."""
        labels = [label] if label is not None else self.labels
        if self.gridless:
            return np.asarray(
                [self.labels.index(lab) for lab in labels if not self.computed[lab]], dtype=np.int64
            )
        mask = np.zeros(self.shape, dtype=bool)
        for lab in labels:
            mask |= ~self.computed[lab]
        return np.flatnonzero(mask)

    def nonfinite(self, label: str) -> int:
        """How many computed points of ``label`` have a loss that is not finite (overflow)."""
        return int((self.computed[label] & ~np.isfinite(self.data[label]["loss"])).sum())

    def set_point(
        self, label: str, index: int | tuple[int, ...], values: Mapping[str, Any]
    ) -> None:
        """Store the values of one grid point (flat index or index tuple) for ``label``; in a scan
        without a grid, the label's record (``index``: its position in ``labels``, or ``()``).

        ``values`` maps fields to scalars and label arrays to arrays (stored as float64); the
        optional key ``"attrs"`` holds label attributes stored with them.
        """
        if self.gridless:
            if index not in ((), self.labels.index(label)):
                raise StoreError(
                    f"a scan without a grid has one record per label: {label!r} is record "
                    f"{self.labels.index(label)}, not {index!r}"
                )
            index = ()
        elif isinstance(index, (int, np.integer)):
            index = np.unravel_index(int(index), self.shape)
        for name, value in values.items():
            if name == "attrs":
                self.label_attrs.setdefault(label, {}).update(value)
            elif name in self.label_arrays:
                self.label_data[label][name] = np.asarray(value, dtype=np.float64)
            elif name in self.data[label]:
                self.data[label][name][index] = np.float32(value)
            else:
                raise StoreError(
                    f"scan field {name!r} is not one of {[*self.fields, *self.label_arrays]}"
                )
        self.computed[label][index] = True
        self.dirty = True

    def flush(self, complete: bool | None = None) -> None:
        """Write results (and ``complete``, label attrs) to ``path`` atomically."""
        if complete is not None:
            self.complete = bool(complete)
        with atomic_update(self.path, **self._guard()) as f:
            for label in self.labels:
                g = f["results"][label]
                for name in self.fields:
                    g[name][...] = self.data[label][name]
                if "computed" in g:
                    g["computed"][...] = self.computed[label].astype(np.uint8)
                else:  # a version-1 file gains the mask
                    _mask_dataset(g, self.computed[label], self.dims)
                for name, value in self.label_data[label].items():
                    if name in g and (g[name].shape != value.shape or g[name].dtype != value.dtype):
                        del g[name]
                    if name in g:
                        g[name][...] = value
                    else:
                        g.create_dataset(name, data=value)
                if self.label_attrs.get(label):
                    set_attrs(g, self.label_attrs[label])
            set_attrs(f, {"complete": self.complete, "schema_version": SCHEMA_VERSION})
        self.dirty = False

    def write_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set root attributes now (atomically)."""
        self.attrs.update(attrs)
        with atomic_update(self.path, **self._guard()) as f:
            set_attrs(f, attrs)

    def _guard(self) -> dict[str, Any]:
        """The checks of :func:`atomic_update` that keep this writer to its own file: the file
        rewritten must be the version this writer last wrote or read (else
        :class:`~common.store.lock.FileChangedError`, the file left as it is), and the new
        version becomes the one expected next."""

        def check(st: os.stat_result | None) -> None:
            check_stamp(self.path, self.stamp, st)

        def written(st: os.stat_result) -> None:
            self.stamp = stamp_of(st)

        return {"check": check, "written": written}

    def close(self) -> None:
        """Release the writer lock (the file stays as last flushed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _mask_dataset(group: h5py.Group, mask: np.ndarray, dims: Sequence[str]) -> None:
    ds = group.create_dataset("computed", data=np.asarray(mask, dtype=np.uint8))
    set_attrs(ds, {"dims": list(dims)})


def _arg_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if canonical_json({"v": a.get(k)}) != canonical_json({"v": b.get(k)})]


def _checked_names(
    labels: Sequence[str], fields: Sequence[str], label_arrays: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """A new scan's labels (distinct, at least one), fields (``loss`` first when missing) and
    per-label array names (distinct, none a field's name), as strings; StoreError otherwise."""
    labels = [str(x) for x in labels]
    fields = [str(x) for x in fields]
    if not labels or len(set(labels)) != len(labels):
        raise StoreError(f"scan labels must be distinct and non-empty, got {labels}")
    if "loss" not in fields:
        fields = ["loss", *fields]
    label_arrays = [str(x) for x in label_arrays]
    if set(label_arrays) & {*fields, "computed", "attrs"} or len(set(label_arrays)) != len(
        label_arrays
    ):
        raise StoreError(
            f"label arrays {label_arrays} must be distinct and differ from the fields {fields}"
        )
    return labels, fields, label_arrays


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
    label_arrays: Sequence[str] = (),
) -> ScanFile:
    """Create (atomically, replacing nothing unless absent) a new scan file with NaN results and
    nothing computed.

    ``coords`` is ordered: its keys are the grid dims (none: a scan without a grid, one record
    per label). ``arrays`` are extra datasets stored under ``/arrays`` (value or
    ``(value, attrs)``), e.g. the scan directions. ``label_arrays`` names the per-label arrays
    of any shape that points will set (root attribute ``label_arrays``).
    """
    if not isinstance(kind, str) or not kind:
        raise StoreError(f"a scan needs a kind (a non-empty name), got {kind!r}")
    if os.path.exists(path):
        raise StoreError(f"{path} already exists")
    labels, fields, label_arrays = _checked_names(labels, fields, label_arrays)
    dims = list(coords.keys())
    coord_arrays = {d: np.asarray(v, dtype=np.float32).reshape(-1) for d, v in coords.items()}
    shape = tuple(len(coord_arrays[d]) for d in dims)
    data = {
        lab: {name: np.full(shape, np.nan, dtype=np.float32) for name in fields} for lab in labels
    }
    root = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "complete": False,
        "args_json": canonical_json(args),
        "dims": dims,
        "labels": labels,
        "fields": fields,
        **({"label_arrays": label_arrays} if label_arrays else {}),
        **dict(attrs or {}),
    }
    stamps: list[Stamp] = []
    with atomic_update(path, fresh=True, written=lambda st: stamps.append(stamp_of(st))) as f:
        set_attrs(f, root)
        gc = f.create_group("coords")
        for d in dims:
            gc.create_dataset(d, data=coord_arrays[d])
        gr = f.create_group("results")
        for lab in labels:
            g = gr.create_group(lab)
            for name in fields:
                ds = g.create_dataset(name, data=data[lab][name])
                set_attrs(ds, {"dims": dims})
            _mask_dataset(g, np.zeros(shape, dtype=bool), dims)
        if arrays:
            ga = f.create_group("arrays")
            for name, item in arrays.items():
                value, a_attrs = item if isinstance(item, tuple) else (item, {})
                ds = ga.create_dataset(name, data=np.asarray(value))
                set_attrs(ds, a_attrs)
    return ScanFile(
        path=os.fspath(path),
        kind=kind,
        dims=dims,
        coords=coord_arrays,
        labels=labels,
        fields=fields,
        data=data,
        attrs=root,
        label_arrays=label_arrays,
        stamp=stamps[-1],
    )


def open_scan(
    path: str, args: Mapping[str, Any] | None = None, kind: str | None = None
) -> ScanFile:
    """Open an existing scan file for resuming. With ``args``/``kind`` given, refuse
    (:class:`ScanMismatchError`) a file made from other arguments."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"scan file {path} does not exist")
    check_hdf5(path)
    before = os.stat(path)
    try:
        with h5py.File(path, "r") as f:
            check_version(path, f)
            root = get_attrs(f)
            if "args_json" not in root or "dims" not in root:
                raise StoreError(f"{path} is not a landscape scan file; refusing to overwrite it")
            dims = list(root["dims"])
            labels = list(root["labels"])
            fields = list(root["fields"])
            coords = {d: np.asarray(f["coords"][d][()], dtype=np.float32) for d in dims}
            data = {
                lab: {
                    name: np.asarray(f["results"][lab][name][()], dtype=np.float32)
                    for name in fields
                }
                for lab in labels
            }
            label_attrs = {lab: get_attrs(f["results"][lab]) for lab in labels}
            label_arrays = [str(x) for x in root.get("label_arrays", [])]
            label_data = {
                lab: {
                    name: np.asarray(f["results"][lab][name][()], dtype=np.float64)
                    for name in label_arrays
                    if name in f["results"][lab]
                }
                for lab in labels
            }
            computed = {
                lab: np.asarray(f["results"][lab]["computed"][()], dtype=bool)
                for lab in labels
                if "computed" in f["results"][lab]
            }
    except (OSError, KeyError) as exc:
        raise StoreError(f"{path} is not a readable landscape scan file ({exc})") from exc
    try:
        check_stamp(path, stamp_of(before), os.stat(path))
    except FileNotFoundError:
        check_stamp(path, stamp_of(before), None)
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
        path=path,
        kind=root["kind"],
        dims=dims,
        coords=coords,
        labels=labels,
        fields=fields,
        data=data,
        attrs=root,
        label_attrs=label_attrs,
        complete=bool(root.get("complete", False)),
        computed=computed,
        label_arrays=label_arrays,
        label_data=label_data,
        stamp=stamp_of(before),
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
    label_arrays: Sequence[str] = (),
    lock: bool = False,
) -> tuple[ScanFile, bool]:
    """Resume ``path`` if it holds a scan of the same kind and arguments, else create it.

    Returns ``(scan, resumed)``. A file from other arguments raises :class:`ScanMismatchError`
    and is left untouched. With ``lock``, the scan holds the file's writer lock
    (:class:`~common.store.lock.WriterLock`) until :meth:`ScanFile.close`: a second writer
    is refused with :class:`~common.store.lock.FileBusyError` before it reads anything.
    """
    held = WriterLock(path).acquire() if lock else None
    try:
        if os.path.exists(path):
            scan, resumed = open_scan(path, args=args, kind=kind), True
        else:
            scan = create_scan(
                path,
                kind=kind,
                args=args,
                coords=coords,
                labels=labels,
                fields=fields,
                attrs=attrs,
                arrays=arrays,
                label_arrays=label_arrays,
            )
            resumed = False
    except BaseException:
        if held is not None:
            held.release()
        raise
    scan.lock = held
    return scan, resumed


def read_array(path: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``/arrays/<name>`` of a scan file with its attributes."""
    with h5py.File(path, "r") as f:
        if "arrays" not in f or name not in f["arrays"]:
            raise StoreError(f"{path} has no stored array {name!r}")
        ds = f["arrays"][name]
        return np.asarray(ds[()]), get_attrs(ds)

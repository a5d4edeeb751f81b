"""The HDF5 store: one file per training run, scan or certification, written atomically.

The layout of every file (its root attributes, groups and columns) is documented once, in
``docs/schema.md``. This package is a leaf: it imports only h5py, numpy and the standard
library (never torch, never another module of the toolkit), so ``figures`` can read results
without the rest.

- :mod:`common.store.files`: atomic writes, attribute encoding, :func:`read`,
  :func:`write_attrs`;
- :mod:`common.store.rows`: growing columns (:func:`append_rows`) and cutting them back to
  a checkpoint (:func:`truncate_run`);
- :mod:`common.store.scans`: :class:`ScanFile`, created, resumed and filled point by point;
- :mod:`common.store.lock`: one writer per file (:class:`WriterLock`) and the identity check
  that keeps a writer from rewriting a file someone else changed.

Reading: :func:`read` returns nested dicts, ``{"attrs": {...}, "results": {"crown-ibp":
{"attrs": {...}, "loss": array, ...}}, "coords": {...}}``.
"""

from common.store.files import (
    SCHEMA_VERSION,
    DiskFullError,
    StoreError,
    atomic_path,
    atomic_update,
    canonical_json,
    read,
    write_attrs,
)
from common.store.lock import FileBusyError, FileChangedError, WriterLock
from common.store.rows import append_rows, truncate_rows, truncate_run
from common.store.scans import (
    ScanFile,
    ScanMismatchError,
    create_scan,
    open_or_create_scan,
    open_scan,
    read_array,
)

__all__ = [
    "SCHEMA_VERSION",
    "StoreError",
    "DiskFullError",
    "FileBusyError",
    "FileChangedError",
    "WriterLock",
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
    "atomic_path",
    "read_array",
]

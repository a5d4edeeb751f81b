"""Atomic writes, attribute encoding and reading of the toolkit's HDF5 files.

Every write goes to a temporary file in the same directory (a copy of the old file, changed
there) which then replaces the old file with ``os.replace``; a crash at any moment leaves
either the old file or the new one, never a half-written mix (:func:`atomic_path`, which the
figures use too). A temporary left behind by a killed writer is removed by the next write of
the same file, and a full disk is one :class:`DiskFullError` naming the file.

Attributes hold ints, floats, bools and strings natively; lists, dicts and ``None`` are stored
as JSON strings and their names listed in the attribute ``_json_attrs`` (:func:`get_attrs`
decodes them).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION: int = 3
"""Version of the layout described in ``docs/schema.md`` (2: scans keep a ``computed`` mask;
3: scans without a grid and per-label arrays; files of versions 1 and 2 are still read)."""

_JSON_ATTRS = "_json_attrs"


class StoreError(ValueError):
    """A results file is missing, unreadable, or not what the caller expects."""


class DiskFullError(OSError):
    """A write failed because the file system is full (or refused the file's size); the target
    file is left as it was."""

    def __str__(self) -> str:
        return str(self.strerror)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
STALE_SECONDS = 600.0
"""A temporary whose writer cannot be identified is stale after this long."""


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that means the file system has no room left for a write."""
    return (isinstance(exc, OSError) and exc.errno in _FULL) or "No space left on device" in str(
        exc
    )


def disk_full_error(path: str | os.PathLike) -> DiskFullError:
    """The one error every writer raises when the disk is full."""
    return DiskFullError(
        errno.ENOSPC,
        f"cannot write {os.fspath(path)}: the disk is full (no space left on device); "
        "free some space and run the command again",
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries ``.NAME.<pid>.<random>.tmp`` of ``path`` whose writing process is
    gone (killed mid-write), and older ones without a process id after :data:`STALE_SECONDS`.
    Returns the removed paths."""
    target = Path(path)
    removed = []
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        middle = tmp.name[len(target.name) + 2 : -len(".tmp")]
        pid = middle.split(".", 1)[0]
        if pid.isdigit() and "." in middle:
            stale = not _pid_alive(int(pid))
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > STALE_SECONDS
            except FileNotFoundError:
                continue
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def written_path(path: str | os.PathLike) -> str:
    """The file a write of ``path`` changes: ``path`` itself, or for a symbolic link the file it
    points to (resolved through every link), so that a link is written through, never replaced
    by a plain file while its target goes stale."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else path


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike,
    like: str | os.PathLike | None = None,
    written: Callable[[os.stat_result], None] | None = None,
) -> Iterator[str]:
    """A temporary path beside ``path`` to write the new file to; on a clean exit it replaces
    ``path`` atomically (with the mode of ``like``, or of a new file under the umask), on an
    exception it is deleted and ``path`` is untouched. Stale temporaries of ``path`` are removed
    first; a full disk raises :class:`DiskFullError`. A symbolic link is written through: its
    target is replaced, the link stays (:func:`written_path`). ``written`` is called with the stat of the
    finished temporary just before it replaces ``path`` (its identity as the new file)."""
    path = written_path(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path}: directory {directory} is not writable")
    remove_stale_temporaries(path)
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _set_mode(tmp, like)
        if written is not None:
            written(os.stat(tmp))
        os.replace(tmp, path)
        tmp = ""
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_update(
    path: str,
    fresh: bool = False,
    check: Callable[[os.stat_result | None], None] | None = None,
    written: Callable[[os.stat_result], None] | None = None,
) -> Iterator[h5py.File]:
    """Open a writable copy of ``path`` (or an empty file when ``fresh`` or absent); on a clean
    exit the copy replaces ``path`` atomically, on an exception it is deleted and ``path`` is
    untouched (:func:`atomic_path`). The copy is changed in memory and written with plain file
    I/O, so a full disk fails cleanly instead of inside the HDF5 library.

    ``check(stat)`` sees the stat of the very file whose bytes are copied (None if there is
    none) and may raise to refuse it; ``written(stat)``, the new file's (see :func:`atomic_path`):
    together they let a writer make sure it rewrites only its own last version."""
    path = os.fspath(path)
    update = os.path.exists(path) and not os.path.isdir(path) and not fresh
    if update:
        check_hdf5(path)
    raw = b""
    if update:
        try:
            with open(path, "rb") as fh:
                if check is not None:
                    check(os.fstat(fh.fileno()))
                raw = fh.read()
        except FileNotFoundError:
            if check is not None:
                check(None)
            raise
    elif check is not None and not fresh:
        check(None)
    image = io.BytesIO(raw)
    with h5py.File(image, "r+" if update else "w") as f:
        if update:
            check_version(path, f)
        yield f
    with atomic_path(path, like=path if update else None, written=written) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(image.getbuffer())


def _set_mode(tmp: str, like: str | os.PathLike | None) -> None:
    """Give ``tmp`` the mode of ``like``, or of a new file under the umask."""
    if like is not None:
        shutil.copymode(like, tmp)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def check_version(path: str | os.PathLike, f: h5py.File) -> None:
    """Refuse (StoreError) a file whose ``schema_version`` is newer than :data:`SCHEMA_VERSION`:
    this toolkit would misread it, and rewriting it would relabel it as an older layout."""
    raw = f.attrs.get("schema_version")
    if raw is None:
        return
    try:
        version = int(_from_attr(raw))
    except (TypeError, ValueError):
        raise StoreError(
            f"{os.fspath(path)} has a schema_version that is not a number ({_from_attr(raw)!r})"
        ) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{os.fspath(path)} has schema_version {version}, newer than this toolkit reads "
            f"({SCHEMA_VERSION}), so it is not supported; use a newer cert-landscape, or another file"
        )


def check_hdf5(path: str) -> None:
    """Refuse to touch ``path`` unless it is an HDF5 file (StoreError)."""
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} exists but is not an HDF5 file; refusing to overwrite it")


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


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
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


def get_attrs(obj: h5py.HLObject) -> dict[str, Any]:
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
            set_attrs(f, {"schema_version": SCHEMA_VERSION})
        set_attrs(f.require_group(group), attrs)


def _read_group(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {"attrs": get_attrs(g)}
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
        check_version(path, f)
        return _read_group(f)


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

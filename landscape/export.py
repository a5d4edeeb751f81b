"""Export 2D scans to formats other tools read: VTK XML files for ParaView, VisIt and VTK itself.

A 2D scan (root attribute ``dims`` of length 2, e.g. ``random-2d`` with dims ``["x", "y"]``;
layout in ``docs/schema.md``) holds, per label, ``loss`` [nx, ny] with element ``[i, j]`` at
``(x_i, y_j)``. For each label, :func:`export_scan` writes one VTK XML unstructured grid
(``.vtu``, written with pyevtk: raw binary appended data, little- or big-endian as the machine,
UInt64 block headers)::

    points   (x_i, y_j, loss_ij)            the surface z = loss, float64
    cells    VTK_QUAD (i, j) (i+1, j) (i+1, j+1) (i, j+1)   for every grid square whose four
             corners are computed; VTK_VERTEX for a computed point in no such square
    point data
        loss       float32, the stored value
        log_loss   float32, ln(max(loss, 1e-12)) (with ``log=True`` only)
        i, j       int32, the grid indices of the point

Only computed points are written: a point whose loss is not finite (NaN marks a point not yet
computed, see ``docs/schema.md``; an infinite loss cannot be drawn) is left out, with every
square that touches it, so a partial scan shows as a surface with holes. A label without any
computed point gets no file.

File names: ``<out_dir>/<scan file stem>_<label>.vtu`` (characters other than letters, digits,
``.``, ``_`` and ``-`` in the label become ``_``). Each file is written under a temporary name
in ``out_dir`` and moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from common import store

__all__ = ["EXPORT_FORMATS", "LOG_FLOOR", "export_scan", "surface_cells", "write_vtk_surface"]

EXPORT_FORMATS: tuple[str, ...] = ("vtk",)
"""Formats of ``landscape export``: ``vtk`` (one ``.vtu`` file per label)."""

LOG_FLOOR = 1e-12
"""``log_loss = ln(max(loss, LOG_FLOOR))``, so a zero loss stays finite."""

VTK_VERTEX, VTK_QUAD = 1, 9


def surface_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells of the computed part of a grid.

    Args:
        mask: bool [nx, ny], True where the point is computed.

    Returns:
        ``(ids, connectivity, offsets, types)``: ``ids`` int64 [nx, ny], the point number of
        each computed point (C order over ``(i, j)``) and -1 elsewhere; ``connectivity`` the
        point numbers of every cell, one after another; ``offsets`` [n_cells] the end of each
        cell in ``connectivity``; ``types`` uint8 [n_cells], ``VTK_QUAD`` for each square with
        four computed corners, then ``VTK_VERTEX`` for each computed point in no such square.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"need a 2D mask, got shape {mask.shape}")
    ids = np.full(mask.shape, -1, dtype=np.int64)
    ids[mask] = np.arange(int(mask.sum()))
    full = mask[:-1, :-1] & mask[1:, :-1] & mask[1:, 1:] & mask[:-1, 1:]
    quads = np.stack(
        [ids[:-1, :-1][full], ids[1:, :-1][full], ids[1:, 1:][full], ids[:-1, 1:][full]], axis=1
    )
    covered = np.zeros(mask.shape, dtype=bool)
    for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
        covered[di : di + full.shape[0], dj : dj + full.shape[1]] |= full
    lonely = ids[mask & ~covered]
    connectivity = np.concatenate([quads.reshape(-1), lonely]).astype(np.int64)
    sizes = np.concatenate([np.full(len(quads), 4), np.ones(len(lonely))]).astype(np.int64)
    types = np.concatenate(
        [np.full(len(quads), VTK_QUAD), np.full(len(lonely), VTK_VERTEX)]
    ).astype(np.uint8)
    return ids, connectivity, np.cumsum(sizes).astype(np.int64), types


def write_vtk_surface(
    path: str | os.PathLike, x: np.ndarray, y: np.ndarray, loss: np.ndarray, log: bool = False
) -> Path | None:
    """Write the surface z = ``loss`` [nx, ny] over the grid ``x`` [nx], ``y`` [ny] to
    ``path`` (a ``.vtu`` file; layout in the module docstring). Returns the path, or None
    (nothing written) when no point is computed."""
    from pyevtk.hl import unstructuredGridToVTK

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    loss = np.asarray(loss)
    if loss.shape != (len(x), len(y)):
        raise ValueError(f"the loss has shape {loss.shape}, the grid is {len(x)} x {len(y)}")
    mask = np.isfinite(loss)
    if not mask.any():
        return None
    ids, connectivity, offsets, types = surface_cells(mask)
    ii, jj = np.nonzero(mask)  # C order, matching the point numbers
    values = loss[mask].astype(np.float32)
    point_data = {"loss": values, "i": ii.astype(np.int32), "j": jj.astype(np.int32)}
    if log:
        point_data["log_loss"] = np.log(np.maximum(values.astype(np.float64), LOG_FLOOR)).astype(
            np.float32
        )
    path = Path(path)
    if path.suffix != ".vtu":
        raise ValueError(f"a VTK unstructured grid file ends in .vtu, got {path.name!r}")
    target = Path(store.files.written_path(path))  # a link is written through
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", dir=target.parent)
        os.close(fd)
        os.remove(tmp)  # pyevtk writes tmp + ".vtu" itself
    except OSError as exc:
        if store.files.is_disk_full(exc):
            raise store.files.disk_full_error(path) from None
        raise
    written = tmp + ".vtu"
    try:
        written = unstructuredGridToVTK(
            tmp,
            np.ascontiguousarray(x[ii]),
            np.ascontiguousarray(y[jj]),
            values.astype(np.float64),
            connectivity=connectivity,
            offsets=offsets,
            cell_types=types,
            pointData=point_data,
        )
        os.chmod(written, 0o666 & ~_umask())
        os.replace(written, target)
        written = ""
    except OSError as exc:
        if store.files.is_disk_full(exc):
            raise store.files.disk_full_error(path) from None
        raise
    finally:
        if written and os.path.exists(written):
            os.remove(written)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _group(results: dict, label: str) -> dict | None:
    """The results group of ``label`` in :func:`store.read`'s nested dicts (a ``/`` in a label
    is a path of groups in HDF5); None if absent."""
    g: object = results
    for part in label.split("/"):
        if not isinstance(g, dict) or part not in g:
            return None
        g = g[part]
    return g if isinstance(g, dict) else None


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)


def export_scan(
    scan_path: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "vtk", log: bool = False
) -> dict[str, Path | None]:
    """Export every label of the 2D scan ``scan_path`` into ``out_dir`` (created if absent).

    Returns ``{label: path}`` in the scan's label order, ``None`` for a label with no computed
    point. Raises ``ValueError`` for an unknown ``fmt`` or a file that is not a 2D scan, and
    ``FileNotFoundError`` for a missing file.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    scan_path = Path(scan_path)
    if not scan_path.exists():
        raise FileNotFoundError(f"scan file {scan_path} does not exist")
    if scan_path.is_dir():
        raise ValueError(f"{scan_path} is a directory, not a scan file")
    data = store.read(scan_path)
    attrs = data["attrs"]
    dims = attrs.get("dims")
    kind = attrs.get("kind", "unknown")
    if not isinstance(dims, list) or "results" not in data or "coords" not in data:
        raise ValueError(
            f"{scan_path} is not a scan file (kind {kind!r}); export needs a 2D scan such as random-2d"
        )
    if len(dims) != 2:
        raise ValueError(
            f"{scan_path} is a {kind} scan over ({', '.join(dims)}), not a 2D scan; "
            "export needs a scan over two axes such as random-2d"
        )
    x, y = data["coords"][dims[0]], data["coords"][dims[1]]
    labels = [str(lab) for lab in attrs.get("labels", [])]
    groups = {lab: _group(data["results"], lab) for lab in labels}
    missing = [lab for lab, g in groups.items() if g is None or "loss" not in g]
    if missing:
        raise ValueError(
            f"{scan_path} is damaged: its attribute 'labels' names {missing[0]!r}, which has no "
            f"/results/{missing[0]}/loss"
        )
    names: dict[str, str] = {}
    for label in labels:
        name = f"{scan_path.stem}_{_safe(label)}.vtu"
        if name in names:
            raise ValueError(
                f"{scan_path}: labels {names[name]!r} and {label!r} would both be written to {name}"
            )
        names[name] = label
    if not any(
        np.isfinite(np.asarray(groups[lab]["loss"], dtype=np.float64)).any() for lab in labels
    ):
        raise ValueError(
            f"{scan_path} has no computed point in any of its labels; nothing to export"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for label in labels:
        target = out / f"{scan_path.stem}_{_safe(label)}.vtu"
        written[label] = write_vtk_surface(target, x, y, groups[label]["loss"], log=log)
    return written

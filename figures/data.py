"""Read a result file into the small, plot-ready records the figure modules draw.

Every file the toolkit writes is an HDF5 file with a root attribute ``kind`` and a
``schema_version``; its layout is ``docs/schema.md`` and :mod:`common.store` its reader. This module is
the one place in :mod:`figures` that knows the layout: it turns ``store.read(path)`` into the
records of :mod:`figures.records` (re-exported here):

* :class:`Meta` - what made the file (kind, method, eps, checkpoint, dataset, model);
* :class:`LineScan` - a 1D scan (``gradient``, ``random-1d``, ``interpolate``): one
  coordinate axis and, per scanned loss (method), the arrays along it;
* :class:`SurfaceScan` - a ``random-2d`` or ``pca`` scan: two axes and one grid per method
  (and a PCA scan's trajectory and explained variance);
* :class:`SpectrumScan` - a ``hessian`` scan: eigenvalues, trace and density per method;
* :class:`TrainRun` - a training run (``train``): per-step scalars, per-epoch metrics and
  the training probes (gradient scans every N steps, relaxation statistics);
* :class:`CertifyResult` - rows of clean / PGD / verified error per method and eps
  (files of kind ``certify``, as written by ``landscape reproduce``).

Anything a figure needs that the file lacks gives one ValueError that names the file and
the missing array, and so does a ``schema_version`` this toolkit cannot read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from common import store
from common.names import FILE_KINDS, SCAN_KINDS
from figures.records import (
    CertifyResult,
    LineScan,
    Meta,
    Record,
    SpectrumScan,
    SurfaceScan,
    TrainRun,
)

__all__ = [
    "load",
    "read_raw",
    "check_header",
    "supported_schema_versions",
    "Meta",
    "LineScan",
    "SurfaceScan",
    "SpectrumScan",
    "TrainRun",
    "CertifyResult",
    "Record",
]


# --------------------------------------------------------------------------- reading


def supported_schema_versions() -> tuple[int, ...]:
    """Schema versions figures can read: those up to the store's current one."""
    return tuple(range(1, int(store.SCHEMA_VERSION) + 1))


def read_raw(path: str | Path) -> dict:
    """``store.read(path)`` with a clear error for a missing, unreadable or foreign file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"result file {p} does not exist")
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not an HDF5 result file")
    try:
        raw = store.read(p)
    except (OSError, KeyError) as exc:
        raise ValueError(f"{p} is not a readable HDF5 result file ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: the store returned no data")
    return raw


def _decode(value: Any) -> Any:
    """Attribute values as plain Python: bytes -> str, JSON strings of lists/dicts -> objects,
    0-d arrays -> scalars."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _attrs(node: dict) -> dict:
    return {k: _decode(v) for k, v in dict(node.get("attrs", {}) or {}).items()}


def _arrays(node: dict) -> dict[str, np.ndarray]:
    """The datasets directly in a group (not sub-groups, not attrs)."""
    return {k: np.asarray(v) for k, v in node.items() if k != "attrs" and not isinstance(v, dict)}


def _groups(node: dict) -> dict[str, dict]:
    return {k: v for k, v in node.items() if k != "attrs" and isinstance(v, dict)}


# --------------------------------------------------------------------------- helpers


def _meta(path: Path, attrs: dict) -> Meta:
    kind = attrs.get("kind")
    method = attrs.get("method")
    if isinstance(method, (list, tuple)):
        method = ",".join(map(str, method))
    eps = attrs.get("eps")
    try:
        eps = None if eps is None else float(eps)
    except (TypeError, ValueError):
        eps = None
    checkpoint = attrs.get("checkpoint") or attrs.get("checkpoint_path") or None
    return Meta(
        path=path,
        kind=str(kind),
        method=None if method is None else str(method),
        eps=eps,
        checkpoint=None if checkpoint is None else str(checkpoint),
        dataset=attrs.get("dataset"),
        model=attrs.get("model"),
        attrs=attrs,
    )


def _need(arrays: dict, names: tuple[str, ...], path: Path, where: str) -> np.ndarray:
    """The first of ``names`` present in ``arrays``; otherwise one clear ValueError."""
    for name in names:
        if name in arrays:
            return np.asarray(arrays[name], dtype=float)
    raise ValueError(f"{path}: missing array {where}/{names[0]} needed to plot this file")


def _first(arrays: dict, names: tuple[str, ...]) -> np.ndarray | None:
    for name in names:
        if name in arrays:
            return np.asarray(arrays[name], dtype=float)
    return None


def check_header(path: Path, raw: dict) -> dict:
    """Root attrs after checking ``kind`` and ``schema_version``; ValueError otherwise."""
    attrs = _attrs(raw)
    if "schema_version" not in attrs:
        raise ValueError(f"{path}: no schema_version attribute; not a file written by this toolkit")
    try:
        version = int(attrs["schema_version"])
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: schema_version {attrs['schema_version']!r} is not an integer"
        ) from None
    supported = supported_schema_versions()
    if version not in supported:
        raise ValueError(
            f"{path}: schema_version {version} is not supported by this toolkit "
            f"(it reads versions {supported[0]}..{supported[-1]}); upgrade cert-landscape"
        )
    kind = attrs.get("kind")
    if kind not in FILE_KINDS and kind not in SCAN_KINDS:  # a kind added since names loaded
        raise ValueError(
            f"{path}: unknown result kind {kind!r}; expected one of {', '.join(FILE_KINDS)}"
        )
    return attrs


# --------------------------------------------------------------------------- per kind

_LINE_FIELDS = {
    "loss": ("loss",),
    "cosine": ("cos", "cosine", "grad_cosine"),
    "rms": ("rms", "grad_rms"),
    "smoothness": ("smoothness",),
    "grad_norm": ("grad_norm",),
    "sign_flip": ("sign_flip",),
    "a_sign": ("a_sign",),
    "clean_err": ("clean_err",),
    "pgd_err": ("pgd_err",),
    "verified_err": ("verified_err",),
}


def _scan_grid(
    path: Path, raw: dict, attrs: dict, n_dims: int
) -> tuple[list[str], list[np.ndarray]]:
    """Names and coordinates of the grid axes (``/coords/<dim>`` in the order of attr ``dims``)."""
    coords = _groups(raw).get("coords")
    if coords is None:
        raise ValueError(f"{path}: missing group coords/ (the scan's axis coordinates)")
    dims = attrs.get("dims")
    if not isinstance(dims, list) or not dims:
        dims = [k for k in _arrays(coords)]
    if len(dims) != n_dims:
        raise ValueError(
            f"{path}: a {attrs.get('kind')} scan needs {n_dims} grid axes, the file has {len(dims)} ({dims})"
        )
    arrays = _arrays(coords)
    return [str(d) for d in dims], [_need(arrays, (str(d),), path, "coords") for d in dims]


def _scan_results(path: Path, raw: dict, shape: tuple[int, ...]) -> dict[str, dict]:
    """``/results/<label>`` groups as dicts of arrays (each checked against the grid shape),
    with the group attrs (scalar summaries such as ``loss_variation``) under ``"attrs"``."""
    results = _groups(raw).get("results")
    if results is None or not _groups(results):
        raise ValueError(f"{path}: missing group results/<label>/ (the scanned losses)")
    out = {}
    for label, node in _groups(results).items():
        arrays = _arrays(node)
        loss = _need(arrays, ("loss",), path, f"results/{label}")
        if loss.shape != shape:
            raise ValueError(
                f"{path}: results/{label}/loss has shape {loss.shape}, expected the grid shape {shape}"
            )
        out[label] = {
            **{k: np.asarray(v, dtype=float) for k, v in arrays.items()},
            "attrs": _attrs(node),
        }
    return out


def _line_scan(path: Path, raw: dict, meta: Meta) -> LineScan:
    kind = meta.kind
    dims, (coord,) = _scan_grid(path, raw, meta.attrs, 1)
    series: dict[str, dict[str, np.ndarray]] = {}
    results = _scan_results(path, raw, (coord.size,))
    for label, arrays in results.items():
        entry: dict[str, np.ndarray] = {}
        for key, names in _LINE_FIELDS.items():
            value = _first(arrays, names)
            if value is not None and value.shape == coord.shape:
                entry[key] = value
        series[label] = entry
    label = SCAN_KINDS[kind].axis
    if kind == "random-1d" and dims[0] not in ("x", "alpha"):
        label = f"{dims[0]} (× random direction)"
    return LineScan(
        meta=meta, coord=coord, coord_label=label, series=series, n_computed=_n_computed(results)
    )


def _surface_scan(path: Path, raw: dict, meta: Meta) -> SurfaceScan:
    _, (x, y) = _scan_grid(path, raw, meta.attrs, 2)
    results = _scan_results(path, raw, (x.size, y.size))
    scan = SurfaceScan(
        meta=meta,
        x=x,
        y=y,
        loss={label: r["loss"] for label, r in results.items()},
        n_computed=_n_computed(results),
    )
    for r in results.values():  # the model's errors at each point, the same under every label
        found = {
            f: r[f]
            for f in ("clean_err", "pgd_err", "verified_err")
            if f in r and r[f].shape == (x.size, y.size)
        }
        if found:
            scan.errors = found
            break
    if meta.kind == "pca":
        path_xy = _need(_arrays(_groups(raw).get("arrays", {})), ("trajectory",), path, "arrays")
        ratios = [float(v) for v in (meta.attrs.get("explained_variance") or [np.nan, np.nan])]
        if path_xy.ndim != 2 or path_xy.shape[1] != 2:
            raise ValueError(
                f"{path}: arrays/trajectory has shape {path_xy.shape}, expected [n_checkpoints, 2]"
            )
        steps = _trajectory_steps(path, len(path_xy))
        for label in scan.loss:
            scan.paths[label], scan.variance[label] = path_xy, ratios
            scan.path_steps[label] = steps
    return scan


def _trajectory_steps(path: Path, n: int) -> np.ndarray:
    """The training step of each checkpoint of a PCA scan's path (attribute ``steps`` of
    ``arrays/trajectory``); NaN where the file does not say."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f["arrays/trajectory"].attrs.get("steps")
        steps = _decode(value)
        out = np.asarray([np.nan if v is None else float(v) for v in steps], dtype=float)
    except (OSError, KeyError, TypeError, ValueError):
        return np.full(n, np.nan)
    return out if out.shape == (n,) else np.full(n, np.nan)


def _spectrum_scan(path: Path, raw: dict, meta: Meta) -> SpectrumScan:
    results = _groups(raw).get("results")
    if results is None or not _groups(results):
        raise ValueError(f"{path}: missing group results/<label>/ (the scanned losses)")
    spectra: dict[str, dict] = {}
    for label, node in _groups(results).items():
        arrays, attrs = _arrays(node), _attrs(node)
        if "computed" in arrays and not np.asarray(arrays["computed"]).any():
            continue  # not computed yet
        entry = {
            k: _need(arrays, (k,), path, f"results/{label}")
            for k in ("eigenvalues", "density_grid", "density")
        }
        entry.update(
            trace=float(attrs.get("trace", np.nan)),
            trace_stderr=float(attrs.get("trace_stderr", np.nan)),
            loss=float(np.asarray(arrays.get("loss", np.nan))),
        )
        for k in ("slq_nodes", "slq_weights"):  # to broaden every density of a figure alike
            if k in arrays:
                entry[k] = np.asarray(arrays[k], dtype=float)
        entry["density_sigma"] = float(attrs.get("density_sigma", np.nan))
        layers = _groups(node).get("layers") or {}
        entry["layers"] = {
            name: {k: np.asarray(v, dtype=float) for k, v in _arrays(rec).items()}
            for name, rec in _groups(layers).items()
        }
        spectra[label] = entry
    return SpectrumScan(meta=meta, spectra=spectra, n_computed=len(spectra))


def _n_computed(results: dict[str, dict]) -> int:
    """Points computed for any label: the ``computed`` mask (schema 2), else a loss that is not NaN."""
    total = 0
    for arrays in results.values():
        mask = arrays["computed"] > 0 if "computed" in arrays else ~np.isnan(arrays["loss"])
        total = max(total, int(np.count_nonzero(mask)))
    return total


def _probe_matrix(probes: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Turn the flat probe rows (one per probe and scan point, rows of one probe sharing
    ``step``) into ``[n_probes, n_t]`` matrices on the sorted union of the ``t`` values.

    Returns the matrices (``step`` as a 1-D column of the probe steps) and the t grid.
    Without a ``t`` column every column is returned as is (one row per probe).
    """
    cols = {k: np.asarray(v) for k, v in probes.items() if np.asarray(v).dtype.kind in "biuf"}
    if "step" not in cols or "t" not in cols or not cols["step"].size:
        return {k: np.asarray(v, dtype=float) for k, v in cols.items()}, None
    step = cols["step"].astype(float).reshape(-1)
    t = cols["t"].astype(float).reshape(-1)
    keep = np.isfinite(step) & np.isfinite(t)
    _, first = np.unique(step[keep], return_index=True)
    steps = step[keep][np.sort(first)]  # probe steps in the order they were written
    grid = np.unique(t[keep])
    p_idx = np.searchsorted(np.sort(steps), step[keep])
    order = np.argsort(steps)
    p_idx = order[p_idx]
    t_idx = np.searchsorted(grid, t[keep])
    out: dict[str, np.ndarray] = {"step": steps}
    for name, col in cols.items():
        if name in ("step", "t") or col.ndim != 1 or col.shape[0] != step.shape[0]:
            continue
        mat = np.full((steps.size, grid.size), np.nan)
        mat[p_idx, t_idx] = col[keep].astype(float)
        out[name] = mat
    return out, grid


def _last_per_key(cols: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """Keep the last row of every ``key`` value, in order of ``key``: a run resumed from an
    epoch checkpoint writes the steps after that checkpoint a second time."""
    if key not in cols or cols[key].ndim != 1:
        return cols
    k = cols[key]
    n = k.shape[0]
    if np.unique(k).size == n:
        return cols
    _, last_from_end = np.unique(k[::-1], return_index=True)
    keep = np.sort(n - 1 - last_from_end)
    keep = keep[np.argsort(k[keep], kind="stable")]
    return {name: (c[keep] if c.ndim >= 1 and c.shape[0] == n else c) for name, c in cols.items()}


def _train_run(path: Path, raw: dict, meta: Meta) -> TrainRun:
    groups = _groups(raw)
    steps = _last_per_key(
        {k: np.asarray(v) for k, v in _arrays(groups.get("steps", {})).items()}, "step"
    )
    epochs = _last_per_key(
        {k: np.asarray(v) for k, v in _arrays(groups.get("epochs", {})).items()}, "epoch"
    )
    probes, probe_t = _probe_matrix(_arrays(groups.get("probes", {})))
    if not steps and not probes and not epochs:
        raise ValueError(
            f"{path}: missing arrays steps/*, epochs/* and probes/*; nothing to plot in this training file"
        )
    return TrainRun(meta=meta, steps=steps, epochs=epochs, probes=probes, probe_t=probe_t)


def _certify(path: Path, raw: dict, meta: Meta) -> CertifyResult:
    node = _groups(raw).get("results") or raw
    arrays = _arrays(node)
    eps = _need(arrays, ("eps",), path, "results")
    cols = {k: np.asarray(v) for k, v in arrays.items()}
    for name in ("clean_err", "verified_err"):
        _need(cols, (name,), path, "results")
    methods = cols.get("method")
    rows = []
    for i in range(eps.shape[0]):
        row: dict[str, Any] = {"method": meta.method, "eps": float(eps[i])}
        if methods is not None:
            m = methods[i]
            row["method"] = m.decode() if isinstance(m, bytes) else str(m)
        for key, col in cols.items():
            if key in ("eps", "method"):
                continue
            row[key] = float(col[i])
        rows.append(row)
    return CertifyResult(meta=meta, rows=rows)


def load(path: str | Path) -> Record:
    """Read one result file into its plot-ready record (ValueError when it cannot be plotted)."""
    p = Path(path)
    raw = read_raw(p)
    attrs = check_header(p, raw)
    meta = _meta(p, attrs)
    if meta.kind in SCAN_KINDS:
        dims = SCAN_KINDS[meta.kind].dims
        return (
            _line_scan(p, raw, meta)
            if dims == 1
            else _surface_scan(p, raw, meta)
            if dims == 2
            else _spectrum_scan(p, raw, meta)
        )
    if meta.kind == "train":
        return _train_run(p, raw, meta)
    return _certify(p, raw, meta)

"""``plot_file``: draw whatever a set of result files holds, chosen by each file's ``kind``.

One file gives its own figures; several files are also overlaid (methods compared on shared
axes), and comparison outputs appear when the files carry what they need: the
tightness-versus-smoothness scatter (training runs with probes) and the verified-error
table and plot (``certify`` files).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from figures import curves, surfaces, tables, training
from figures.data import CertifyResult, LineScan, Record, SurfaceScan, TrainRun, load
from figures.style import legend_label, method_rank, normalise_formats


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "result"


def _name_records(records: Sequence[Record]) -> None:
    """Give every record a unique short name: its file stem, or ``parent_stem`` (and so on
    up the path) when stems collide, e.g. ``ibp_train`` and ``cap_train``."""
    depth = [1] * len(records)

    def name(i: int) -> str:
        return _slug("_".join(records[i].meta.path.with_suffix("").parts[-depth[i]:]))

    for _ in range(8):
        names = [name(i) for i in range(len(records))]
        clashes = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clashes:
            break
        for i in clashes:
            depth[i] += 1
    names = [name(i) for i in range(len(records))]
    if len(set(names)) < len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    for r, n in zip(records, names):
        r.meta.name = n


def _stem(name: str, kind: str) -> str:
    """``<name>_<kind>``, without repeating the kind when the file name already ends with it."""
    return name if name.endswith(kind) else f"{name}_{kind}"


def _merge_surfaces(scans: Sequence[SurfaceScan]) -> SurfaceScan | None:
    """Several 2D scans on the same grid as one record with a panel per (file, method), or
    None when there are fewer than two or their grids differ."""
    if len(scans) < 2:
        return None
    first = scans[0]
    if any(s.x.shape != first.x.shape or s.y.shape != first.y.shape or not np.allclose(s.x, first.x)
           or not np.allclose(s.y, first.y) for s in scans):
        return None
    loss: dict[str, np.ndarray] = {}
    for s in scans:
        for label, grid in s.loss.items():
            key = label if label not in loss else f"{label} [{s.meta.name}]"
            loss[key] = grid
    from dataclasses import replace

    common = {k: v for k, v in first.meta.attrs.items() if all(s.meta.attrs.get(k) == v for s in scans)}
    meta = replace(first.meta, method=None, checkpoint=None, attrs=common,
                   eps=first.meta.eps if all(s.meta.eps == first.meta.eps for s in scans) else None,
                   model=first.meta.model if all(s.meta.model == first.meta.model for s in scans) else None)
    return SurfaceScan(meta=meta, x=first.x, y=first.y, loss=loss)


def tightness_points(runs: Sequence[TrainRun], certs: Sequence[CertifyResult] = ()) -> list[dict]:
    """One scatter point per run: bound tightness, the ``bound_gap`` (PGD margin minus
    certified lower bound, smaller = tighter) of the run's own probes or steps when it records
    one, else of the certify file of the same method, and the loss variation averaged over the
    last half of the probes (with its standard error)."""
    cert_tight: dict[str, float] = {}
    for c in certs:
        for row in c.rows:
            if "bound_gap" in row and np.isfinite(row["bound_gap"]):
                cert_tight.setdefault(str(row.get("method")), row["bound_gap"])
    points = []
    for run in runs:
        s = training.summary(run, last_fraction=0.5)
        tight = s["tightness"]
        if not np.isfinite(tight):
            tight = cert_tight.get(str(run.meta.method), float("nan"))
        smooth = s["loss_variation"]
        y = training.probe_stat(run, "loss_variation")
        err = None
        if y is not None:
            tail = y[-max(1, y.size // 2):]
            tail = tail[np.isfinite(tail)]
            err = float(tail.std() / np.sqrt(tail.size)) if tail.size > 1 else None
        points.append(
            {
                "method": run.meta.method,
                "label": legend_label(run.meta.method, run.meta.eps),
                "tightness": tight,
                "smoothness": smooth,
                "smoothness_err": err,
            }
        )
    return points


def plot_records(
    records: Sequence[Record],
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    surface3d: bool = False,
) -> list[Path]:
    """Draw figures (and tables) for already-loaded records; see :func:`plot_file`."""
    fmts = normalise_formats(formats)
    out = Path(out_dir)
    empty = [str(r.meta.path) for r in records if isinstance(r, (LineScan, SurfaceScan)) and not r.n_computed]
    if empty:
        raise ValueError(f"nothing to draw in {', '.join(empty)}: no point of the scan is computed yet "
                         "(run the same scan command again to compute them)")
    records = sorted(records, key=lambda r: method_rank(r.meta.method))
    _name_records(records)
    written: list[Path] = []

    line_kinds: dict[str, list[LineScan]] = {}
    for r in records:
        if isinstance(r, LineScan):
            line_kinds.setdefault(r.meta.kind, []).append(r)
    for kind, scans in line_kinds.items():
        draw = curves.plot_gradient_scans if kind == "gradient" else curves.plot_line_scans
        for scan in scans:
            written += draw([scan], out, _stem(scan.meta.name, kind), fmts)
        if len(scans) > 1:
            written += draw(scans, out, f"compare_{kind}", fmts)

    surfaces_ = [r for r in records if isinstance(r, SurfaceScan)]
    for r in surfaces_:
        written += surfaces.plot_surface(r, out, _stem(r.meta.name, "random-2d"), fmts, surface3d=surface3d)
    merged = _merge_surfaces(surfaces_)
    if merged is not None:
        written += surfaces.plot_surface(merged, out, "compare_random-2d", fmts, surface3d=surface3d)

    runs = [r for r in records if isinstance(r, TrainRun)]
    certs = [r for r in records if isinstance(r, CertifyResult)]
    if runs:
        prefix = runs[0].meta.name if len(runs) == 1 else "compare"
        if any("loss" in r.steps for r in runs):
            written += training.plot_training_curves(runs, out, f"{prefix}_training_curves", fmts)
        probed = [r for r in runs if r.probes]
        if probed:
            if any(training.probe_stat(r, key) is not None for r in probed for key, *_ in training.PROBE_STATS):
                written += training.plot_probe_stats(probed, out, f"{prefix}_probes", fmts)
            for key in ("loss_variation", "grad_cosine"):
                if any(training.probe_stat(r, key) is not None for r in probed):
                    written += training.plot_single_stat(probed, key, out, f"{prefix}_{key}_over_training", fmts)
            if any(training.has_gradient_probes(r) for r in probed):
                written += training.plot_gradient_direction_over_training(
                    probed, out, f"{prefix}_gradient_direction_over_training", fmts
                )
            points = tightness_points(probed, certs)
            if any(np.isfinite(p["tightness"]) and np.isfinite(p["smoothness"]) for p in points):
                written += tables.plot_tightness_vs_smoothness(points, out, f"{prefix}_tightness_vs_smoothness", fmts)
    if certs:
        rows = [row for c in certs for row in c.rows]
        prefix = certs[0].meta.name if len(certs) == 1 else "compare"
        written += tables.write_tables(rows, out, f"{prefix}_verified_error")
        written += tables.plot_error_vs_eps(rows, out, f"{prefix}_verified_error_vs_eps", fmts)

    if not written:
        names = ", ".join(str(r.meta.path) for r in records)
        raise ValueError(f"nothing to plot in {names}: the files hold no scan points, probes or per-step records")
    return written


def plot_file(
    paths: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    surface3d: bool = False,
) -> list[Path]:
    """Read every result file in ``paths`` and draw what it holds into ``out_dir``.

    Returns the written paths (figures in each of ``formats``, plus ``.md``/``.tex`` tables).
    Raises FileNotFoundError for a missing file and ValueError for a file of an unknown kind
    or schema version, one that lacks the arrays its kind needs, or an unknown format.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no result files given to plot")
    normalise_formats(formats)
    records = [load(p) for p in paths]
    return plot_records(records, out_dir, formats, surface3d=surface3d)

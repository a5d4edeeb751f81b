"""``plot_file``: draw whatever a set of result files holds, chosen by each file's ``kind``.

One file gives its own figures; several files are also overlaid (methods compared on shared
axes, 2D scans of one kind and grid on one colour scale), and comparison outputs appear when
the files carry what they need: the tightness-versus-smoothness scatter (training runs with
probes) and the verified-error table and plot (``certify`` files). A PCA scan's figures carry
its trajectory; a Hessian scan gives its densities and eigenvalues.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from figures import errors, paths, runstats, spectra, surfaces, tables, training
from figures.data import load
from figures.kinds import kind_figure
from figures.labels import distinct, legend_label
from figures.records import CertifyResult, LineScan, Record, SpectrumScan, SurfaceScan, TrainRun
from figures.style import method_rank, normalise_formats


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "result"


def _name_records(records: Sequence[Record]) -> None:
    """Give every record a unique short name: its file stem, or ``parent_stem`` (and so on
    up the path) when stems collide, e.g. ``ibp_train`` and ``cap_train``."""
    depth = [1] * len(records)

    def name(i: int) -> str:
        return _slug("_".join(records[i].meta.path.with_suffix("").parts[-depth[i] :]))

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
    """Several 2D scans of one kind on the same grid as one record with a panel per (file,
    method), each titled with its run, or None when there are fewer than two or their grids
    differ."""
    if len(scans) < 2:
        return None
    first = scans[0]
    if any(
        s.meta.kind != first.meta.kind
        or s.x.shape != first.x.shape
        or s.y.shape != first.y.shape
        or not np.allclose(s.x, first.x)
        or not np.allclose(s.y, first.y)
        for s in scans
    ):
        return None
    from dataclasses import replace

    common = {
        k: v for k, v in first.meta.attrs.items() if all(s.meta.attrs.get(k) == v for s in scans)
    }
    meta = replace(
        first.meta,
        method=None,
        checkpoint=None,
        attrs=common,
        path=first.meta.path.parent / "compare",
        eps=first.meta.eps if all(s.meta.eps == first.meta.eps for s in scans) else None,
        model=first.meta.model if all(s.meta.model == first.meta.model for s in scans) else None,
    )
    merged = SurfaceScan(meta=meta, x=first.x, y=first.y, loss={})
    runs = distinct([s.meta.run for s in scans], [s.meta.name for s in scans])
    for s, run in zip(scans, runs):
        for label, grid in s.loss.items():
            key = f"{label} [{run}]"
            merged.loss[key], merged.methods[key], merged.runs[key] = (
                grid,
                s.method(label) or label,
                run,
            )
            if label in s.paths:
                merged.paths[key], merged.variance[key] = s.paths[label], s.variance[label]
    return merged


def tightness_points(runs: Sequence[TrainRun], certs: Sequence[CertifyResult] = ()) -> list[dict]:
    """One scatter point per run, by the definitions of the summary (:mod:`figures.runstats`):
    tightness is the method's bound gap at eps_train on common models (its ``bound_gap_<method>``
    column averaged over every certify file that carries it), else the gap its own certify file
    reports, else the mean ``bound_gap`` of its probes; smoothness is the loss variation averaged
    over all of its probes. A single run has no spread, so no error bars."""
    own_cert: dict[str, float] = {}
    for c in certs:
        for row in c.rows:
            if "bound_gap" in row and np.isfinite(row["bound_gap"]):
                own_cert.setdefault(str(row.get("method")), row["bound_gap"])
    points = []
    labels = distinct(
        [legend_label(r.meta.method, r.meta.eps) for r in runs], [r.meta.run for r in runs]
    )
    for run, label in zip(runs, labels):
        method = str(run.meta.method)
        tight = runstats.common_gap(method, certs)
        if not np.isfinite(tight):
            tight = own_cert.get(method, training.summary(run)["tightness"])
        points.append(
            {
                "method": run.meta.method,
                "label": label,
                "tightness": tight,
                "smoothness": runstats.probe_numbers(run)["loss_variation"],
            }
        )
    return points


def _draw_lines(records: Sequence[Record], out: Path, fmts: Sequence[str], log: bool) -> list[Path]:
    """Each line scan's figure (and its error lines), and one comparison per kind."""
    written: list[Path] = []
    line_kinds: dict[str, list[LineScan]] = {}
    for r in records:
        if isinstance(r, LineScan):
            line_kinds.setdefault(r.meta.kind, []).append(r)
    for kind, scans in line_kinds.items():
        draw = partial(kind_figure(kind), log=log)
        for scan in scans:
            written += draw([scan], out, _stem(scan.meta.name, kind), fmts)
            if errors.line_errors(scan):  # a gradient scan has none
                written += errors.plot_error_lines(
                    scan, out, _stem(scan.meta.name, kind) + "_errors", fmts
                )
        if len(scans) > 1:
            written += draw(scans, out, f"compare_{kind}", fmts)
    return written


def _draw_surfaces(
    records: Sequence[Record], out: Path, fmts: Sequence[str], surface3d: bool, log: bool
) -> list[Path]:
    """Each surface scan's figure (and its error surfaces), and per kind the merged surfaces."""
    written: list[Path] = []
    surface_kinds: dict[str, list[SurfaceScan]] = {}
    for r in records:
        if isinstance(r, SurfaceScan):
            surface_kinds.setdefault(r.meta.kind, []).append(r)
    for kind, group in surface_kinds.items():
        for r in group:
            written += surfaces.plot_surface(
                r, out, _stem(r.meta.name, kind), fmts, surface3d=surface3d, log=log
            )
            if r.errors:
                written += errors.plot_error_surfaces(
                    r, out, _stem(r.meta.name, kind) + "_errors", fmts
                )
        merged = _merge_surfaces(group)
        if merged is not None:
            written += surfaces.plot_surface(
                merged, out, f"compare_{kind}", fmts, surface3d=surface3d, log=log
            )
    return written


def _draw_paths_and_spectra(
    records: Sequence[Record], out: Path, fmts: Sequence[str]
) -> list[Path]:
    """Training paths over the surfaces they were scanned around, and the Hessian spectra."""
    written: list[Path] = []
    pairs = paths.path_pairs(
        [r for r in records if isinstance(r, SurfaceScan)],
        [r for r in records if isinstance(r, TrainRun)],
    )
    for pair in pairs:
        written += paths.plot_pca_paths(
            [pair], out, _stem(pair[0].meta.name, "pca") + "_path", fmts
        )
    if len(pairs) > 1:
        written += paths.plot_pca_paths(pairs, out, "compare_pca_path", fmts)

    spectra_ = [r for r in records if isinstance(r, SpectrumScan)]
    for r in spectra_:
        written += spectra.plot_spectra([r], out, _stem(r.meta.name, "hessian"), fmts)
    if len(spectra_) > 1:
        written += spectra.plot_spectra(spectra_, out, "compare_hessian", fmts)
    return written


def _draw_probes(
    probed: Sequence[TrainRun],
    certs: Sequence[CertifyResult],
    out: Path,
    prefix: str,
    fmts: Sequence[str],
) -> list[Path]:
    """The probe statistics of runs that were probed, their gradient directions, and tightness
    against smoothness where certify results give the tightness."""
    written: list[Path] = []
    if any(
        training.probe_stat(r, key) is not None for r in probed for key, *_ in training.PROBE_STATS
    ):
        written += training.plot_probe_stats(probed, out, f"{prefix}_probes", fmts)
    for key in ("loss_variation", "grad_cosine"):
        if any(training.probe_stat(r, key) is not None for r in probed):
            written += training.plot_single_stat(
                probed, key, out, f"{prefix}_{key}_over_training", fmts
            )
    if any(training.has_gradient_probes(r) for r in probed):
        written += training.plot_gradient_direction_over_training(
            probed, out, f"{prefix}_gradient_direction_over_training", fmts
        )
    points = tightness_points(probed, certs)
    if any(np.isfinite(p["tightness"]) and np.isfinite(p["smoothness"]) for p in points):
        written += tables.plot_tightness_vs_smoothness(
            points, out, f"{prefix}_tightness_vs_smoothness", fmts
        )
    return written


def _draw_runs_and_certs(records: Sequence[Record], out: Path, fmts: Sequence[str]) -> list[Path]:
    """Training curves and probe figures of the runs, then the certify tables and error curves."""
    written: list[Path] = []
    runs = [r for r in records if isinstance(r, TrainRun)]
    certs = [r for r in records if isinstance(r, CertifyResult)]
    if runs:
        prefix = runs[0].meta.name if len(runs) == 1 else "compare"
        if any("loss" in r.steps for r in runs):
            written += training.plot_training_curves(runs, out, f"{prefix}_training_curves", fmts)
        probed = [r for r in runs if r.probes]
        if probed:
            written += _draw_probes(probed, certs, out, prefix, fmts)
    if certs:
        rows = [row for c in certs for row in c.rows]
        prefix = certs[0].meta.name if len(certs) == 1 else "compare"
        written += tables.write_tables(rows, out, f"{prefix}_verified_error")
        written += tables.plot_error_vs_eps(rows, out, f"{prefix}_verified_error_vs_eps", fmts)
    return written


def plot_records(
    records: Sequence[Record],
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    surface3d: bool = False,
    log: bool = False,
) -> list[Path]:
    """Draw figures (and tables) for already-loaded records; see :func:`plot_file`."""
    fmts = normalise_formats(formats)
    out = Path(out_dir)
    empty = [
        str(r.meta.path)
        for r in records
        if isinstance(r, (LineScan, SurfaceScan, SpectrumScan)) and not r.n_computed
    ]
    if empty:
        raise ValueError(
            f"nothing to draw in {', '.join(empty)}: no point of the scan is computed yet "
            "(run the same scan command again to compute them)"
        )
    records = sorted(records, key=lambda r: method_rank(r.meta.method))
    _name_records(records)
    written = _draw_lines(records, out, fmts, log)
    written += _draw_surfaces(records, out, fmts, surface3d, log)
    written += _draw_paths_and_spectra(records, out, fmts)
    written += _draw_runs_and_certs(records, out, fmts)
    if not written:
        names = ", ".join(str(r.meta.path) for r in records)
        raise ValueError(
            f"nothing to plot in {names}: the files hold no scan points, probes or per-step records"
        )
    return written


def plot_file(
    paths: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    surface3d: bool = False,
    log: bool = False,
) -> list[Path]:
    """Read every result file in ``paths`` and draw what it holds into ``out_dir``; ``log``
    draws losses on a logarithmic scale (the colours of 2D scans, the z axis of 3D surfaces,
    the loss axis of 1D scans).

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
    return plot_records(records, out_dir, formats, surface3d=surface3d, log=log)

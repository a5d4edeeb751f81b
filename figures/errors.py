"""Error surfaces: the clean, PGD and verified error at every point of a scan (``landscape scan
--fields clean_err,pgd_err,verified_err``), beside its loss.

The errors are the model's at each point, on the scan's samples at its eps
(``docs/scans.md``, "Error fields"); every label of a file holds the same values, so one series
is drawn per file. At every point ``clean <= PGD <= verified``, and the gap ``verified − PGD``
is the share of samples that no attack broke but no bound certified: the looseness of the
bounds at that point. Along an interpolation the verified error answers whether two certified
models are joined by a certified path (the verified error stays low between alpha = 0 and 1).

- 1D scans (``random-1d``, ``interpolate``): the three errors against the coordinate, the gap
  shaded (hatched) between the PGD and the verified curve, and the gap itself in a second panel;
- 2D scans (``random-2d``, ``pca``): one heatmap per error on one shared colour scale [0, 1],
  and the gap on its own scale, the checkpoint marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.records import LineScan, SurfaceScan
from figures.style import apply_style, legend_below, save, with_context

ERROR_FIELDS = ("clean_err", "pgd_err", "verified_err")
NAMES = {"clean_err": "clean error", "pgd_err": "PGD error", "verified_err": "verified error"}
STYLE = {
    "clean_err": dict(color="#4c72b0", ls=":", marker="o"),
    "pgd_err": dict(color="#dd8452", ls="--", marker="s"),
    "verified_err": dict(color="#55a868", ls="-", marker="D"),
}


def line_errors(scan: LineScan) -> dict[str, np.ndarray]:
    """The error series of a 1D scan (those of its first label that has any)."""
    for arrays in scan.series.values():
        found = {f: np.asarray(arrays[f], dtype=float) for f in ERROR_FIELDS if f in arrays}
        if found and any(np.isfinite(v).any() for v in found.values()):
            return found
    return {}


def plot_error_lines(
    scan: LineScan, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """The errors of one 1D scan against its coordinate, and the verified − PGD gap."""
    apply_style()
    import matplotlib.pyplot as plt

    errors = line_errors(scan)
    x = np.asarray(scan.coord, dtype=float)
    gap = (
        errors["verified_err"] - errors["pgd_err"]
        if {"verified_err", "pgd_err"} <= set(errors)
        else None
    )
    n = 1 + (gap is not None)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.0), squeeze=False)
    ax = axes[0][0]
    handles = []
    for f in ERROR_FIELDS:
        if f in errors:
            (h,) = ax.plot(x, errors[f], label=NAMES[f], lw=1.8, ms=4, **STYLE[f])
            handles.append(h)
    if gap is not None:
        h = ax.fill_between(
            x,
            errors["pgd_err"],
            errors["verified_err"],
            facecolor="#55a868",
            alpha=0.12,
            hatch="////",
            edgecolor="#55a868",
            lw=0,
            label="verified − PGD (not certified, not broken)",
        )
        handles.append(h)
    _mark_checkpoints(ax, scan)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(scan.coord_label)
    ax.set_ylabel("error (share of the scan's samples)")
    ax.set_title("Errors along the scan")
    if gap is not None:
        g = axes[0][1]
        g.plot(x, gap, color="0.2", lw=1.8, marker="D", ms=4)
        g.fill_between(x, 0, gap, facecolor="0.5", alpha=0.15, hatch="....", edgecolor="0.4", lw=0)
        _mark_checkpoints(g, scan)
        g.set_ylim(bottom=min(0.0, float(np.nanmin(gap)) - 0.02))
        g.set_xlabel(scan.coord_label)
        g.set_ylabel("verified − PGD error")
        g.set_title("What the bounds cannot certify")
    fig.suptitle(with_context(_what(scan), [scan.meta]), fontsize=12)
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(4, len(handles)))
    return save(fig, out_dir, stem, formats)


def _what(scan: LineScan | SurfaceScan) -> str:
    eps = scan.meta.eps
    bit = f" at ε={eps:g}" if eps is not None else ""
    if scan.meta.kind == "interpolate":
        return f"Is there a certified path? Errors between the checkpoints{bit}"
    return f"Errors across the {scan.meta.kind} scan{bit}"


def _mark_checkpoints(ax, scan: LineScan) -> None:
    ends = (0.0, 1.0) if scan.meta.kind == "interpolate" else (0.0,)
    for v in ends:
        ax.axvline(v, color="0.55", lw=0.8, ls=":")


def surface_errors(scan: SurfaceScan) -> dict[str, np.ndarray]:
    """The error grids of a 2D scan ([len(x), len(y)] each)."""
    return {k: np.asarray(v, dtype=float) for k, v in scan.errors.items()}


def plot_error_surfaces(
    scan: SurfaceScan, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """One heatmap per stored error (one colour scale [0, 1] for all) and one of the verified −
    PGD gap, the checkpoint (0, 0) marked."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    errors = surface_errors(scan)
    keys = [f for f in ERROR_FIELDS if f in errors]
    gap = (
        errors["verified_err"] - errors["pgd_err"]
        if {"verified_err", "pgd_err"} <= set(errors)
        else None
    )
    n = len(keys) + (gap is not None)
    fig, grid = plt.subplots(1, n, figsize=(4.3 * n + 0.6, 4.1), squeeze=False)
    axes = list(grid[0])
    x, y = np.asarray(scan.x, dtype=float), np.asarray(scan.y, dtype=float)
    norm = Normalize(0.0, 1.0)
    mesh = None
    for ax, f in zip(axes, keys):
        mesh = ax.pcolormesh(
            x, y, np.ma.masked_invalid(errors[f]).T, cmap="magma", norm=norm, shading="nearest"
        )
        _finish_panel(ax, scan, NAMES[f])
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[: len(keys)], label="error", shrink=0.9)
    if gap is not None:
        ax = axes[-1]
        hi = max(float(np.nanmax(gap)) if np.isfinite(gap).any() else 0.0, 1e-3)
        gm = ax.pcolormesh(
            x,
            y,
            np.ma.masked_invalid(gap).T,
            cmap="viridis",
            norm=Normalize(0.0, hi),
            shading="nearest",
        )
        _finish_panel(ax, scan, "verified − PGD error")
        fig.colorbar(gm, ax=ax, label="not certified, not broken", shrink=0.9)
    fig.suptitle(with_context(_what(scan), [scan.meta]), fontsize=12)
    return save(fig, out_dir, stem, formats)


def _finish_panel(ax, scan: SurfaceScan, title: str) -> None:
    ax.plot([0.0], [0.0], marker="*", ms=11, color="white", mec="black", mew=0.8, ls="none")
    ax.set_title(title)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if scan.meta.kind == "pca":
        ax.set_aspect("equal", adjustable="box")

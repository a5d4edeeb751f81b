"""The training path on the PCA plane, coloured by what changed along it.

A PCA scan (``docs/scans.md``) stores the run's checkpoints projected on the plane of the
trajectory's top two principal directions, and the step of each. With the run's ``train.h5``
each checkpoint gets the unstable fraction of its step (the share of ReLUs whose bounds straddle
0, mean over layers, as the training loop records it: the quantity a tighter relaxation changes),
and the schedule's milestones are marked where the path passes them (interpolated between the
two checkpoints around their step): eps starts to grow, eps reaches its final value, kappa
reaches its final value, beta reaches its final value. One shared colour scale for every panel;
equal-aspect axes (both directions are unit vectors in parameter space).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from figures.records import SurfaceScan, TrainRun
from figures.style import apply_style, legend_below, method_name, save, with_context

MILESTONES = (
    ("eps_start", "ε starts to grow", "^", "#2ca02c"),
    ("eps_end", "ε reaches its final value", "v", "#1f77b4"),
    ("kappa_end", "κ reaches its final value", "P", "#9467bd"),
    ("beta_end", "β reaches its final value", "X", "#ff7f0e"),
)


def unstable_fraction(run: TrainRun) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, fraction)``: the mean over layers of ``unstable_frac_l{i}`` per logged step."""
    cols = sorted(k for k in run.steps if k.startswith("unstable_frac_l"))
    if not cols or "step" not in run.steps:
        return None
    values = np.vstack([np.asarray(run.steps[k], dtype=float) for k in cols])
    return np.asarray(run.steps["step"], dtype=float), np.nanmean(values, axis=0)


def milestones(run: TrainRun) -> dict[str, float]:
    """The step of each schedule milestone (absent when the column is missing or constant)."""
    out: dict[str, float] = {}
    steps = np.asarray(run.steps.get("step", []), dtype=float)
    for key, column in (("eps", "eps"), ("kappa", "kappa"), ("beta", "beta")):
        v = np.asarray(run.steps.get(column, []), dtype=float)
        if (
            v.size < 2
            or steps.size != v.size
            or not np.isfinite(v).any()
            or np.nanmax(v) == np.nanmin(v)
        ):
            continue
        final = v[np.isfinite(v)][-1]
        if key == "eps":
            grown = np.flatnonzero(v > v[0])
            if grown.size:
                out["eps_start"] = float(steps[grown[0]])
        reached = np.flatnonzero(np.isclose(v, final, rtol=1e-6, atol=1e-12))
        first_change = np.flatnonzero(~np.isclose(v, v[0]))
        if reached.size and first_change.size:
            after = reached[reached >= first_change[0]]
            if after.size:
                out[f"{key}_end"] = float(steps[after[0]])
    return out


def _at_step(path: np.ndarray, steps: np.ndarray, step: float) -> np.ndarray | None:
    """The point of the path at ``step``, linear between the checkpoints around it."""
    ok = np.isfinite(steps)
    if ok.sum() < 2 or step < np.nanmin(steps) or step > np.nanmax(steps):
        return None
    s, p = steps[ok], path[ok]
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order]
    return np.array([np.interp(step, s, p[:, 0]), np.interp(step, s, p[:, 1])])


def path_pairs(
    scans: Sequence[SurfaceScan], runs: Sequence[TrainRun]
) -> list[tuple[SurfaceScan, str, TrainRun]]:
    """(PCA scan, key, run) for each PCA path whose checkpoint lies in a run's directory."""
    by_dir = {Path(r.meta.path).resolve().parent: r for r in runs}
    out = []
    for scan in scans:
        if scan.meta.kind != "pca":
            continue
        for key in scan.paths:
            run = by_dir.get(Path(str(scan.meta.checkpoint or "")).resolve().parent)
            if run is not None:
                out.append((scan, key, run))
                break
    return out


def _path_items(
    pairs: Sequence[tuple[SurfaceScan, str, TrainRun]],
) -> list[tuple[SurfaceScan, str, TrainRun, np.ndarray, np.ndarray, np.ndarray]]:
    """The pairs whose path has steps and whose run logged the unstable fraction, each with its
    path, its steps and the fraction at each checkpoint."""
    items = []
    for scan, key, run in pairs:
        path, steps = (
            np.asarray(scan.paths[key], dtype=float),
            np.asarray(scan.path_steps.get(key), dtype=float),
        )
        uf = unstable_fraction(run)
        if uf is None or steps.shape != (len(path),) or not np.isfinite(steps).any():
            continue
        colour = np.interp(steps, uf[0], uf[1], left=np.nan, right=uf[1][-1])
        colour[steps < uf[0][0]] = uf[1][0]  # the initialisation: the first logged step's value
        items.append((scan, key, run, path, steps, colour))
    return items


def _draw_ends(ax: Any, path: np.ndarray, handles: dict[str, object]) -> None:
    """Mark the path's first and last checkpoint (their legend handles kept once)."""
    (end,) = ax.plot(
        [path[-1, 0]],
        [path[-1, 1]],
        "*",
        ms=20,
        mfc="none",
        mec="black",
        mew=1.2,
        zorder=5,
        label="final checkpoint",
        ls="none",
    )
    handles.setdefault("end", end)
    (start,) = ax.plot(
        [path[0, 0]],
        [path[0, 1]],
        "s",
        ms=13,
        mfc="none",
        mec="black",
        mew=1.2,
        zorder=5,
        label="first checkpoint",
        ls="none",
    )
    handles.setdefault("start", start)


def _draw_milestones(
    ax: Any, run: TrainRun, path: np.ndarray, steps: np.ndarray, handles: dict[str, object]
) -> None:
    """Mark where on the path the run reached each schedule milestone it has."""
    for name, (what, marker, mc) in {k: (w, m, c) for k, w, m, c in MILESTONES}.items():
        step = milestones(run).get(name)
        if step is None:
            continue
        point = _at_step(path, steps, step)
        if point is None:
            continue
        (h,) = ax.plot(
            [point[0]],
            [point[1]],
            marker,
            ms=15,
            mfc="none",
            mec=mc,
            mew=1.8,
            zorder=6,
            label=f"{what}",
            ls="none",
        )
        handles.setdefault(name, h)


def plot_pca_paths(
    pairs: Sequence[tuple[SurfaceScan, str, TrainRun]],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """One panel per (PCA scan, run): the path coloured by the unstable fraction at each
    checkpoint, with the schedule's milestones; ``[]`` when no pair has the data."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    items = _path_items(pairs)
    if not items:
        return []
    values = np.concatenate([c[np.isfinite(c)] for *_, c in items])
    norm = Normalize(
        float(values.min()) if values.size else 0.0, float(values.max()) if values.size else 1.0
    )
    n = len(items)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols + 1.0, 4.2 * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    handles: dict[str, object] = {}
    sc = None
    for ax, (scan, key, run, path, steps, colour) in zip(flat, items):
        ax.plot(path[:, 0], path[:, 1], "-", color="0.6", lw=1.0, zorder=1)
        sc = ax.scatter(
            path[:, 0],
            path[:, 1],
            c=colour,
            cmap="plasma",
            norm=norm,
            s=46,
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
        )
        _draw_ends(ax, path, handles)
        _draw_milestones(ax, run, path, steps, handles)
        ratios = scan.variance.get(key) or [np.nan, np.nan]
        ax.set_xlabel(
            f"1st PC ({100 * ratios[0]:.1f} % var.)" if np.isfinite(ratios[0]) else "1st PC"
        )
        ax.set_ylabel(
            f"2nd PC ({100 * ratios[1]:.1f} % var.)" if np.isfinite(ratios[1]) else "2nd PC"
        )
        ax.set_title(f"{method_name(run.meta.method)}, run {run.meta.run}")
        ax.set_aspect("equal", adjustable="datalim")
    if sc is not None:
        fig.colorbar(sc, ax=flat[:n], label="unstable ReLU fraction (mean over layers)", shrink=0.9)
    fig.suptitle(
        with_context(
            "Training path on the PCA plane, coloured by the unstable fraction",
            [s.meta for s, *_ in items],
        ),
        fontsize=12,
    )
    legend_below(fig, list(handles.values()), ncol=3)
    return save(fig, out_dir, stem, formats)

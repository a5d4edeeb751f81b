"""Comparison figures across seeds that the single-seed drawing has no counterpart for: per
method the mean over the seeds and a band (or error bars) of plus or minus one standard
deviation (ddof 0), each titled "mean ± sd over N seeds":

- :func:`plot_seed_stat`: one probe statistic over training (``compare_<key>_over_training``),
  the seeds sharing the probe-step axis;
- :func:`plot_seed_lines`: the loss along a random direction (``compare_random-1d``), the seeds
  sharing the alpha axis;
- :func:`plot_seed_spectra`: the Hessian's top eigenvalue and trace as bars with error bars and
  the mean density of every method, all broadened with one width (``compare_hessian``);
- :func:`seed_planes`: 2D scans, where each seed has its own random plane and nothing can be
  averaged, as small multiples, one panel per seed and loss (``compare_random-2d_*``).

Every plotted number is read from the result files (:mod:`figures.records`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from figures.labels import loss_axis
from figures.records import LineScan, SpectrumScan, SurfaceScan, TrainRun
from figures.seeds import band, seed_groups
from figures.spectra import common_densities
from figures.style import (
    apply_style,
    band_style,
    legend_below,
    line_style,
    method_colour,
    method_name,
    method_rank,
    save,
    with_context,
)
from figures.training import PROBE_STATS


def mean_sd(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0, NaNs skipped) over the first axis of ``rows``."""
    values = np.vstack([np.asarray(r, dtype=float) for r in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def seeds_title(what: str, n: int) -> str:
    """``what`` with the seed count the figure averages over."""
    return f"{what}: mean ± sd over {n} seeds"


def plot_seed_stat(
    runs: Sequence[TrainRun],
    key: str,
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Probe statistic ``key`` over training, per method the mean over its seeds' runs on the
    probe steps they share and a ±1 sd band; ``[]`` when no run records it."""
    apply_style()
    import matplotlib.pyplot as plt

    _, _, ylabel, title = next(s for s in PROBE_STATS if s[0] == key)
    groups = seed_groups(runs)
    bands = {m: band(rs, key) for m, rs in groups.items()}
    if all(b is None for b in bands.values()):
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    handles = []
    for i, method in enumerate(sorted(groups, key=method_rank)):
        if bands[method] is None:
            continue
        x, mean, sd = bands[method]
        colour = method_colour(method, i)
        (line,) = ax.plot(
            x,
            mean,
            color=colour,
            label=f"{method_name(method)} ({len(groups[method])} seeds)",
            **{**line_style(i), "markevery": max(1, x.size // 15)},
        )
        ax.fill_between(x, mean - sd, mean + sd, **band_style(i, colour))
        handles.append(line)
    n = max(len(rs) for rs in groups.values())
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(with_context(seeds_title(f"{title} over training", n), [r.meta for r in runs]))
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(3, len(handles)))
    return save(fig, out_dir, stem, formats)


def line_groups(scans: Sequence[LineScan]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``{method: [(coord, loss) per seed]}`` of every scanned loss with a finite value."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for scan in scans:
        for label, arrays in scan.series.items():
            loss = np.asarray(arrays.get("loss"), dtype=float)
            if np.isfinite(loss).any():
                method = str(label if label != "loss" else scan.meta.method)
                groups.setdefault(method, []).append((np.asarray(scan.coord, float), loss))
    return groups


def plot_seed_lines(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
) -> list[Path]:
    """1D loss profiles of several seeds: per method the mean over the seeds whose coordinates
    equal its first seed's and a ±1 sd band; ``log`` draws a log loss axis when every mean is
    positive. ``[]`` without a finite loss."""
    apply_style()
    import matplotlib.pyplot as plt

    groups = line_groups(scans)
    if not groups:
        return []
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    handles, counts = [], []
    for i, method in enumerate(sorted(groups, key=method_rank)):
        x = groups[method][0][0]
        same = [y for c, y in groups[method] if c.shape == x.shape and np.allclose(c, x)]
        mean, sd = mean_sd(same)
        colour = method_colour(method, i)
        style = {**line_style(i), "markevery": max(1, x.size // 12)}
        label = f"{method_name(method)} ({len(same)} seeds)"
        (line,) = ax.plot(x, mean, color=colour, label=label, **style)
        ok = np.isfinite(mean)
        ax.fill_between(x[ok], (mean - sd)[ok], (mean + sd)[ok], **band_style(i, colour))
        handles.append(line)
        counts.append(len(same))
    ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
    what = "Loss along a random direction (0 = checkpoint)"
    ax.set_title(with_context(seeds_title(what, max(counts)), [s.meta for s in scans]))
    ax.set_xlabel(scans[0].coord_label)
    ax.set_ylabel(loss_axis(list(groups)))
    means = np.concatenate([np.asarray(h.get_ydata(), float) for h in handles])
    if log and np.nanmin(means) > 0:
        ax.set_yscale("log")
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(2, len(handles)))
    return save(fig, out_dir, stem, formats)


def spectrum_groups(scans: Sequence[SpectrumScan]) -> dict[str, list[dict]]:
    """``{loss label: [spectrum per seed]}`` in method order."""
    groups: dict[str, list[dict]] = {}
    for scan in scans:
        for label, spec in scan.spectra.items():
            groups.setdefault(str(label), []).append(spec)
    return {k: groups[k] for k in sorted(groups, key=method_rank)}


def mean_density(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of densities on their own grids, on one grid spanning them all (a density is 0
    outside its grid)."""
    lo = min(float(g[0]) for g, _ in pairs)
    hi = max(float(g[-1]) for g, _ in pairs)
    grid = np.linspace(lo, hi, points)
    return grid, np.mean([np.interp(grid, g, d, left=0.0, right=0.0) for g, d in pairs], axis=0)


def plot_seed_spectra(
    scans: Sequence[SpectrumScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Hessian scans of several seeds: per loss the mean density over the seeds (every density
    broadened with one width), and the top eigenvalue and the trace as bars of the mean with
    ±1 sd error bars; ``[]`` without a computed spectrum."""
    apply_style()
    import matplotlib.pyplot as plt

    groups = spectrum_groups(scans)
    if not groups:
        return []
    fig, (ax_d, ax_e, ax_t) = plt.subplots(
        1, 3, figsize=(14.0, 4.3), gridspec_kw={"width_ratios": [1.6, 1.0, 1.0]}
    )
    dens, sigma = common_densities([s for specs in groups.values() for s in specs])
    handles, start = [], 0
    for i, (label, specs) in enumerate(groups.items()):
        colour, style = method_colour(label, i), line_style(i)
        grid, mean = mean_density(dens[start : start + len(specs)])
        start += len(specs)
        text = f"{method_name(label)} ({len(specs)} seeds)"
        (line,) = ax_d.plot(grid, np.maximum(mean, 1e-6 * mean.max()), color=colour,
                            ls=style["ls"], lw=style["lw"], label=text)  # fmt: skip
        handles.append(line)
        for ax, values in (
            (ax_e, [float(np.asarray(s["eigenvalues"], float)[0]) for s in specs]),
            (ax_t, [float(s["trace"]) for s in specs]),
        ):
            m, sd = mean_sd([np.asarray([v]) for v in values])
            ax.bar(i, m[0], yerr=sd[0], color=colour, alpha=0.75, capsize=4, label=text)
    ax_d.set_yscale("log")
    ax_d.set_xlabel("eigenvalue λ of the Hessian")
    ax_d.set_ylabel("mean spectral density (log)")
    ax_d.set_title(f"Mean density, one width σ = {sigma:.3g}")
    names = [method_name(k) for k in groups]
    for ax, title in ((ax_e, "Top eigenvalue λ_1"), (ax_t, "Trace of the Hessian")):
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_title(title)
        ax.axhline(0.0, color="0.4", lw=0.8)
    n = max(len(v) for v in groups.values())
    fig.suptitle(with_context(seeds_title("Hessian of each loss", n), [s.meta for s in scans]),
                 fontsize=12)  # fmt: skip
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(2, len(handles)))
    return save(fig, out_dir, stem, formats)


def seed_planes(scans: Sequence[SurfaceScan]) -> SurfaceScan | None:
    """2D scans of several seeds as one record with a panel per (seed, loss), titled with the
    seed (the name of the folder the file lies in), for small multiples on one colour scale; None
    when there are fewer than two scans or their grids differ."""
    if len(scans) < 2:
        return None
    first = scans[0]
    if any(s.x.shape != first.x.shape or s.y.shape != first.y.shape for s in scans) or not all(
        np.allclose(s.x, first.x) and np.allclose(s.y, first.y) for s in scans
    ):
        return None
    meta = replace(first.meta, method=None, checkpoint=None, path=first.meta.path.parent / "seeds")
    merged = SurfaceScan(meta=meta, x=first.x, y=first.y, loss={})
    pairs = [(s, lab) for s in scans for lab in s.loss]
    for s, label in sorted(
        pairs, key=lambda p: (method_rank(p[0].method(p[1])), str(p[0].meta.path))
    ):
        seed = s.meta.path.parent.name
        key = f"{label} [{seed}]"
        merged.loss[key], merged.methods[key] = s.loss[label], s.method(label) or label
        merged.runs[key] = seed
    return merged

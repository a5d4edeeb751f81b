"""Probe statistics over training across seeds: per method, the mean over the seeds' runs and
a band of plus or minus one standard deviation, so a difference between methods can be told from
seed noise at a glance."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.records import TrainRun
from figures.style import apply_style, legend_below, line_style, method_colour, method_name, save, with_context
from figures.training import PROBE_STATS, probe_stat, probe_x


def seed_groups(runs: Sequence[TrainRun]) -> dict[str, list[TrainRun]]:
    """Runs by method (in the order they come), only those that record probes."""
    groups: dict[str, list[TrainRun]] = {}
    for run in runs:
        if run.probes:
            groups.setdefault(str(run.meta.method), []).append(run)
    return groups


def band(runs: Sequence[TrainRun], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, mean, std)`` of probe statistic ``key`` over ``runs``, on the probe steps they
    all share (None when no run records it). ``std`` is across runs (ddof 0; 0 for one run)."""
    series = []
    for run in runs:
        y = probe_stat(run, key)
        if y is not None:
            series.append(dict(zip(probe_x(run)[: y.size].tolist(), y[: probe_x(run).size].tolist())))
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    values = np.asarray([[s[t] for t in steps] for s in series], dtype=float)
    keep = np.isfinite(values).any(axis=0)  # steps where some run has a value (IBP has no slopes)
    if not keep.any():
        return None
    values = values[:, keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step with one finite value: sd 0 is fine
        return np.asarray(steps, dtype=float)[keep], np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def plot_seed_bands(
    runs: Sequence[TrainRun], out_dir: str | Path, prefix: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """``<prefix>_probes``: every probe statistic, one panel each, a mean line and a band per
    method; ``[]`` when no run records probes."""
    apply_style()
    import matplotlib.pyplot as plt

    groups = seed_groups(runs)
    present = [s for s in PROBE_STATS if any(band(rs, s[0]) is not None for rs in groups.values())]
    if not present:
        return []
    cols = min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    flat = list(axes.ravel())
    handles = {}
    for ax, (key, _, ylabel, title) in zip(flat, present):
        for i, (method, rs) in enumerate(groups.items()):
            b = band(rs, key)
            if b is None:
                continue
            x, mean, std = b
            colour = method_colour(method, i)
            (line,) = ax.plot(x, mean, color=colour, label=f"{method_name(method)} (mean of {len(rs)} seeds ± sd)",
                              **{**line_style(i), "markevery": max(1, x.size // 15)})
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
            handles.setdefault(method, line)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
    for ax in flat[len(present):]:
        ax.set_visible(False)
    fig.suptitle(with_context("Landscape probes over training, across seeds", [r.meta for r in runs]), fontsize=12)
    fig.tight_layout()
    legend_below(fig, list(handles.values()), ncol=min(4, len(handles)))
    return save(fig, out_dir, f"{prefix}_probes", formats)

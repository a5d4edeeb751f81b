"""Figures across seeds: per method, the mean over the seeds' runs and a band (or bars) of plus
or minus one standard deviation, so a difference between methods can be told from seed noise at
a glance, each saying how many seeds it averages:

- :func:`plot_seed_bands`: every probe statistic over training (``seeds_probes``);
- :func:`plot_seed_gradient`: the gradient-direction scans of the final models
  (``compare_gradient``): loss change, gradient cosine and smoothness against t;
- :func:`seed_certify_rows`: certification rows averaged per method and eps (with ``*_sd`` and
  ``n_seeds``), which :func:`figures.tables.plot_error_vs_eps` draws with error bars and the
  tables print as means.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from figures.notes import panel_notes
from figures.records import LineScan, TrainRun
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
            series.append(
                dict(zip(probe_x(run)[: y.size].tolist(), y[: probe_x(run).size].tolist()))
            )
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
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # a step with one finite value: sd 0 is fine
        return (
            np.asarray(steps, dtype=float)[keep],
            np.nanmean(values, axis=0),
            np.nanstd(values, axis=0),
        )


def plot_seed_bands(
    runs: Sequence[TrainRun],
    out_dir: str | Path,
    prefix: str,
    formats: Sequence[str] = ("png", "pdf"),
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
    handles: dict[str, Any] = {}
    for ax, (key, _, ylabel, title) in zip(flat, present):
        for i, (method, rs) in enumerate(groups.items()):
            b = band(rs, key)
            if b is None:
                continue
            x, mean, std = b
            colour = method_colour(method, i)
            (line,) = ax.plot(
                x,
                mean,
                color=colour,
                label=f"{method_name(method)} (mean of {len(rs)} seeds ± sd)",
                **{**line_style(i), "markevery": max(1, x.size // 15)},
            )
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
            handles.setdefault(method, line)
        notes = []
        for method, rs in groups.items():
            b = band(rs, key)
            notes.append((method, None if b is None else b[0], None if b is None else b[1], rs[0]))
        panel_notes(ax, notes)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
    for ax in flat[len(present) :]:
        ax.set_visible(False)
    fig.suptitle(
        with_context("Landscape probes over training, across seeds", [r.meta for r in runs]),
        fontsize=12,
    )
    fig.tight_layout()
    legend_below(fig, list(handles.values()), ncol=min(4, len(handles)))
    return save(fig, out_dir, f"{prefix}_probes", formats)


ERROR_KEYS = ("clean_err", "pgd_err", "verified_err")


def seed_certify_rows(rows_by_seed: Sequence[Sequence[dict]]) -> list[dict]:
    """One row per (method, eps) with the mean over seeds of every numeric column, the standard
    deviation of the errors as ``<key>_sd`` (ddof 0) and ``n_seeds``."""
    groups: dict[tuple, list[dict]] = {}
    for rows in rows_by_seed:
        for r in rows:
            groups.setdefault((str(r.get("method")), float(r.get("eps", np.nan))), []).append(r)
    out = []
    for (method, eps), rs in groups.items():
        row: dict = {"method": method, "eps": eps, "n_seeds": len(rs)}
        keys = {
            k
            for r in rs
            for k, v in r.items()
            if isinstance(v, (int, float, np.floating)) and k not in ("eps",)
        }
        for k in sorted(keys):
            vals = np.asarray([float(r.get(k, np.nan)) for r in rs], dtype=float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                row[k] = float(np.nanmean(vals))
                if k in ERROR_KEYS:
                    row[f"{k}_sd"] = float(np.nanstd(vals))
        out.append(row)
    return out


def _gradient_series(scan: LineScan) -> dict[str, dict[str, np.ndarray]]:
    """Per label: the loss change from t = 0, the cosine and the smoothness of one gradient scan."""
    t = np.asarray(scan.coord, dtype=float)
    zero = int(np.argmin(np.abs(t)))
    out: dict[str, dict[str, np.ndarray]] = {}
    for label, arrays in scan.series.items():
        method = label if label != "loss" else scan.meta.method
        loss = np.asarray(arrays.get("loss"), dtype=float)
        if not np.isfinite(loss).any():
            continue
        out[str(method)] = {
            "t": t,
            "change": loss - loss[zero],
            "variation": np.array([np.nanmax(loss) - np.nanmin(loss)]),
            **{
                k: np.asarray(arrays[k], dtype=float)
                for k in ("cosine", "smoothness")
                if k in arrays
            },
        }
    return out


def plot_seed_gradient(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Gradient-direction scans of every seed's final model, per method the mean over seeds with a
    ±1 sd band (hatched, so overlapping bands stay apart): loss change L(θ_t) − L(θ), gradient
    cosine and smoothness against t; ``[]`` without gradient scans."""
    apply_style()
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for scan in scans:
        for method, series in _gradient_series(scan).items():
            groups.setdefault(method, []).append(series)
    if not groups:
        return []
    panels = [
        ("change", "L(θ_t) − L(θ) (nats)", "Loss along −∇L"),
        ("cosine", "cos(∇L(θ), ∇L(θ_t))", "Gradient-angle similarity"),
        ("smoothness", "‖∇L(θ_t) − ∇L(θ)‖ / ‖θ_t − θ‖", "Smoothness (lower = smoother)"),
    ]
    panels = [p for p in panels if any(p[0] in s for ss in groups.values() for s in ss)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    handles = []
    for i, method in enumerate(sorted(groups, key=method_rank)):
        per_seed = groups[method]
        colour = method_colour(method, i)
        t = per_seed[0]["t"]
        same = [s for s in per_seed if s["t"].shape == t.shape and np.allclose(s["t"], t)]
        dl = np.array([float(s["variation"][0]) for s in same])
        label = (
            f"{method_name(method)}: ΔL = {np.mean(dl):.3g} ± {np.std(dl):.2g} "
            f"(mean ± sd of {len(same)} seeds)"
        )
        for ax, (key, ylabel, title) in zip(axes[0], panels):
            rows = [s[key] for s in same if key in s]
            if not rows:
                continue
            values = np.vstack(rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, sd = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
            (line,) = ax.plot(t, mean, color=colour, label=label, **line_style(i))
            ok = np.isfinite(mean)
            ax.fill_between(t[ok], (mean - sd)[ok], (mean + sd)[ok], **band_style(i, colour))
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("step t along each method's own −∇L (× lr)")
            if key == "smoothness" and np.nanmin(mean) > 0:
                ax.set_yscale("log")
            if ax is axes[0][0]:
                handles.append(line)
    n = max(len(v) for v in groups.values())
    fig.suptitle(
        with_context(
            f"Gradient-direction scan of the final models, mean ± sd over {n} seeds",
            [s.meta for s in scans],
        ),
        fontsize=12,
    )
    fig.tight_layout()
    legend_below(fig, handles, ncol=1 if len(handles) > 2 else len(handles))
    return save(fig, out_dir, stem, formats)

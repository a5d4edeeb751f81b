"""The figure of a ``slopes`` scan: the relaxation's own landscape (``docs/scans.md``).

At fixed weights, the scan moves the lower ReLU slopes along a path through the policies of
its ``slope_path`` attribute, ``a(s) = (1 - f) a_k + f a_{k+1}`` (``k = floor(s)``,
``f = s - k``). The panels show, against ``s``, the certified loss L(s), the cosine
cos(grad L(s), grad L(0)) of its parameter gradient to the one at the path's start, and the
gradient norm |grad L(s)|; the x ticks at the integers carry the policies' names, so each
policy's own loss reads off at its tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.labels import distinct, loss_axis, method_name
from figures.records import LineScan
from figures.style import (
    apply_style,
    legend_below,
    line_style,
    method_colour,
    method_rank,
    save,
    with_context,
)

__all__ = ["plot_slope_paths", "path_ticks"]

#: (field, y label, title) of each panel, in order
PANELS = (
    ("loss", None, "Certified loss along the slope path"),
    ("cosine", "cos(∇L(s), ∇L(0))", "Gradient cosine to the path's start"),
    ("grad_norm", "‖∇L(s)‖", "Gradient norm"),
)


def path_ticks(scans: Sequence[LineScan]) -> tuple[list[float], list[str]]:
    """Tick positions ``0..K-1`` and their labels: the policies' names when every scan ran the
    same ``slope_path``, else ``p0, p1, ...``."""
    paths = {tuple(str(p) for p in (s.meta.attrs.get("slope_path") or ())) for s in scans}
    if len(paths) == 1 and next(iter(paths)):
        names = list(next(iter(paths)))
        return [float(k) for k in range(len(names))], names
    k = int(max(float(np.nanmax(s.coord)) for s in scans)) + 1
    return [float(i) for i in range(k)], [f"p{i}" for i in range(k)]


def _entries(scans: Sequence[LineScan]) -> list[tuple[LineScan, str, dict, str, str]]:
    """``(scan, method, arrays, legend label, colour)`` per scanned loss of every file."""
    pairs = [
        (s, m, arrays)
        for s in scans
        for m, arrays in sorted(s.series.items(), key=lambda kv: method_rank(kv[0]))
    ]
    labels = distinct([s.meta.label(m) for s, m, _ in pairs], [s.meta.run for s, _, _ in pairs])
    return [
        (s, m, arrays, label, method_colour(m, i))
        for i, ((s, m, arrays), label) in enumerate(zip(pairs, labels))
    ]


def _panel(ax, entries, key: str, ticks: tuple[list[float], list[str]]) -> list:
    """One panel: ``key`` against ``s`` per entry, the policies' ticks and a line at each
    policy; returns the drawn lines."""
    handles = []
    for i, (scan, _m, arrays, label, colour) in enumerate(entries):
        values = np.asarray(arrays.get(key, np.full(scan.coord.shape, np.nan)), dtype=float)
        if not np.isfinite(values).any():
            continue
        at_policy = np.isclose(scan.coord, np.round(scan.coord))
        style = {**line_style(i), "marker": None}
        (h,) = ax.plot(scan.coord, values, color=colour, label=label, **style)
        ax.plot(scan.coord[at_policy], values[at_policy], "o", ms=4.5, color=colour)
        handles.append(h)
    positions, names = ticks
    for x in positions:
        ax.axvline(x, color="0.75", lw=0.7, ls=":", zorder=0)
    ax.set_xticks(positions)
    ax.set_xticklabels(
        names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_xlabel("lower slopes a(s) along the path")
    return handles


def plot_slope_paths(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
) -> list[Path]:
    """The figure of kind ``slopes`` (module doc): one panel per stored field, one line per
    scanned loss and file, a dot at each policy. ``log``: a log scale for the loss."""
    apply_style()
    import matplotlib.pyplot as plt

    entries = _entries(scans)
    ticks = path_ticks(scans)
    panels = [
        p
        for p in PANELS
        if any(np.isfinite(a.get(p[0], [np.nan])).any() for _, _, a, _, _ in entries)
    ]
    panels = panels or list(PANELS[:1])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    handles: list = []
    for ax, (key, ylabel, title) in zip(axes[0], panels):
        drawn = _panel(ax, entries, key, ticks)
        handles = handles or drawn
        ax.set_title(title)
        ax.set_ylabel(ylabel or loss_axis([m for _, m, *_ in entries]))
        if key == "cosine":
            ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
        if key == "loss" and log and all(np.nanmin(a["loss"]) > 0 for _, _, a, _, _ in entries):
            ax.set_yscale("log")
    methods = sorted({method_name(m) for _, m, *_ in entries})
    what = f"Relaxation landscape at fixed weights ({', '.join(methods)})"
    fig.suptitle(with_context(what, [s.meta for s in scans]), fontsize=12)
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(3, len(handles) or 1))
    return save(fig, out_dir, stem, formats)

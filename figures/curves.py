"""1D figures: loss along a random direction or between two checkpoints, and the paper's
gradient-direction scans.

Gradient scan (``docs/scans.md``): theta_t = theta - t * lr * g.  The first panel shows
L(theta_t) - L(theta) against t; the shaded band spans [min_t, max_t] of it, whose height is
the *loss variation* max_t L(theta_t) - min_t L(theta_t) (a smooth landscape has a thin band).
The next panels show the gradient-angle similarity cos(g, grad L(theta_t)) (1 = the gradient
does not turn), the smoothness estimate ||grad L(theta_t) - g|| / ||theta_t - theta|| (a local
Lipschitz constant of the gradient) and, when the scan records it, the sign-flip rate of the
bound's linear coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.labels import distinct, loss_axis, run_name
from figures.records import LineScan
from figures.style import (
    apply_style,
    band_edges,
    band_style,
    legend_below,
    line_style,
    method_colour,
    method_rank,
    save,
    with_context,
)


def _entries(scans: Sequence[LineScan]):
    """(scan, method, arrays, label, colour) for every scanned loss; the label names the method
    and eps, and the run too where two curves would otherwise read the same."""
    pairs = [
        (s, m, arrays)
        for s in scans
        for m, arrays in sorted(s.series.items(), key=lambda kv: method_rank(kv[0]))
    ]
    methods = [m if m != "loss" else s.meta.method for s, m, _ in pairs]
    labels = distinct(
        [s.meta.label(m) for (s, _, _), m in zip(pairs, methods)], [s.meta.run for s, _, _ in pairs]
    )
    return [
        (s, m, arrays, label, method_colour(m, i))
        for i, ((s, _, arrays), m, label) in enumerate(zip(pairs, methods, labels))
    ]


def _draw(ax, x: np.ndarray, values: np.ndarray, colour: str, label: str | None = None, **line):
    """One curve on ``ax`` (returned). Computed points whose neighbours are both NaN (a partial
    scan filled out of order) get a marker of their own, since a line has no segment through them."""
    y = np.asarray(values, dtype=float)
    (drawn,) = ax.plot(x, y, color=colour, label=label, **line)
    finite = np.isfinite(y)
    padded = np.pad(finite, 1, constant_values=False)
    lone = finite & ~padded[:-2] & ~padded[2:]
    if lone.any() and (line.get("marker") is None or "markevery" in line):
        ax.plot(np.asarray(x)[lone], y[lone], "o", ms=4, color=colour)
    return drawn


def gradient_direction_text(scans: Sequence[LineScan]) -> tuple[str, str]:
    """``(axis, note)``: what the gradient scans moved along, from their ``direction_from``
    attribute: each method along its own gradient (``own``), or every method along one
    method's (a shared direction; files written before the attribute existed used the first
    method's)."""
    froms = set()
    for s in scans:
        d = s.meta.attrs.get("direction_from")
        if d is None and len(s.series) > 1:
            methods = s.meta.attrs.get("methods") or s.meta.attrs.get("labels") or list(s.series)
            d = str(list(methods)[0])
        froms.add("own" if d in (None, "own") else str(d))
    if froms == {"own"}:
        return "step t along each method's own −∇L (× lr)", "each method along its own gradient"
    shared = sorted(froms - {"own"})
    from figures.labels import method_name

    names = ", ".join(method_name(m) for m in shared)
    return f"step t along −∇L of {names} (× lr)", f"every method along the gradient of {names}"


def loss_variation(loss: np.ndarray) -> float:
    """max_t L(theta_t) - min_t L(theta_t) over the computed (finite) points; NaN if none."""
    v = np.asarray(loss, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else float("nan")


def _loss_change_panel(ax_loss, entries, xlabel: str, note: str) -> list:
    """The first panel of a gradient scan: L(θ_t) − L(θ) against t per entry, with the band
    of its loss variation; returns the legend's handles."""
    handles = []
    for i, (scan, _method, arrays, label, colour) in enumerate(entries):
        t = scan.coord
        mean = np.asarray(arrays["loss"], dtype=float)
        if not np.isfinite(mean).any():  # a scan whose points are not computed yet
            continue
        zero = int(np.argmin(np.abs(t)))
        base = mean[zero] if np.isfinite(mean[zero]) else np.nanmin(mean)
        rel = mean - base
        dl = loss_variation(mean)
        (h,) = ax_loss.plot(
            t, rel, color=colour, label=f"{label}: L(θ)={base:.3g}, ΔL={dl:.3g}", **line_style(i)
        )
        handles.append(h)
        values = rel[np.isfinite(rel)]
        if values.size:
            ax_loss.axhspan(values.min(), values.max(), **band_style(i, colour))
            band_edges(ax_loss, values.min(), values.max(), colour, i)
    ax_loss.axhline(0.0, color="0.4", lw=0.8, ls=":")
    ax_loss.set_xlabel(xlabel)
    ax_loss.set_ylabel("L(θ_t) − L(θ) (nats)")
    ax_loss.set_title("Loss along −∇L (band: loss variation)")
    ax_loss.text(
        0.02,
        0.98,
        f"L: {loss_axis([m for _, m, *_ in entries], unit='')}\nθ_t: {note}",
        transform=ax_loss.transAxes,
        va="top",
        ha="left",
        fontsize=7.5,
        color="0.25",
        bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1.5},
    )
    return handles


def _curve_panel(ax, entries, key: str, texts: tuple[str, str, str], log: bool) -> None:
    """One more panel of a gradient scan: ``key`` against t per entry; ``texts``: the x label,
    y label and title; ``log``: a log y axis where the values span enough."""
    for i, (scan, _method, arrays, label, colour) in enumerate(entries):
        if key not in arrays or not np.isfinite(arrays[key]).any():
            continue
        _draw(ax, scan.coord, arrays[key], colour, label, **line_style(i))
    ax.set_xlabel(texts[0])
    ax.set_ylabel(texts[1])
    ax.set_title(texts[2])
    if log and _positive(ax):
        ax.set_yscale("log")


def plot_gradient_scans(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
) -> list[Path]:
    """Loss change (with the loss-variation band), gradient cosine and smoothness against step
    size for every method of every gradient scan, overlaid on shared axes (the figure of kind
    ``gradient``).

    The loss panel shows L(θ_t) − L(θ) so methods whose losses differ in level still compare;
    the legend gives each method's L(θ) and loss variation ΔL. ``log`` is not used: the loss
    change is signed, and the smoothness panel chooses its own scale.
    """
    apply_style()
    import matplotlib.pyplot as plt

    entries = _entries(scans)

    def finite(key: str) -> bool:
        return any(key in a and np.isfinite(a[key]).any() for _, _, a, _, _ in entries)

    has_cos, has_smooth, has_flip = finite("cosine"), finite("smoothness"), finite("sign_flip")
    n_panels = 1 + has_cos + has_smooth + has_flip
    if n_panels == 4:
        fig, grid = plt.subplots(2, 2, figsize=(10.5, 7.6), squeeze=False)
    else:
        fig, grid = plt.subplots(1, n_panels, figsize=(4.5 * n_panels, 3.8), squeeze=False)
    axes = list(grid.ravel())
    xlabel, note = gradient_direction_text(scans)
    handles = _loss_change_panel(axes[0], entries, xlabel, note)

    def curve_panel(ax, key: str, ylabel: str, title: str, log: bool = False) -> None:
        _curve_panel(ax, entries, key, (xlabel, ylabel, title), log)

    panel = 1
    if has_cos:
        curve_panel(axes[panel], "cosine", "cos(∇L(θ), ∇L(θ_t))", "Gradient-angle similarity")
        axes[panel].axhline(1.0, color="0.4", lw=0.8, ls=":")
        panel += 1
    if has_smooth:
        curve_panel(
            axes[panel],
            "smoothness",
            "‖∇L(θ_t) − ∇L(θ)‖ / ‖θ_t − θ‖",
            "Smoothness (lower = smoother)",
            log=True,
        )
        panel += 1
    if has_flip:
        curve_panel(
            axes[panel], "sign_flip", "fraction of coefficients", "Sign flips of bound coefficients"
        )
    fig.suptitle(with_context("Gradient-direction scan", [s.meta for s in scans]), fontsize=12)
    fig.tight_layout()
    legend_below(
        fig, handles, ncol=min(2, len(handles) or 1)
    )  # none while no point is computed yet
    return save(fig, out_dir, stem, formats)


def _positive(ax, ratio: float = 20.0) -> bool:
    """True when every plotted y value is positive and the largest is over ``ratio`` times the smallest."""
    ys = np.concatenate(
        [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.zeros(0)]
    )
    ys = ys[np.isfinite(ys)]
    return bool(ys.size and ys.min() > 0 and ys.max() / ys.min() > ratio)


def plot_interpolations(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
) -> list[Path]:
    """The figure of kind ``interpolate``: :func:`plot_line_scans` with both checkpoints
    (alpha = 0 and 1) marked and named."""
    return plot_line_scans(scans, out_dir, stem, formats, log=log, between=True)


def plot_line_scans(
    scans: Sequence[LineScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
    between: bool = False,
) -> list[Path]:
    """Loss against the scan coordinate of 1D scans (the figure of a 1D kind without one of
    its own, as ``random-1d``), one line per method and file (each with its own dashes and
    markers, so equal curves stay visible); the centre (0) is marked, and with ``between`` the
    second checkpoint of an interpolation (1). ``log``: a logarithmic loss axis."""
    apply_style()
    import matplotlib.pyplot as plt

    entries = [
        e for e in _entries(scans) if np.isfinite(np.asarray(e[2]["loss"], dtype=float)).any()
    ]
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    handles = []
    for i, (scan, _method, arrays, label, colour) in enumerate(entries):
        style = {**line_style(i), "markevery": max(1, scan.coord.size // 12)}
        handles.append(_draw(ax, scan.coord, arrays["loss"], colour, label, **style))
    ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
    if between:
        ax.axvline(1.0, color="0.3", lw=0.9, ls="--")
        ax.set_title("Loss between two checkpoints")
        ends = {(s.meta.run, run_name(s.meta.attrs.get("to_checkpoint"))) for s in scans}
        if len(ends) == 1:
            a, b = next(iter(ends))
            if a and b:
                ax.set_xlabel(f"interpolation α (0 = run {a}, 1 = run {b})")
    else:
        ax.set_title("Loss along a random direction (0 = checkpoint)")
    ax.set_title(with_context(ax.get_title(), [s.meta for s in scans]))
    if not ax.get_xlabel():
        ax.set_xlabel(scans[0].coord_label)
    ax.set_ylabel(loss_axis([m for _, m, *_ in entries]))
    if log and _positive(ax, ratio=0.0):
        ax.set_yscale("log")
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(2, len(handles) or 1))
    return save(fig, out_dir, stem, formats)

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

from figures.data import LineScan
from figures.style import apply_style, method_colour, method_rank, save, with_context


def _entries(scans: Sequence[LineScan]):
    """(scan, method, arrays, label, colour) for every scanned loss; the label names method,
    eps and checkpoint, and the file too when it records no checkpoint and several are drawn."""
    pairs = [(s, m, arrays) for s in scans for m, arrays in sorted(s.series.items(), key=lambda kv: method_rank(kv[0]))]
    out = []
    for i, (s, m, arrays) in enumerate(pairs):
        method = m if m != "loss" else s.meta.method
        label = s.meta.label(method, with_checkpoint=True)
        if not s.meta.checkpoint and len(scans) > 1:
            label += f" [{s.meta.name or s.meta.path.stem}]"
        out.append((s, method, arrays, label, method_colour(method, i)))
    return out


def _draw(ax, x: np.ndarray, values: np.ndarray, colour: str, label: str | None = None, **line) -> None:
    """One curve on ``ax``. Computed points whose neighbours are both NaN (a partial scan
    filled out of order) get a marker of their own, since a line has no segment through them."""
    y = np.asarray(values, dtype=float)
    ax.plot(x, y, color=colour, label=label, **line)
    finite = np.isfinite(y)
    padded = np.pad(finite, 1, constant_values=False)
    lone = finite & ~padded[:-2] & ~padded[2:]
    if lone.any() and line.get("marker") is None:
        ax.plot(np.asarray(x)[lone], y[lone], "o", ms=4, color=colour)


def loss_variation(loss: np.ndarray) -> float:
    """max_t L(theta_t) - min_t L(theta_t) over the computed (finite) points; NaN if none."""
    v = np.asarray(loss, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else float("nan")


def plot_gradient_scans(
    scans: Sequence[LineScan], out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Loss change (with the loss-variation band), gradient cosine and smoothness against step
    size for every method of every gradient scan, overlaid on shared axes.

    The loss panel shows L(θ_t) − L(θ) so methods whose losses differ in level still compare;
    the legend gives each method's L(θ) and loss variation ΔL.
    """
    apply_style()
    import matplotlib.pyplot as plt

    entries = _entries(scans)
    has_cos = any("cosine" in a for _, _, a, _, _ in entries)
    has_smooth = any("smoothness" in a for _, _, a, _, _ in entries)
    has_flip = any("sign_flip" in a and np.isfinite(a["sign_flip"]).any() for _, _, a, _, _ in entries)
    n_panels = 1 + has_cos + has_smooth + has_flip
    if n_panels == 4:
        fig, grid = plt.subplots(2, 2, figsize=(10.5, 7.6), squeeze=False)
    else:
        fig, grid = plt.subplots(1, n_panels, figsize=(4.5 * n_panels, 3.8), squeeze=False)
    axes = list(grid.ravel())
    ax_loss = axes[0]
    handles = []
    for scan, method, arrays, label, colour in entries:
        t = scan.coord
        mean = np.asarray(arrays["loss"], dtype=float)
        if not np.isfinite(mean).any():  # a scan whose points are not computed yet
            continue
        zero = int(np.argmin(np.abs(t)))
        base = mean[zero] if np.isfinite(mean[zero]) else np.nanmin(mean)
        rel = mean - base
        dl = loss_variation(mean)
        (h,) = ax_loss.plot(t, rel, "-o", ms=3.5, lw=1.8, color=colour,
                            label=f"{label}: L(θ)={base:.3g}, ΔL={dl:.3g}")
        handles.append(h)
        finite = rel[np.isfinite(rel)]
        if finite.size:
            ax_loss.axhspan(finite.min(), finite.max(), color=colour, alpha=0.10, lw=0)
    ax_loss.axhline(0.0, color="0.4", lw=0.8, ls=":")
    ax_loss.set_xlabel("step size t along −∇L (× learning rate)")
    ax_loss.set_ylabel("L(θ − t·lr·∇L) − L(θ)  (nats)")
    ax_loss.set_title("Loss along −∇L (band: loss variation)")

    def curve_panel(ax, key: str, ylabel: str, title: str, log: bool = False) -> None:
        for scan, method, arrays, label, colour in entries:
            if key not in arrays:
                continue
            _draw(ax, scan.coord, arrays[key], colour, label, marker="o", ms=3.5, lw=1.8)
        ax.set_xlabel("step size t along −∇L (× learning rate)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if log and _positive(ax):
            ax.set_yscale("log")

    panel = 1
    if has_cos:
        curve_panel(axes[panel], "cosine", "cos(∇L(θ), ∇L(θ_t))", "Gradient-angle similarity")
        axes[panel].axhline(1.0, color="0.4", lw=0.8, ls=":")
        panel += 1
    if has_smooth:
        curve_panel(axes[panel], "smoothness", "‖∇L(θ_t) − ∇L(θ)‖ / ‖θ_t − θ‖", "Smoothness (lower = smoother)",
                    log=True)
        panel += 1
    if has_flip:
        curve_panel(axes[panel], "sign_flip", "fraction of coefficients", "Sign flips of bound coefficients")
    fig.suptitle(with_context("Gradient-direction scan", [s.meta for s in scans]), fontsize=12)
    if handles:  # none while no point of the scan is computed yet
        fig.legend(handles=handles, loc="lower center", ncol=min(2, len(handles)), bbox_to_anchor=(0.5, 0.0))
    rows = (len(handles) + 1) // 2
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.4, 0.27 * rows / height + 0.02), 1, 1))
    return save(fig, out_dir, stem, formats)


def _positive(ax) -> bool:
    """True when every plotted y value is positive and they span more than a decade."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [np.zeros(0)])
    ys = ys[np.isfinite(ys)]
    return bool(ys.size and ys.min() > 0 and ys.max() / ys.min() > 20)


def plot_line_scans(
    scans: Sequence[LineScan], out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Loss against the scan coordinate for ``random-1d`` or ``interpolate`` scans, one line
    per method and file; the centre (α = 0, and α = 1 for interpolations) is marked."""
    apply_style()
    import matplotlib.pyplot as plt

    kind = scans[0].meta.kind
    entries = _entries(scans)
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for scan, method, arrays, label, colour in entries:
        _draw(ax, scan.coord, arrays["loss"], colour, label, lw=1.9)
    ax.axvline(0.0, color="0.3", lw=0.9, ls="--")
    if kind == "interpolate":
        from figures.style import short_path

        ax.axvline(1.0, color="0.3", lw=0.9, ls="--")
        ax.set_title("Loss between two checkpoints")
        ends = {(short_path(s.meta.checkpoint), short_path(s.meta.attrs.get("to_checkpoint"))) for s in scans}
        if len(ends) == 1:
            a, b = next(iter(ends))
            if a and b:
                ax.set_xlabel(f"interpolation α (0 = {a}, 1 = {b})")
    else:
        ax.set_title("Loss along a random direction (0 = checkpoint)")
    ax.set_title(with_context(ax.get_title(), [s.meta for s in scans]))
    if not ax.get_xlabel():
        ax.set_xlabel(scans[0].coord_label)
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.legend(loc="best")
    fig.tight_layout()
    return save(fig, out_dir, stem, formats)

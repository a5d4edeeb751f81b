"""2D figures of a ``random-2d`` scan: L(theta + α d1 + β d2) on an (α, β) grid.

For each scanned loss (method) a filled contour plot and a heatmap are drawn, with the
checkpoint itself (α = β = 0) marked; ``surface3d=True`` adds a 3D surface.  Grid points
not yet computed (NaN) are left blank.  Every panel has its own colour bar, because the
methods' losses differ in scale; compare the *shape* of the level sets between panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.data import SurfaceScan
from figures.style import apply_style, format_eps, method_name, save, short_path


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns of a figure with ``n`` panels (2 x 2 for four, else up to three a row)."""
    cols = 2 if n == 4 else min(n, 3)
    return (n + cols - 1) // cols, cols


def _panels(n: int):
    import matplotlib.pyplot as plt

    rows, cols = _grid(n)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(scan: SurfaceScan, method: str) -> str:
    bits = [method_name(method if method != "loss" else scan.meta.method)]
    eps = format_eps(scan.meta.eps)
    if eps:
        bits.append(eps)
    return ", ".join(bits)


def _suptitle(scan: SurfaceScan, what: str) -> str:
    bits = [b for b in (scan.meta.dataset, scan.meta.model, short_path(scan.meta.checkpoint)) if b]
    return what + (f" — {', '.join(map(str, bits))}" if bits else "")


def _mark_centre(ax) -> None:
    ax.plot([0.0], [0.0], marker="*", ms=13, color="white", mec="black", mew=1.0, ls="none", label="checkpoint (α=β=0)")


def plot_surface(
    scan: SurfaceScan,
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    surface3d: bool = False,
) -> list[Path]:
    """Contour and heatmap figures (and a 3D surface when asked) of one 2D scan."""
    apply_style()
    import matplotlib.pyplot as plt

    written: list[Path] = []
    methods = list(scan.loss)
    xx, yy = np.meshgrid(scan.x, scan.y, indexing="ij")

    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods):
        z = np.ma.masked_invalid(scan.loss[method])
        levels = 20 if z.count() > 1 and float(z.max() - z.min()) > 0 else 2
        cs = ax.contourf(xx, yy, z, levels=levels, cmap="viridis")
        if levels > 2:
            ax.contour(xx, yy, z, levels=cs.levels[::3], colors="white", linewidths=0.5, alpha=0.6)
        fig.colorbar(cs, ax=ax, label="loss (nats)")
        _mark_centre(ax)
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_title(_title(scan, method))
        ax.legend(loc="upper right", fontsize=7)
        ax.set_aspect("equal", adjustable="box")
    fig.suptitle(_suptitle(scan, "Loss contours around the checkpoint"), fontsize=12)
    fig.tight_layout()
    written += save(fig, out_dir, f"{stem}_contour", formats)

    # half a grid cell around the outer points, so each cell is centred on its (α, β)
    dx = (scan.x[-1] - scan.x[0]) / (scan.x.size - 1) / 2 if scan.x.size > 1 else 0.5
    dy = (scan.y[-1] - scan.y[0]) / (scan.y.size - 1) / 2 if scan.y.size > 1 else 0.5
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods):
        z = np.ma.masked_invalid(scan.loss[method])
        im = ax.imshow(
            z.T,
            origin="lower",
            extent=(scan.x[0] - dx, scan.x[-1] + dx, scan.y[0] - dy, scan.y[-1] + dy),
            cmap="magma",
            aspect="auto",
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, label="loss (nats)")
        ax.plot([0.0], [0.0], marker="+", ms=16, mew=2.2, color="cyan", ls="none", label="checkpoint (α=β=0)")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_title(_title(scan, method))
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(False)
    fig.suptitle(_suptitle(scan, "Loss heatmap around the checkpoint"), fontsize=12)
    fig.tight_layout()
    written += save(fig, out_dir, f"{stem}_heatmap", formats)

    if surface3d:
        rows, cols = _grid(len(methods))
        fig = plt.figure(figsize=(5.0 * cols, 4.3 * rows))
        for i, method in enumerate(methods):
            ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
            z = np.asarray(scan.loss[method], dtype=float)
            ax.plot_surface(xx, yy, np.where(np.isfinite(z), z, np.nan), cmap="viridis", linewidth=0, antialiased=True)
            ax.set_xlabel("α")
            ax.set_ylabel("β")
            ax.set_zlabel("loss (nats)")
            ax.set_title(_title(scan, method))
        fig.suptitle(_suptitle(scan, "Loss surface"), fontsize=12)
        fig.tight_layout()
        written += save(fig, out_dir, f"{stem}_surface3d", formats)
    return written

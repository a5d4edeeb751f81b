"""2D figures of a ``random-2d`` or ``pca`` scan: L(theta + x d1 + y d2) on an (x, y) grid.

For each scanned loss a panel of filled contours and one of a heatmap are drawn, with the
checkpoint itself (x = y = 0) marked; ``surface3d=True`` adds 3D surfaces. All panels of a
figure share one colour scale (and the 3D surfaces one z axis), so that methods compare
honestly: the same colour is the same loss in every panel. ``log=True`` makes that scale
logarithmic, which shows the level sets of losses that differ by orders of magnitude. Inside
:func:`robust_scale` a linear scale spans the 2nd to 98th percentile of the values instead of
their whole range (the colour bar's ends extended), so huge corners (IBP's certified loss
reaches ~78 nats where the checkpoint's region is ~2) no longer take the whole colour range.
Grid points not yet computed (NaN) are left blank.

A PCA scan (Li et al. 2018, section 7) also draws the training trajectory projected on the
plane, its start and its end, and labels each axis with the share of the trajectory's variance
its direction explains. Its axes are drawn with equal aspect (both directions are unit vectors
in parameter space), so a direction that explains little of the variance looks short.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from figures.labels import loss_axis, loss_title
from figures.records import SurfaceScan
from figures.style import apply_style, legend_below, save

LOG_FLOOR = 1e-8
"""On a log scale, losses below this share of the largest one are drawn at it."""


ROBUST = (2.0, 98.0)
"""The percentiles a robust linear colour scale spans."""

_ROBUST: list[bool] = [False]


@contextmanager
def robust_scale(on: bool = True) -> Iterator[None]:
    """Within the block, linear shared colour scales span the :data:`ROBUST` percentiles of the
    values (values beyond them get the end colours, and the colour bar says so with extended
    ends); log scales are unchanged."""
    _ROBUST.append(on)
    try:
        yield
    finally:
        _ROBUST.pop()


def _extend(log: bool) -> str:
    """The colour bar's and contours' ``extend``: ``both`` for a robust linear scale."""
    return "both" if _ROBUST[-1] and not log else "neither"


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns of a figure with ``n`` panels (2 x 2 for four, else up to three a row)."""
    cols = 2 if n == 4 else min(n, 3)
    return (n + cols - 1) // cols, cols


def _panels(n: int, **kw):
    import matplotlib.pyplot as plt

    rows, cols = _grid(n)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols + 0.9, 3.9 * rows), squeeze=False, **kw
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(scan: SurfaceScan, key: str) -> str:
    title = loss_title(scan.method(key), scan.meta.eps)
    return f"{title} — run {scan.runs[key]}" if key in scan.runs else title


def _suptitle(scan: SurfaceScan, what: str) -> str:
    bits = [b for b in (scan.meta.dataset, scan.meta.model) if b]
    if not scan.runs and scan.meta.run:
        bits.append(f"run {scan.meta.run}")
    from figures.style import context_suffix

    return what + (f" — {', '.join(map(str, bits))}" if bits else "") + context_suffix()


def _axis_labels(scan: SurfaceScan, key: str) -> tuple[str, str]:
    ratios = scan.variance.get(key)
    if ratios is not None:
        return tuple(
            f"{name} PC ({100 * r:.1f} % var.)" if np.isfinite(r) else f"{name} PC"
            for name, r in zip(("1st", "2nd"), ratios)
        )  # type: ignore[return-value]
    return "x (direction 1)", "y (direction 2)"


def shared_scale(grids: Sequence[np.ndarray], log: bool = False, n_levels: int = 21):
    """One colour norm and one set of contour levels for every panel: from the smallest to the
    largest computed value over all of them (on a log scale from the smallest positive one,
    at least :data:`LOG_FLOOR` times the largest)."""
    from matplotlib import colors

    values = np.concatenate([np.asarray(g, dtype=float).ravel() for g in grids])
    values = values[np.isfinite(values)]
    if log:
        positive = values[values > 0]
        hi = float(positive.max()) if positive.size else 1.0
        lo = max(float(positive.min()) if positive.size else hi, hi * LOG_FLOOR)
        if not hi > lo:
            lo, hi = lo / 1.5, hi * 1.5
        return colors.LogNorm(vmin=lo, vmax=hi), np.geomspace(lo, hi, n_levels)
    lo, hi = float(values.min()), float(values.max())
    if _ROBUST[-1] and values.size:
        lo, hi = (float(v) for v in np.percentile(values, ROBUST))
    if not hi > lo:
        pad = max(abs(lo) * 1e-3, 1e-6)
        lo, hi = lo - pad, hi + pad
    return colors.Normalize(vmin=lo, vmax=hi), np.linspace(lo, hi, n_levels)


def _drawn(z: np.ndarray, norm, log: bool) -> np.ma.MaskedArray:
    z = np.asarray(z, dtype=float)
    if log:  # on the log scale a (tiny) loss below the floor is drawn at the floor
        z = np.where(np.isfinite(z), np.maximum(z, norm.vmin), z)
    return np.ma.masked_invalid(z)


def _marks(ax, scan: SurfaceScan, key: str) -> list:
    """The checkpoint (x = y = 0) and, for a PCA scan, the trajectory with its start and end;
    returns the handles for the figure's legend."""
    handles = []
    path = scan.paths.get(key)
    if path is not None and len(path):
        (line,) = ax.plot(path[:, 0], path[:, 1], "-", color="white", lw=2.6, zorder=4)
        line.set_label("_outline")
        (line,) = ax.plot(
            path[:, 0],
            path[:, 1],
            "-o",
            color="#d62728",
            lw=1.4,
            ms=3,
            zorder=5,
            label="training trajectory (checkpoints)",
        )
        handles.append(line)
        (start,) = ax.plot(
            path[:1, 0],
            path[:1, 1],
            "s",
            ms=8,
            color="#2ca02c",
            mec="black",
            zorder=6,
            label="start of training",
        )
        handles.append(start)
    (centre,) = ax.plot(
        [0.0],
        [0.0],
        marker="*",
        ms=14,
        color="white",
        mec="black",
        mew=1.0,
        ls="none",
        zorder=7,
        label="end: the scanned checkpoint (x = y = 0)"
        if path is not None
        else "the scanned checkpoint (x = y = 0)",
    )
    handles.append(centre)
    return handles


def _finish(
    fig, axes, scan: SurfaceScan, keys: list[str], mappable, label: str, what: str, handles: list
) -> None:
    from matplotlib import colors

    for ax, key in zip(axes, keys):
        xl, yl = _axis_labels(scan, key)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(_title(scan, key))
    extend = _extend(isinstance(mappable.norm, colors.LogNorm))
    fig.colorbar(mappable, ax=axes, label=label, shrink=0.9, pad=0.02, extend=extend)
    fig.suptitle(_suptitle(scan, what), fontsize=12)
    legend_below(fig, handles)


def plot_surface(
    scan: SurfaceScan,
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    surface3d: bool = False,
    log: bool = False,
) -> list[Path]:
    """Contour and heatmap figures (and 3D surfaces when asked) of one 2D scan, every panel on
    one colour scale (logarithmic with ``log``); panels of losses with no computed point are
    left out."""
    apply_style()
    from matplotlib import cm

    keys = [k for k, z in scan.loss.items() if np.isfinite(np.asarray(z, dtype=float)).any()]
    if not keys:
        raise ValueError(f"{scan.meta.path}: no computed point to draw")
    written: list[Path] = []
    xx, yy = np.meshgrid(scan.x, scan.y, indexing="ij")
    norm, levels = shared_scale([scan.loss[k] for k in keys], log)
    label = loss_axis([scan.method(k) for k in keys], where="panel title") + (
        ", log scale" if log else (", 2nd–98th percentile" if _ROBUST[-1] else "")
    )
    mappable = cm.ScalarMappable(norm=norm, cmap="viridis")

    fig, axes = _panels(len(keys), layout="constrained")
    handles: list = []
    for ax, key in zip(axes, keys):
        z = _drawn(scan.loss[key], norm, log)
        ax.contourf(xx, yy, z, levels=levels, norm=norm, cmap="viridis", extend=_extend(log))
        ax.contour(
            xx, yy, z, levels=levels[::4], norm=norm, colors="white", linewidths=0.5, alpha=0.6
        )
        handles = _marks(ax, scan, key)
        ax.set_xlim(scan.x[0], scan.x[-1])
        ax.set_ylim(scan.y[0], scan.y[-1])
        if scan.meta.kind == "pca":  # one unit is one unit of parameter distance on both axes
            ax.set_aspect("equal", adjustable="box")
    _finish(fig, axes, scan, keys, mappable, label, "Loss contours around the checkpoint", handles)
    written += save(fig, out_dir, f"{stem}_contour", formats)

    # half a grid cell around the outer points, so each cell is centred on its (x, y)
    dx = (scan.x[-1] - scan.x[0]) / (scan.x.size - 1) / 2 if scan.x.size > 1 else 0.5
    dy = (scan.y[-1] - scan.y[0]) / (scan.y.size - 1) / 2 if scan.y.size > 1 else 0.5
    fig, axes = _panels(len(keys), layout="constrained")
    heat = cm.ScalarMappable(norm=norm, cmap="magma")
    for ax, key in zip(axes, keys):
        ax.imshow(
            _drawn(scan.loss[key], norm, log).T,
            origin="lower",
            norm=norm,
            cmap="magma",
            aspect="equal" if scan.meta.kind == "pca" else "auto",
            interpolation="nearest",
            extent=(scan.x[0] - dx, scan.x[-1] + dx, scan.y[0] - dy, scan.y[-1] + dy),
        )
        handles = _marks(ax, scan, key)
        ax.grid(False)
    _finish(fig, axes, scan, keys, heat, label, "Loss heatmap around the checkpoint", handles)
    written += save(fig, out_dir, f"{stem}_heatmap", formats)

    if surface3d:
        written += _surface3d(scan, keys, xx, yy, norm, log, out_dir, stem, formats)
    return written


def _surface3d(
    scan: SurfaceScan, keys: list[str], xx, yy, norm, log: bool, out_dir, stem: str, formats
) -> list[Path]:
    """3D surfaces on one z axis (log10 of the loss with ``log``, ticks labelled as powers of 10)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    rows, cols = _grid(len(keys))
    fig = plt.figure(figsize=(5.0 * cols, 4.3 * rows))
    lo, hi = (np.log10(norm.vmin), np.log10(norm.vmax)) if log else (norm.vmin, norm.vmax)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        z = np.ma.filled(_drawn(scan.loss[key], norm, log), np.nan)
        ax.plot_surface(
            xx,
            yy,
            np.log10(z) if log else z,
            cmap="viridis",
            vmin=lo,
            vmax=hi,
            linewidth=0,
            antialiased=True,
        )
        ax.set_zlim(lo, hi)
        if log:  # a log z axis: log10 of the loss drawn, ticks at round losses
            ticks = [
                t
                for t in LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(norm.vmin, norm.vmax)
                if norm.vmin <= t <= norm.vmax
            ]
            ax.set_zticks(np.log10(ticks) if len(ticks) >= 2 else np.linspace(lo, hi, 3))
            ax.zaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{10.0**v:.3g}"))
        xl, yl = _axis_labels(scan, key)
        ax.set_xlabel(xl.split(":")[0] if ":" in xl else "x")
        ax.set_ylabel(yl.split(":")[0] if ":" in yl else "y")
        ax.set_zlabel("loss (nats" + (", log scale)" if log else ")"))
        ax.set_title(_title(scan, key))
    fig.suptitle(_suptitle(scan, "Loss surface (one z axis for all panels)"), fontsize=12)
    fig.tight_layout()
    return save(fig, out_dir, f"{stem}_surface3d", formats)

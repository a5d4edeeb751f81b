"""Shared look of every figure: seaborn theme, one fixed colour per method, distinct dashes
and markers per curve, legends outside the data, and saving to several formats.

Every figure module calls :func:`apply_style` before drawing and :func:`save` to write the
figure, so that the same method has the same colour and name in every picture. The words
(method and run names, loss names) are :mod:`figures.labels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files, never windows

import matplotlib.pyplot as plt
import seaborn as sns

from common import store
from common.names import LABELS
from figures.labels import format_eps, legend_label, method_name  # noqa: F401  (re-exported)

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""Image formats :func:`save` can write."""

_EXTRA_COLOURS = ["#e377c2", "#17becf", "#bcbd22", "#8c564b", "#393b79", "#637939"]
_RANK = {m: i for i, m in enumerate(LABELS)}


def apply_style() -> None:
    """Set the seaborn theme used by every figure (white grid, paper-sized legible fonts)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titleweight": "bold",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8.5,
            "legend.framealpha": 0.85,
            "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable
        }
    )


def method_rank(method: str | None) -> int:
    """Sort key listing methods the toolkit knows in a fixed order (IBP before CROWN-IBP, ...,
    the tightest-slope method last), unknown ones after them."""
    return _RANK.get(str(method or "").lower(), len(_RANK))


def method_colour(method: str | None, index: int = 0) -> str:
    """Fixed colour of a method; methods the toolkit does not know cycle through spare colours."""
    key = str(method or "").lower()
    if key in LABELS:
        return LABELS[key].colour
    for known, label in LABELS.items():
        if key.startswith(known):
            return label.colour
    return _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)]


LINESTYLES: tuple = ("-", "--", "-.", ":", (0, (5, 1.5, 1, 1.5, 1, 1.5)))
MARKERS = "osD^vP*X<>"


def line_style(index: int) -> dict:
    """Dashes and a marker for the ``index``-th curve of a panel, so that curves which coincide
    (two methods with the same values) stay visible: each has its own dash pattern and marker,
    and later ones are drawn a little thinner, on top."""
    return {
        "ls": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "lw": max(1.0, 2.0 - 0.25 * index),
        "ms": max(3.0, 6.0 - 0.8 * index),
    }


HATCHES = ("////", "\\\\\\\\", "....", "xxxx", "||||", "----", "oo", "++")


def band_style(index: int, colour: str) -> dict:
    """A shaded band (``axhspan`` / ``fill_between``) of the ``index``-th method that stays
    distinguishable where bands overlap: a light fill, its own hatch in the method's colour and a
    dashed edge, so overlapping bands read as crossing hatches instead of one mixed colour."""
    return {
        "facecolor": colour,
        "alpha": 0.08,
        "hatch": HATCHES[index % len(HATCHES)],
        "edgecolor": colour,
        "lw": 0.0,
    }


def band_edges(ax, lo: float, hi: float, colour: str, index: int) -> None:
    """The two edges of a horizontal band as thin lines in the method's dash pattern."""
    ls = LINESTYLES[index % len(LINESTYLES)]
    for y in (lo, hi):
        ax.axhline(y, color=colour, lw=0.9, ls=ls, alpha=0.9)


def legend_below(
    fig: plt.Figure, handles: Sequence, ncol: int | None = None, **kw
) -> object | None:
    """One legend for the whole figure, below it, outside every axes, so no legend box covers
    data (saving with a tight bounding box keeps it in the image). Call after the layout."""
    handles = [h for h in handles if h is not None]
    if not handles:
        return None
    ncol = ncol or min(3, len(handles))
    return fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=fig.transFigure,
        ncol=ncol,
        frameon=False,
        **kw,
    )


_NOTES: list[str] = []


@contextmanager
def context_note(text: str):
    """While active, every figure title made by :func:`with_context` ends with ``(text)``: e.g.
    ``reproduce --seeds`` says which seed a figure of one seed's runs shows."""
    _NOTES.append(str(text))
    try:
        yield
    finally:
        _NOTES.pop()


def context_suffix() -> str:
    """`` (note; note)`` of the active :func:`context_note` calls, or ``""``."""
    return f" ({'; '.join(_NOTES)})" if _NOTES else ""


def with_context(what: str, metas: Iterable) -> str:
    """A title ``"what — digits, mlp"``: ``what`` followed by the dataset and the model when
    all of ``metas`` (:class:`figures.data.Meta`) share them, each left out otherwise, and the
    active :func:`context_note`."""
    metas = list(metas)
    bits = []
    for attr in ("dataset", "model"):
        values = {getattr(m, attr) for m in metas if getattr(m, attr, None)}
        if len(values) == 1:
            bits.append(str(next(iter(values))))
    return what + (f" — {', '.join(bits)}" if bits else "") + context_suffix()


def save(
    fig: plt.Figure, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.<fmt>`` for every format (each atomically:
    :func:`common.store.atomic_path`), close it, return the paths.

    Raises ValueError for a format not in :data:`FORMATS` and ``DiskFullError`` (an OSError)
    when the disk is full.
    """
    fmts = normalise_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for fmt in fmts:
            target = out / f"{stem}.{fmt}"
            with store.atomic_path(target) as tmp:  # a full disk never leaves a truncated image
                fig.savefig(tmp, format=fmt)
            written.append(target)
    finally:
        plt.close(fig)
    return written


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file (a table) atomically, like every figure."""
    with store.atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def normalise_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Validate an image-format list (``"png,pdf"`` or a sequence); ValueError names a bad one."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    fmts = tuple(f.strip().lower().lstrip(".") for f in formats if f and f.strip())
    if not fmts:
        raise ValueError(f"no image format given; choose from {', '.join(FORMATS)}")
    for fmt in fmts:
        if fmt not in FORMATS:
            raise ValueError(f"unknown image format {fmt!r}; choose from {', '.join(FORMATS)}")
    return fmts


def rolling_mean(values, window: int):
    """Centred moving average that ignores NaN (window 1 returns the input); used for noisy
    per-step curves. ``mean_k = sum_{|i-k|<=w/2} v_i / #{finite v_i}``."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size < 3:
        return v
    window = min(window, v.size)
    finite = np.isfinite(v)
    filled = np.where(finite, v, 0.0)
    kernel = np.ones(window)
    num = np.convolve(filled, kernel, mode="same")
    den = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)

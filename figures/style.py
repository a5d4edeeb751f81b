"""Shared look of every figure: seaborn theme, one fixed colour per method, legend labels
and saving to several formats.

Every figure module calls :func:`apply_style` before drawing and :func:`save` to write the
figure, so that the same method has the same colour and name in every picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from bounds.names import LABELS  # noqa: E402
from landscape import store  # noqa: E402

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


def method_name(method: str | None) -> str:
    """Display name of a method key (``"crown-ibp"`` -> ``"CROWN-IBP"``); unknown keys pass through."""
    if not method:
        return "?"
    base = str(method)
    label = LABELS.get(base.lower())
    return label.display if label is not None else base


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


def format_eps(eps: float | None) -> str:
    """Eps for a legend: ``0.1`` -> ``"ε=0.1"``, common CIFAR fractions as ``k/255``."""
    if eps is None:
        return ""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return f"ε={eps}"
    if value != value:  # NaN
        return ""
    k = value * 255.0
    if value > 0 and abs(k - round(k)) < 1e-6 and value < 0.1:
        return f"ε={int(round(k))}/255"
    return f"ε={value:g}"


def legend_label(method: str | None, eps: float | None = None, checkpoint: str | None = None) -> str:
    """Legend entry naming method, eps and checkpoint, e.g. ``"IBP, ε=0.1 (ibp/checkpoint.pt)"``."""
    parts = [method_name(method)]
    eps_text = format_eps(eps)
    if eps_text:
        parts[0] += f", {eps_text}"
    if checkpoint:
        parts.append(f"({checkpoint})")
    return " ".join(parts)


def short_path(path: str | Path | None, keep: int = 2) -> str:
    """The last ``keep`` components of a path, enough to tell checkpoints apart in a legend."""
    if not path:
        return ""
    parts = Path(str(path)).parts
    return "/".join(parts[-keep:])


def with_context(what: str, metas: Iterable) -> str:
    """A title ``"what — digits, mlp"``: ``what`` followed by the dataset and the model when
    all of ``metas`` (:class:`figures.data.Meta`) share them, each left out otherwise."""
    metas = list(metas)
    bits = []
    for attr in ("dataset", "model"):
        values = {getattr(m, attr) for m in metas if getattr(m, attr, None)}
        if len(values) == 1:
            bits.append(str(next(iter(values))))
    return what + (f" — {', '.join(bits)}" if bits else "")


def save(fig: plt.Figure, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.<fmt>`` for every format (each atomically:
    :func:`landscape.store.atomic_path`), close it, return the paths.

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

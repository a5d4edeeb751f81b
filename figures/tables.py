"""Comparisons across methods: the verified-error table (Markdown and LaTeX), verified error
against eps, and the tightness-versus-smoothness scatter (one point per method).

Verified error is the share of test samples that *no* bound (IBP, CROWN-IBP, CROWN) can
certify at eps, so it upper-bounds the true robust error; PGD error lower-bounds it.
The scatter puts each method at (bound tightness, loss variation): the paper's claim is that
tighter bounds (right) came with rougher landscapes (up) until the tightest-slope method.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from figures.style import (
    MARKERS,
    apply_style,
    format_eps,
    legend_below,
    method_colour,
    method_name,
    method_rank,
    save,
    write_text,
)

_COLUMNS = (("clean_err", "Clean"), ("pgd_err", "PGD"), ("verified_err", "Verified"))


def _pct(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{100.0 * value:.1f}" if value <= 1.0 else f"{value:.1f}"


def _sorted_rows(rows: Sequence[dict]) -> list[dict]:
    return sorted(
        rows,
        key=lambda r: (
            float(r.get("eps", 0.0)),
            method_rank(r.get("method")),
            str(r.get("method")),
        ),
    )


def _bound_columns(rows: Sequence[dict]) -> list[str]:
    """Per-bound verified-error columns (``verified_err_ibp``, ``verified_err_crown_ibp``, ...)
    present in every row."""
    keys = [k for k in rows[0] if k.startswith("verified_") and k != "verified_err"] if rows else []
    keys = sorted(keys, key=lambda k: method_rank(bound_name_key(k)))
    return [k for k in keys if all(k in r for r in rows)]


def bound_name_key(column: str) -> str:
    """Method key of a per-bound column: ``verified_err_crown_ibp`` -> ``crown-ibp``."""
    key = (
        column[len("verified_err_") :]
        if column.startswith("verified_err_")
        else column[len("verified_") :]
    )
    return key.replace("_", "-")


def bound_name(column: str) -> str:
    """Display name of a per-bound column: ``verified_err_crown_ibp`` -> ``CROWN-IBP``."""
    return method_name(bound_name_key(column))


def verified_error_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table: method, eps, clean / PGD / verified error (%) and per-bound columns."""
    if not rows:
        raise ValueError("no certification results to tabulate")
    rows = _sorted_rows(rows)
    extra = _bound_columns(rows)
    head = (
        ["Method", "ε"]
        + [f"{name} err. (%)" for _, name in _COLUMNS]
        + [f"Verified by {bound_name(k)} (%)" for k in extra]
    )
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for r in rows:
        cells = [method_name(r.get("method")), format_eps(r.get("eps")).replace("ε=", "")]
        cells += [_pct(r.get(key)) for key, _ in _COLUMNS] + [_pct(r.get(k)) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def verified_error_latex(
    rows: Sequence[dict], caption: str = "Clean, PGD and verified test error (\\%)."
) -> str:
    """The same table as a LaTeX ``table`` with booktabs rules; the best verified error of each eps
    is bold (every row that reaches it), unless that eps has one row or all its rows are equal."""
    if not rows:
        raise ValueError("no certification results to tabulate")
    rows = _sorted_rows(rows)
    extra = _bound_columns(rows)
    values: dict[float, list[float]] = {}
    for r in rows:
        v = r.get("verified_err")
        if v is not None and np.isfinite(v):
            values.setdefault(float(r["eps"]), []).append(v)
    # the best of each eps in bold, where there is a comparison to win: two rows or more, not all equal
    best = {e: min(vs) for e, vs in values.items() if len(vs) > 1 and min(vs) < max(vs)}
    head = (
        ["Method", r"$\epsilon$"]
        + [name for _, name in _COLUMNS]
        + [_tex(bound_name(k)) for k in extra]
    )
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{ll" + "r" * (len(head) - 2) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        eps = format_eps(r.get("eps")).replace("ε=", "")
        cells = [_tex(method_name(r.get("method"))), eps]
        for key, _ in _COLUMNS:
            text = _pct(r.get(key))
            if (
                key == "verified_err"
                and r.get(key) is not None
                and best.get(float(r["eps"])) == r.get(key)
            ):
                text = r"\textbf{" + text + "}"
            cells.append(text.replace("–", "--"))
        cells += [_pct(r.get(k)).replace("–", "--") for k in extra]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_tables(
    rows: Sequence[dict], out_dir: str | Path, stem: str = "verified_error"
) -> list[Path]:
    """Write ``stem.md`` and ``stem.tex``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, tex = out / f"{stem}.md", out / f"{stem}.tex"
    write_text(md, verified_error_markdown(rows))
    write_text(tex, verified_error_latex(rows))
    return [md, tex]


def _draw_method_errors(ax: Any, rows: Sequence[dict], i: int, m: str, n_methods: int) -> None:
    """Method ``m`` (the ``i``-th of ``n_methods``) on ``ax``: its verified error against eps,
    its PGD error dashed when the rows have it, each with seed error bars shifted a little so the
    methods' bars stand side by side."""
    mine = sorted((r for r in rows if str(r.get("method")) == m), key=lambda r: r["eps"])
    eps = np.array([r["eps"] for r in mine], dtype=float)
    colour = method_colour(m, i)
    ver = np.array([r.get("verified_err", np.nan) for r in mine], dtype=float)
    scale = 100.0 if np.nanmax(ver, initial=0) <= 1.0 else 1.0
    marker, ms = (
        MARKERS[i % len(MARKERS)],
        max(3.5, 7.0 - 1.0 * i),
    )  # coinciding methods stay visible
    n_seeds = int(max((r.get("n_seeds", 1) for r in mine), default=1))
    seeds = f" (mean of {n_seeds} seeds ± sd)" if n_seeds > 1 else ""
    ax.plot(
        eps,
        scale * ver,
        "-",
        marker=marker,
        lw=2,
        ms=ms,
        color=colour,
        label=f"{method_name(m)}: verified{seeds}",
    )
    shift = (
        (i - (n_methods - 1) / 2) * 0.006 * (np.ptp(eps) if eps.size > 1 else 1.0)
    )  # bars side by side
    if n_seeds > 1:
        sd = np.array([r.get("verified_err_sd", np.nan) for r in mine], dtype=float)
        ax.errorbar(
            eps + shift,
            scale * ver,
            yerr=scale * sd,
            fmt="none",
            ecolor=colour,
            capsize=3,
            lw=1.2,
        )
    if any("pgd_err" in r for r in mine):
        pgd = np.array([r.get("pgd_err", np.nan) for r in mine], dtype=float)
        ax.plot(
            eps,
            scale * pgd,
            "--",
            marker=marker,
            mfc="none",
            lw=1.4,
            ms=ms,
            color=colour,
            alpha=0.8,
            label=f"{method_name(m)}: PGD",
        )
        if n_seeds > 1:
            sd = np.array([r.get("pgd_err_sd", np.nan) for r in mine], dtype=float)
            ax.errorbar(
                eps + shift,
                scale * pgd,
                yerr=scale * sd,
                fmt="none",
                ecolor=colour,
                capsize=2,
                lw=0.9,
                alpha=0.7,
            )


def plot_error_vs_eps(
    rows: Sequence[dict], out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Verified error (solid) and PGD error (dashed) against eps, one colour per method."""
    apply_style()
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no certification results to plot")
    fig, ax = plt.subplots(figsize=(6.2, 4.3))
    methods = list(dict.fromkeys(str(r.get("method")) for r in _sorted_rows(rows)))
    for i, m in enumerate(methods):
        _draw_method_errors(ax, rows, i, m, len(methods))
    ax.set_xlabel("test ε (L∞ radius, input units)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Verified and PGD error against ε")
    fig.tight_layout()
    legend_below(
        fig, [ln for ln in ax.get_lines() if not str(ln.get_label()).startswith("_")], ncol=2
    )
    return save(fig, out_dir, stem, formats)


def summary_points(methods: Sequence[dict], setting: str) -> tuple[list[dict], int]:
    """The tightness-versus-smoothness points of one setting from the summary's per-method rows
    (``summary.json``'s ``methods``): ``bound_gap_common`` and ``loss_variation`` (means across
    seeds) with their standard deviations across seeds as error bars; and the largest number of
    seeds behind a point."""
    points, seeds = [], 0
    for r in methods:
        if r.get("setting") != setting:
            continue
        n = len(r.get("seeds") or [])
        seeds = max(seeds, n)

        def num(key: str, r: dict = r) -> float:
            v = r.get(key)
            return float(v) if v is not None else float("nan")

        def err(key: str, r: dict = r, n: int = n) -> float | None:
            v = r.get(f"{key}_std")
            return float(v) if n > 1 and v is not None and np.isfinite(v) else None

        points.append(
            {
                "method": r["method"],
                "tightness": num("bound_gap_common"),
                "smoothness": num("loss_variation"),
                "tightness_err": err("bound_gap_common"),
                "smoothness_err": err("loss_variation"),
            }
        )
    return points, seeds


def plot_tightness_vs_smoothness(
    points: Sequence[dict],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    x_label: str = "bound gap at ε_train on common models (lower = tighter)",
    y_label: str = "loss variation ΔL, mean of all probes (nats)",
    title: str = "Tightness versus smoothness (one point per method)",
) -> list[Path]:
    """Scatter of ``points`` (dicts with ``method, tightness, smoothness`` and optionally
    ``label``, ``tightness_err``, ``smoothness_err``), one point per method: the numbers of the
    summary (:func:`summary_points`, :func:`figures.dispatch.tightness_points`)."""
    apply_style()
    import matplotlib.pyplot as plt

    pts = [
        p
        for p in points
        if np.isfinite(p.get("tightness", np.nan)) and np.isfinite(p.get("smoothness", np.nan))
    ]
    if not pts:
        raise ValueError("no method has both a tightness and a smoothness measurement to plot")
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    markers = "os^Dvp*h"
    for i, p in enumerate(pts):
        colour = method_colour(p.get("method"), i)
        # distinct markers, shrinking in drawing order, so coinciding methods stay visible
        ax.errorbar(
            p["tightness"],
            p["smoothness"],
            xerr=p.get("tightness_err"),
            yerr=p.get("smoothness_err"),
            fmt=markers[i % len(markers)],
            ms=max(6, 14 - 2.5 * i),
            alpha=0.9,
            color=colour,
            mec="black",
            capsize=3,
            label=p.get("label") or method_name(p.get("method")),
        )
    gaps = np.array([p["tightness"] for p in pts], dtype=float)
    if (
        gaps > 0
    ).all() and gaps.max() / gaps.min() > 20:  # IBP's gap dwarfs the linear bounds': show both
        ax.set_xscale("log")
        x_label += ", log scale"
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.margins(0.2)
    fig.tight_layout()
    handles, _ = ax.get_legend_handles_labels()
    legend_below(fig, handles, ncol=min(2, len(handles)))
    return save(fig, out_dir, stem, formats)

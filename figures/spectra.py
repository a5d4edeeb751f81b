"""The Hessian of each scanned loss (a ``hessian`` scan, ``docs/scans.md``): its spectral
density, overlaid for every loss on a log scale (stochastic Lanczos quadrature, as PyHessian
draws it), and its top eigenvalues by rank (Lanczos). The legend gives each loss's trace
(Hutchinson's estimate, with its standard error).

Every density of one figure is broadened with the same Gaussian width, so their shapes compare:
from the stored SLQ nodes and weights, ``sigma = 0.01`` times the widest spread of nodes among
the losses drawn (:func:`common_densities`; the width is given in the panel). A file without
nodes is drawn with its own stored density.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from figures.labels import distinct, loss_name, loss_title
from figures.records import SpectrumScan
from figures.style import (
    apply_style,
    legend_below,
    line_style,
    method_colour,
    method_rank,
    save,
    with_context,
)

DENSITY_FLOOR = 1e-7
"""Densities are drawn down to this share of their largest value (below it, the log axis stops)."""


def _entries(scans: Sequence[SpectrumScan]) -> list[tuple[SpectrumScan, str, dict, str, str]]:
    """(scan, label, spectrum, legend text, colour) of every computed loss, named by method and
    run where they would otherwise read the same."""
    pairs = [
        (s, lab, spec)
        for s in scans
        for lab, spec in sorted(s.spectra.items(), key=lambda kv: method_rank(kv[0]))
    ]
    names = distinct(
        [loss_title(lab, s.meta.eps) for s, lab, _ in pairs], [s.meta.run for s, _, _ in pairs]
    )
    return [
        (s, lab, spec, name, method_colour(lab, i))
        for i, ((s, lab, spec), name) in enumerate(zip(pairs, names))
    ]


SIGMA_REL = 0.01
"""The common broadening width, relative to the widest spread of SLQ nodes of a figure."""


def common_densities(
    specs: Sequence[dict], points: int = 1000
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """``([(grid, density)] per spectrum, sigma)``: every density broadened again from its SLQ
    nodes and weights with one width ``sigma`` (``SIGMA_REL`` times the widest spread), on a grid
    spanning its nodes with a margin of 5 % of the spread plus 5 sigma, normalised to integrate
    to 1 (as :func:`landscape.hessian.spectral_density` does with its own width). Spectra without
    nodes keep their stored density (sigma is NaN when none has nodes)."""
    spreads = []
    for spec in specs:
        nodes = spec.get("slq_nodes")
        if nodes is not None and np.isfinite(nodes).any():
            spreads.append(float(np.nanmax(nodes) - np.nanmin(nodes)))
    if not spreads:
        return [
            (np.asarray(s["density_grid"], float), np.asarray(s["density"], float)) for s in specs
        ], float("nan")
    widest = max(spreads)
    sigma = SIGMA_REL * (widest if widest > 0 else 1.0)
    out = []
    for spec in specs:
        nodes, weights = spec.get("slq_nodes"), spec.get("slq_weights")
        if nodes is None or weights is None or not np.isfinite(nodes).any():
            out.append(
                (np.asarray(spec["density_grid"], float), np.asarray(spec["density"], float))
            )
            continue
        ok = np.isfinite(nodes) & (weights > 0)
        lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
        margin = 0.05 * (hi - lo) + 5 * sigma
        grid = np.linspace(lo - margin, hi + margin, points)
        diff = (grid[:, None] - nodes[ok][None, :]) / sigma
        dens = (np.exp(-0.5 * diff**2) * weights[ok][None, :]).sum(axis=1)
        total = float(((dens[1:] + dens[:-1]) * 0.5 * np.diff(grid)).sum())
        out.append((grid, dens / total if total > 0 else dens))
    return out, sigma


def _number(value: float) -> str:
    """A trace or its error in a legend: whole numbers from 100 on, else 3 significant digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot_spectra(
    scans: Sequence[SpectrumScan],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Spectral densities (log scale) and top eigenvalues of every computed loss of ``scans``."""
    apply_style()
    import matplotlib.pyplot as plt

    entries = _entries(scans)
    if not entries:
        raise ValueError(
            f"nothing to draw in {', '.join(str(s.meta.path) for s in scans)}: no loss of the Hessian "
            "scan is computed yet (run the same scan command again to compute them)"
        )
    layered = [
        (name, colour, spec["layers"]) for _, _, spec, name, colour in entries if spec.get("layers")
    ]
    if layered:
        fig, (ax_d, ax_e, ax_l) = plt.subplots(
            1, 3, figsize=(15.5, 4.4), gridspec_kw={"width_ratios": [1.6, 1.0, 1.1]}
        )
    else:
        fig, (ax_d, ax_e) = plt.subplots(
            1, 2, figsize=(11.0, 4.2), gridspec_kw={"width_ratios": [1.6, 1.0]}
        )
    densities, sigma = common_densities([spec for _, _, spec, _, _ in entries])
    peak = max(float(np.nanmax(d)) for _, d in densities)
    floor = peak * DENSITY_FLOOR
    handles = []
    for i, ((_scan, _label, spec, name, colour), (grid, dens)) in enumerate(
        zip(entries, densities)
    ):
        style = line_style(i)
        text = f"{name}: tr H = {_number(spec['trace'])} ± {_number(spec['trace_stderr'])}"
        (line,) = ax_d.plot(
            grid, np.maximum(dens, floor), color=colour, ls=style["ls"], lw=style["lw"], label=text
        )
        handles.append(line)
        eig = np.asarray(spec["eigenvalues"], dtype=float)
        ax_e.plot(
            np.arange(1, eig.size + 1),
            eig,
            color=colour,
            ls=style["ls"],
            lw=style["lw"],
            marker=style["marker"],
            ms=style["ms"] + 1,
            label=text,
        )
    ax_d.set_yscale("log")
    ax_d.set_ylim(floor, peak * 3)
    ax_d.set_xlabel("eigenvalue λ of the Hessian")
    ax_d.set_ylabel("spectral density (log scale)")
    ax_d.set_title("Hessian eigenvalue density (SLQ)")
    if np.isfinite(sigma):
        ax_d.text(
            0.98,
            0.97,
            f"one Gaussian width σ = {sigma:.3g} for every loss",
            transform=ax_d.transAxes,
            ha="right",
            va="top",
            fontsize=7.5,
            color="0.3",
        )
    ax_e.axhline(0.0, color="0.4", lw=0.8, ls=":")
    ax_e.set_xlabel("rank i (1 = largest)")
    ax_e.set_ylabel("λ_i, the i-th largest eigenvalue")
    ax_e.set_title("Top eigenvalues (Lanczos)")
    ax_e.xaxis.get_major_locator().set_params(integer=True)
    if layered:
        _layer_panel(ax_l, layered)
    losses = sorted({loss_name(lab) for _, lab, *_ in entries})
    what = f"Hessian of the {losses[0]}" if len(losses) == 1 else "Hessian of each loss"
    fig.suptitle(with_context(what, [s.meta for s in scans]), fontsize=12)
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(2, len(handles)))
    return save(fig, out_dir, stem, formats)


def _layer_panel(ax, layered: Sequence[tuple[str, str, dict]]) -> None:
    """Top eigenvalue of each layer's block of the Hessian (``layers/<layer>/eigenvalues[0]``),
    grouped bars per layer, one hatched bar per loss; the whole model's top eigenvalue bounds
    every bar (Cauchy interlacing)."""
    from figures.style import HATCHES

    layers = list(dict.fromkeys(k for _, _, lay in layered for k in lay))
    width = 0.8 / len(layered)
    for i, (name, colour, lay) in enumerate(layered):
        tops = [float(np.asarray(lay[k]["eigenvalues"])[0]) if k in lay else np.nan for k in layers]
        ax.bar(
            np.arange(len(layers)) + (i - (len(layered) - 1) / 2) * width,
            tops,
            width=width,
            color=colour,
            alpha=0.55,
            hatch=HATCHES[i % len(HATCHES)],
            edgecolor=colour,
            label=name,
        )
    ax.set_xticks(np.arange(len(layers)), [f"layer {k}" for k in layers])
    ax.set_ylabel("top eigenvalue of the layer's block")
    ax.set_title("Per-layer curvature (Lanczos)")
    values = [float(np.asarray(lay[k]["eigenvalues"])[0]) for _, _, lay in layered for k in lay]
    if values and min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")

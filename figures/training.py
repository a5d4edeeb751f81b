"""Figures of training runs: the probe statistics over training per method on shared axes,
the paper's main figure (the loss along the gradient direction at successive probes), and
loss / error curves.

Probe statistics (``docs/scans.md``), each a function of the training step:

* loss variation  ΔL = max_t L(θ_t) − min_t L(θ_t) along θ_t = θ − t·lr·∇L (lower = smoother);
* gradient cosine cos(∇L(θ), ∇L(θ_t)), averaged over the scanned t > 0 (1 = the gradient
  keeps its direction);
* smoothness ‖∇L(θ_t) − ∇L(θ)‖ / ‖θ_t − θ‖, averaged over t > 0;
* unstable fraction: share of ReLUs whose pre-activation bounds straddle 0;
* RGA cosine: cosine between the relaxed input gradient d lb / d x and the true d m / d x;
* sign-flip rate: share of final linear-bound coefficients whose sign changes between θ
  and θ_t (the relaxation switching lines).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from figures.notes import panel_notes
from figures.records import TrainRun
from figures.style import (
    apply_style,
    legend_below,
    line_style,
    method_colour,
    method_name,
    rolling_mean,
    save,
    with_context,
)

# (key, candidate column names (a trailing "*" matches a prefix; several matches are averaged),
#  axis label, title)
PROBE_STATS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "loss_variation",
        ("loss_variation", "loss_var"),
        "ΔL = max_t L − min_t L (nats)",
        "Loss variation along −∇L",
    ),
    (
        "grad_cosine",
        ("cos", "grad_cosine", "cosine"),
        "cos(∇L(θ), ∇L(θ_t)), mean t>0",
        "Gradient-angle similarity",
    ),
    ("smoothness", ("smoothness",), "‖Δ∇L‖ / ‖Δθ‖, mean t>0", "Smoothness estimate"),
    (
        "unstable_frac",
        ("unstable_frac", "unstable_fraction", "unstable_frac_l*", "unstable*"),
        "unstable share of ReLUs",
        "Unstable neurons (mean over layers)",
    ),
    (
        "rga_cosine",
        ("rga_cos", "rga_cosine", "rga_cos*"),
        "cos(d lb/dx, d m/dx)",
        "Relaxed-gradient cosine",
    ),
    (
        "sign_flip",
        ("sign_flip", "sign_flip_rate"),
        "fraction flipped, mean t>0",
        "Sign-flip rate of bound coefficients",
    ),
    (
        "loss_final_variation",
        ("loss_final_variation",),
        "ΔL at the final ε (nats)",
        "Loss variation at final ε",
    ),
    (
        "hessian_top_eig",
        ("hessian_top_eig",),
        "λ of largest |λ| of the step's loss",
        "Top Hessian eigenvalue",
    ),
    ("hessian_trace", ("hessian_trace",), "tr H of the step's loss (Hutchinson)", "Hessian trace"),
)


def _label(run: TrainRun, with_name: bool) -> str:
    return run.meta.label(with_run=with_name)


def _needs_names(runs: Sequence[TrainRun]) -> bool:
    keys = [(r.meta.method, r.meta.eps) for r in runs]
    return len(set(keys)) < len(keys)


def _has(run: TrainRun, key: str) -> bool:
    """Whether ``run`` records probe statistic ``key`` with at least one finite value."""
    y = probe_stat(run, key)
    return y is not None and bool(np.isfinite(y).any())


def reduce_over_t(values: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    """A per-probe column: scalars as is, ``[P, T]`` rows averaged over the points t > 0
    (over all points for a row whose t > 0 entries are all NaN, e.g. a per-probe scalar
    written only on the t = 0 row)."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        return v
    flat = v.reshape(v.shape[0], -1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        every = np.nanmean(flat, axis=1)
        if t is not None and t.size == flat.shape[1] and (np.asarray(t) > 0).any():
            positive = np.nanmean(flat[:, np.asarray(t) > 0], axis=1)
            return np.asarray(np.where(np.isfinite(positive), positive, every))
        return every


def probe_x(run: TrainRun) -> np.ndarray:
    """The training step of every probe (its row index when the file has no step column)."""
    for name in ("step", "steps", "global_step"):
        if name in run.probes:
            return np.asarray(run.probes[name], dtype=float).reshape(-1)
    n = next((len(v) for v in run.probes.values()), 0)
    return np.arange(n, dtype=float)


def probe_stat(run: TrainRun, key: str) -> np.ndarray | None:
    """One probe statistic per probe (see module docstring), or None when the run lacks it.

    The loss variation falls back to ``max_t − min_t`` of the probes' ``loss`` rows; the
    unstable fraction falls back to the mean of the per-layer columns ``unstable_frac_l{i}``.
    """
    names = next(c for k, c, _, _ in PROBE_STATS if k == key)
    probes = run.probes
    for name in names:
        if name.endswith("*"):
            matches = sorted(k for k in probes if k.startswith(name[:-1]))
            if matches:
                cols = np.stack([reduce_over_t(probes[k], run.probe_t) for k in matches])
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    return np.nanmean(cols, 0)
        elif name in probes:
            return reduce_over_t(probes[name], run.probe_t)
    if key == "loss_variation" and "loss" in probes and np.ndim(probes["loss"]) == 2:
        loss = np.asarray(probes["loss"], dtype=float)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(loss, 1) - np.nanmin(loss, 1)
    return None


def _plot_stat(ax, runs: Sequence[TrainRun], key: str, names: bool, **line) -> dict[int, object]:
    """Draw probe statistic ``key`` of every run that records it on ``ax`` against the
    training step; returns the drawn lines by run index."""
    lines = {}
    for i, run in enumerate(runs):
        y = probe_stat(run, key)
        if y is None or not np.isfinite(y).any():  # as _has
            continue
        x = probe_x(run)[: y.size]
        (lines[i],) = ax.plot(
            x,
            y[: x.size],
            color=method_colour(run.meta.method, i),
            label=_label(run, names),
            **{**line_style(i), "markevery": max(1, x.size // 15), **line},
        )
    return lines


def plot_probe_stats(
    runs: Sequence[TrainRun],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Every probe statistic present in any run, one panel each, all methods overlaid; the
    panels share the training-step axis. ValueError when no run carries probes."""
    apply_style()
    import matplotlib.pyplot as plt

    present = [s for s in PROBE_STATS if any(_has(r, s[0]) for r in runs)]
    if not present:
        raise ValueError(
            "no training probes in these files; train with --probe-every N to record them"
        )
    cols = 4 if len(present) in (7, 8) else min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols, 3.3 * rows), sharex=True, squeeze=False
    )
    flat = list(axes.ravel())
    names = _needs_names(runs)
    legend: dict[int, object] = {}  # one entry per run, even for a run missing from the first panel
    for ax, (key, _, ylabel, title) in zip(flat, present):
        for i, line in _plot_stat(ax, runs, key, names).items():
            legend.setdefault(i, line)
        series = []
        for run in runs:
            y = probe_stat(run, key)
            series.append(
                (
                    str(run.meta.method),
                    probe_x(run)[: y.size] if y is not None else None,
                    None if y is None else y[: probe_x(run).size],
                    run,
                )
            )
        panel_notes(ax, series)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training step")
        ax.tick_params(labelbottom=True)
    for ax in flat[len(present) :]:
        ax.set_visible(False)
    handles = [legend[i] for i in sorted(legend)]
    fig.suptitle(
        with_context("Landscape probes over training", [r.meta for r in runs]), fontsize=12
    )
    fig.tight_layout()
    legend_below(fig, handles, ncol=min(4, max(1, len(handles))))
    return save(fig, out_dir, stem, formats)


def plot_single_stat(
    runs: Sequence[TrainRun],
    key: str,
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """One probe statistic (e.g. ``grad_cosine``) over training, one line per run."""
    apply_style()
    import matplotlib.pyplot as plt

    _, _, ylabel, title = next(s for s in PROBE_STATS if s[0] == key)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = _plot_stat(ax, runs, key, _needs_names(runs))
    if not lines:
        plt.close(fig)
        raise ValueError(f"no run in these files records the probe statistic {key!r}")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(with_context(f"{title} over training", [r.meta for r in runs]))
    fig.tight_layout()
    legend_below(fig, [lines[i] for i in sorted(lines)], ncol=min(3, len(lines)))
    return save(fig, out_dir, stem, formats)


def has_gradient_probes(run: TrainRun) -> bool:
    """True when the run's probes hold the loss along the gradient (``loss`` rows of ``[P, T]``)."""
    return "loss" in run.probes and np.ndim(run.probes["loss"]) == 2 and run.probe_t is not None


def plot_gradient_direction_over_training(
    runs: Sequence[TrainRun],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """The paper's main figure: for each run, L(θ_t) − L(θ_0) against the step size t at every
    probe, coloured by training step. Flat, nested curves = smooth landscape; curves that
    shoot up (or jump) = the next step lands on a very different loss."""
    apply_style()
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    runs = [
        r
        for r in runs
        if has_gradient_probes(r) and np.isfinite(np.asarray(r.probes["loss"], dtype=float)).any()
    ]
    if not runs:
        raise ValueError("no gradient-direction probes (probes/loss over probes/t) in these files")
    cols = min(4, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.9 * cols + 0.8, 3.6 * rows + 0.3),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    steps_all = np.concatenate([probe_x(r) for r in runs])
    norm = colors.Normalize(
        vmin=float(np.nanmin(steps_all)),
        vmax=float(max(np.nanmax(steps_all), np.nanmin(steps_all) + 1)),
    )
    cmap = plt.get_cmap("viridis_r")  # the newest probes darkest, drawn last (on top)
    names = _needs_names(runs)
    for ax, run in zip(flat, runs):
        loss = np.asarray(run.probes["loss"], dtype=float)
        t = np.asarray(run.probe_t, dtype=float)
        x = probe_x(run)
        zero = int(np.argmin(np.abs(t)))
        for p in range(loss.shape[0]):
            row = loss[p]
            if not np.isfinite(row).any():
                continue
            ax.plot(
                t,
                row - row[zero],
                "-",
                lw=1.2,
                color=cmap(norm(x[p] if p < x.size else p)),
                alpha=0.9,
            )
        ax.axhline(0.0, color="0.3", lw=0.8, ls=":")
        ax.set_title(_label(run, names), color=method_colour(run.meta.method))
        ax.set_xlabel("step size t (× lr)")
    for ax in flat[len(runs) :]:
        ax.set_visible(False)
    for r in range(rows):
        axes[r][0].set_ylabel("L(θ − t·lr·∇L) − L(θ)  (nats)")
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=flat[: len(runs)], label="training step of the probe", shrink=0.9, pad=0.02)
    fig.suptitle(
        with_context("Loss along the gradient direction over training", [r.meta for r in runs]),
        fontsize=12,
    )
    return save(fig, out_dir, stem, formats)


_CURVES = (
    (("loss",), "training loss (nats)", "Certified training loss"),
    (("robust_err",), "batch error (%)", "Robust (verified) batch error"),
    (("clean_err",), "batch error (%)", "Clean batch error"),
)


def _step_column(run: TrainRun, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that the run records per step with some finite value, else None."""
    key = next((k for k in keys if k in run.steps), None)
    return (
        key
        if key is not None and np.isfinite(np.asarray(run.steps[key], dtype=float)).any()
        else None
    )


def _plot_step_curve(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    key: str,
    window: int,
    colour: Any,
    label: str,
    style: dict[str, Any],
) -> Any:
    """One run's per-step values of ``key`` on ``ax`` (errors in percent): raw values faint and
    their moving average over ``window`` steps (the eps schedule as it is). Returns the line."""
    if "err" in key and np.nanmax(y, initial=0) <= 1.0:
        y = 100.0 * y
    if key != "eps":
        ax.plot(x, y, lw=0.6, color=colour, alpha=0.25)
        y = rolling_mean(y, window)
    (line,) = ax.plot(
        x,
        y,
        color=colour,
        label=label,
        ls=style["ls"],
        lw=style["lw"],
        marker=style["marker"],
        ms=style["ms"],
        markevery=max(1, x.size // 10),
    )
    return line


def plot_training_curves(
    runs: Sequence[TrainRun],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Loss, robust and clean batch error per step (moving average, raw values faint), the eps
    schedule and the test errors after each epoch, for every run; a panel only where some run
    has values for it. ValueError when no run has per-step records."""
    apply_style()
    import matplotlib.pyplot as plt

    runs = [r for r in runs if "loss" in r.steps]
    if not runs:
        raise ValueError("no per-step records (steps/loss) in these files")

    panels = [
        (keys, ylabel, title)
        for keys, ylabel, title in _CURVES
        if any(_step_column(r, keys) for r in runs)
    ]
    panels += (
        [(("eps",), "training ε (input units)", "ε schedule")]
        if any(_step_column(r, ("eps",)) for r in runs)
        else []
    )
    has_test = any(
        "test_clean_err" in r.epochs and np.isfinite(r.epochs["test_clean_err"]).any() for r in runs
    )
    n = len(panels) + has_test
    cols = 3 if n >= 5 else (2 if n == 4 else n)
    rows = (n + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.5 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    names = _needs_names(runs)
    handles = []
    for i, run in enumerate(runs):
        colour, style = method_colour(run.meta.method, i), line_style(i)
        label = _label(run, names)
        x = np.asarray(run.steps.get("step", np.arange(len(run.steps["loss"]))), dtype=float)
        window = max(1, x.size // 25)
        line = None
        for ax, (keys, ylabel, title) in zip(axes, panels):
            key = _step_column(run, keys)
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("training step")
            if key is None:
                continue
            y = np.asarray(run.steps[key], dtype=float)
            line = _plot_step_curve(ax, x, y, key, window, colour, label, style)
        handles += [line] if line is not None else []
        if has_test and "test_clean_err" in run.epochs:
            _test_panel(axes[len(panels)], run, colour)
    fig.suptitle(with_context("Training curves", [r.meta for r in runs]), fontsize=12)
    fig.tight_layout()
    legend_below(
        fig,
        handles + (_test_handles() if has_test else []),
        ncol=min(3, len(handles) + 3 * has_test),
    )
    return save(fig, out_dir, stem, formats)


_TEST_STYLES = (
    ("test_clean_err", "-", "clean"),
    ("test_verified_err_ibp", "--", "verified by IBP"),
    ("test_verified_err_crown_ibp", ":", "verified by CROWN-IBP"),
)


def _test_panel(ax, run: TrainRun, colour: str) -> None:
    """Test errors after each epoch (the loop's quick evaluation) against the training step."""
    ep = run.epochs
    x = np.asarray(
        ep.get("step", ep.get("epoch", np.arange(len(ep["test_clean_err"])))), dtype=float
    )
    for key, style, _ in _TEST_STYLES:
        if key in ep:
            ax.plot(
                x,
                100.0 * np.asarray(ep[key], dtype=float),
                style,
                marker="o",
                ms=3,
                lw=1.6,
                color=colour,
            )
    ax.set_title("Test error after each epoch")
    ax.set_ylabel("test error (%)")
    ax.set_xlabel("training step")


def _test_handles() -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color="0.3", ls=style, label=f"test error: {name}")
        for _, style, name in _TEST_STYLES
    ]


def summary(run: TrainRun, last_fraction: float = 1.0) -> dict[str, float]:
    """Mean of every probe statistic over the last ``last_fraction`` of the probes (NaN when
    the run lacks it), plus ``tightness`` (a ``bound_gap`` column) when the probes or steps carry it."""
    out: dict[str, float] = {}
    for key, *_ in PROBE_STATS:
        y = probe_stat(run, key)
        out[key] = _tail_mean(y, last_fraction)
    source = next((s for s in (run.probes, run.steps) if "bound_gap" in s), None)
    tight = None if source is None else reduce_over_t(source["bound_gap"], None)
    out["tightness"] = _tail_mean(tight, last_fraction)
    return out


def _tail_mean(y: np.ndarray | None, fraction: float) -> float:
    if y is None:
        return float("nan")
    y = np.asarray(y, dtype=float).reshape(-1)
    y = y[np.isfinite(y)]
    if not y.size:
        return float("nan")
    k = max(1, int(round(y.size * fraction)))
    return float(y[-k:].mean())


__all__ = [
    "PROBE_STATS",
    "plot_probe_stats",
    "plot_single_stat",
    "plot_gradient_direction_over_training",
    "plot_training_curves",
    "probe_stat",
    "summary",
    "method_name",
]

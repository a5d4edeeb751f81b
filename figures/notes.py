"""Notes written on a panel where a statistic does not apply to a method or stops: IBP has no
linear relaxation (no slopes, no bound coefficients), and a CROWN-IBP series ends where its beta
schedule reaches 0 (pure IBP from there)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from figures.records import TrainRun
from figures.style import method_name

__all__ = ["no_relaxation", "panel_notes"]


def no_relaxation(method: str) -> bool:
    """Whether a training method's bound has no linear relaxation (IBP's, or none): no slopes,
    no bound coefficients, so the statistics of a relaxation are not defined for it."""
    from common.names import TRAIN_METHODS

    info = TRAIN_METHODS.get(str(method).lower())
    return info is not None and info.bound in (None, "ibp")


def panel_notes(
    ax, series: Sequence[tuple[str, np.ndarray | None, np.ndarray | None, TrainRun | None]]
) -> list[str]:
    """Write on ``ax`` why a method has no line, or why its line stops, and return the notes.

    ``series``: ``(method, x, y, run)`` per method (``y`` None or all NaN: no line). A method
    without a linear relaxation (:func:`no_relaxation`) gets "no line for IBP: no linear
    relaxation"; one whose values end before the last probe while its run's beta is 0 there
    gets "CROWN-IBP stops at step S: β = 0 (pure IBP) from there"."""
    notes = []
    for method, x, y, run in series:
        name = method_name(method)
        if y is None or not np.isfinite(y).any():
            why = "no linear relaxation" if no_relaxation(method) else "not recorded"
            notes.append(f"no line for {name}: {why}")
            continue
        finite = np.flatnonzero(np.isfinite(y))
        if finite[-1] < y.size - 1 and x is not None:
            stop = float(x[min(finite[-1] + 1, x.size - 1)])
            beta = _column_at(run, "beta", stop) if run is not None else None
            if beta is not None and beta == 0.0:
                notes.append(f"{name} stops at step {stop:.0f}: β = 0 (pure IBP) from there")
            else:
                notes.append(f"{name} stops at step {stop:.0f}")
    if notes:
        ax.text(
            0.02,
            0.02,
            "\n".join(notes),
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=7,
            color="0.25",
            bbox={"facecolor": "white", "alpha": 0.85, "lw": 0, "pad": 1.5},
            zorder=10,
        )
    return notes


def _column_at(run: TrainRun, column: str, step: float) -> float | None:
    """The value of a per-step column at ``step`` (the last logged row at or before it)."""
    steps, values = run.steps.get("step"), run.steps.get(column)
    if steps is None or values is None or len(steps) != len(values) or not len(steps):
        return None
    i = int(np.searchsorted(np.asarray(steps, dtype=float), step, side="right")) - 1
    return float(values[max(i, 0)])

"""The words a figure shows: method names, eps, the name of a run and the name of a loss.

Legends name runs and methods, never file paths: a run is called by its directory (the
``--out`` of ``landscape train``), with the checkpoint's epoch or step when the scanned
checkpoint is not the run's last (:func:`run_name`). Axes say which loss they draw
(:func:`loss_name`): the certified loss of a method, or the clean or PGD cross-entropy.
No matplotlib here, so records and tables can use it without a backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from common.names import LABELS, SCAN_LOSSES


def method_name(method: str | None) -> str:
    """Display name of a method key (``"crown-ibp"`` -> ``"CROWN-IBP"``); unknown keys pass through."""
    if not method:
        return "?"
    label = LABELS.get(str(method).lower())
    return label.display if label is not None else str(method)


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


def legend_label(method: str | None, eps: float | None = None, run: str | None = None) -> str:
    """Legend entry naming the method, eps and (when given) the run, e.g. ``"IBP, ε=0.1 — run cibp"``;
    the clean loss and natural training use no eps, so none is shown for them."""
    text = method_name(method)
    eps_text = format_eps(eps) if str(method or "").lower() not in NO_EPS else ""
    if eps_text:
        text += f", {eps_text}"
    if run:
        text += f" — run {run}"
    return text


_STEM = re.compile(r"^checkpoint_(epoch|step)(\d+)$")
NO_EPS = ("clean", "natural")
"""Labels whose loss has no radius."""


def run_name(checkpoint: str | Path | None, file: str | Path | None = None) -> str:
    """The name of the run a result comes from: the directory of its checkpoint (or of the
    result file itself, for a run's own ``train.h5`` or ``certify.h5``), followed by
    ``epoch N`` / ``step S`` when the checkpoint is an intermediate one; the file's stem when
    neither says more."""
    if checkpoint:
        p = Path(str(checkpoint))
        base = p.parent.name or p.stem
        m = _STEM.match(p.stem)
        if m:
            return f"{base} ({m.group(1)} {m.group(2)})"
        return base if p.stem == "checkpoint" else f"{base} ({p.stem})"
    if file:
        p = Path(str(file))
        return p.parent.name if p.stem in ("train", "certify") and p.parent.name else p.stem
    return ""


def distinct(labels: Sequence[str], runs: Sequence[str]) -> list[str]:
    """``labels`` with `` — run <name>`` added where a label repeats (two runs of one method), and
    a number where even that repeats, so every legend entry says which curve it is."""
    out = list(labels)
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1 and runs[i]:
            out[i] = f"{lab} — run {runs[i]}"
    for i, lab in enumerate(list(out)):
        if out.count(lab) > 1:
            out[i] = f"{lab} #{out[: i + 1].count(lab)}"
    return out


def loss_name(label: str | None) -> str:
    """What a scanned loss is, for an axis or a legend: ``certified loss of CROWN-IBP``,
    ``clean cross-entropy``, ``PGD cross-entropy``; natural training's loss is the cross-entropy."""
    key = str(label or "").lower()
    if key in SCAN_LOSSES:
        return f"{method_name(key) if key != 'clean' else 'clean'} cross-entropy"
    if key == "natural":
        return "cross-entropy (natural training)"
    return f"certified loss of {method_name(label)}"


def loss_axis(labels: Iterable[str | None], unit: str = "nats", where: str = "legend") -> str:
    """An axis label for the losses ``labels`` drawn on it: the one loss by name, or what they
    have in common (each named in the ``where``: the legend, or the panel titles)."""
    keys = [str(lab or "").lower() for lab in labels]
    names = sorted({loss_name(k) for k in keys})
    if len(names) == 1:
        text = names[0]
    elif all(k not in SCAN_LOSSES and k != "natural" for k in keys):
        text = "certified loss of each method" if where == "legend" else f"certified loss ({where})"
    else:
        text = f"loss named in the {where}"
    return f"{text} ({unit})" if unit else text


def loss_title(label: str | None, eps: float | None = None) -> str:
    """A panel title for one scanned loss: ``"IBP, ε=0.1"`` for a certified loss (the method's
    name), ``"clean cross-entropy"``, ``"PGD cross-entropy, ε=0.1"``."""
    key = str(label or "").lower()
    if key in SCAN_LOSSES:
        eps_text = format_eps(eps) if key not in NO_EPS else ""
        return loss_name(key) + (f", {eps_text}" if eps_text else "")
    return legend_label(label, eps)

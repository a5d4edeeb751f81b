"""The per-run statistics that tables and figures report, defined once.

``landscape reproduce``'s summary (``summary.json``, ``summary.md``) and the figures that show a
summary statistic (``compare_tightness_vs_smoothness``) both read their numbers from here, so a
figure plots the numbers of the table beside it:

- from a run's probes (:func:`probe_numbers`): the loss variation along the gradient, averaged
  over **all** probes (``loss_variation``) and at the last one (``loss_variation_last``); the
  gradient cosine, sign-flip rate and top Hessian eigenvalue likewise (mean and last); ``a_sign``
  (mean over t > 0, mean and last); the gradient cosine at t = 5 (mean and last); the smoothness
  estimate, RGA cosine and unstable fraction (means over the second half of the probes); and
  ``probes_final_eps``, how many probes were taken at the run's final eps;
- from certification (:func:`common_gap`): a method's bound gap at eps_train averaged over the
  certify files of every model of one group (``bound_gap_common``: on common models the axis
  compares the bounds, not the models they trained).

Torch-free, like the rest of :mod:`figures`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from figures import training as ftraining
from figures.records import CertifyResult, TrainRun

__all__ = ["probe_numbers", "gap_column", "common_gap", "final_eps_probes", "test_selection"]


def gap_column(method: str) -> str:
    """The certify-file column of ``method``'s bound gap on a model (``bound_gap_<method>``)."""
    return "bound_gap_" + str(method).replace("-", "_")


def _mean(y: Any) -> float:
    y = np.asarray(y, dtype=float).reshape(-1) if y is not None else np.zeros(0)
    y = y[np.isfinite(y)]
    return float(y.mean()) if y.size else float("nan")


def _last(y: Any) -> float:
    y = np.asarray(y, dtype=float).reshape(-1) if y is not None else np.zeros(0)
    y = y[np.isfinite(y)]
    return float(y[-1]) if y.size else float("nan")


def final_eps_probes(rec: TrainRun, eps_final: float | None = None) -> int | None:
    """How many probes of ``rec`` were taken at its final eps (``eps_final``, default the run's
    eps attribute), to 1e-6 relative; None when the probes record no eps."""
    eps = rec.probes.get("eps")
    target = eps_final if eps_final is not None else rec.meta.eps
    if eps is None or target is None:
        return None
    per_probe = np.asarray(eps, dtype=float)
    per_probe = per_probe[:, 0] if per_probe.ndim == 2 else per_probe.reshape(-1)
    return int(np.sum(np.isclose(per_probe, float(target), rtol=1e-6, atol=1e-9)))


def probe_numbers(rec: TrainRun, eps_final: float | None = None) -> dict[str, float]:
    """The probe statistics of one run (see the module docstring)."""
    out: dict[str, float] = {}
    s = ftraining.summary(rec, last_fraction=0.5)
    for key in ("smoothness", "rga_cosine", "unstable_frac"):
        out[key] = s[key]
    for key in ("loss_variation", "grad_cosine", "sign_flip", "hessian_top_eig"):
        y = ftraining.probe_stat(rec, key)
        out[key] = _mean(y)
        out[f"{key}_last"] = _last(y)
    a_sign = rec.probes.get("a_sign")
    if a_sign is not None and rec.probe_t is not None:
        per_probe = ftraining.reduce_over_t(a_sign, rec.probe_t)
        out["a_sign"], out["a_sign_last"] = _mean(per_probe), _last(per_probe)
    cos = rec.probes.get("cos")
    if cos is not None and rec.probe_t is not None and np.ndim(cos) == 2:
        at5 = np.flatnonzero(np.isclose(rec.probe_t, 5.0))
        if at5.size:
            out["grad_cosine_t5"], out["grad_cosine_t5_last"] = (
                _mean(cos[:, at5[0]]),
                _last(cos[:, at5[0]]),
            )
    n_final = final_eps_probes(rec, eps_final)
    if n_final is not None:
        out["probes_final_eps"] = n_final
    return out


def common_gap(method: str, certs: Sequence[CertifyResult]) -> float:
    """``method``'s bound gap at eps_train averaged over the models of ``certs`` that carry its
    column (NaN when none does)."""
    column = gap_column(method)
    gaps = [float(c.rows[0][column]) for c in certs if c.rows and column in c.rows[0]]
    gaps = [g for g in gaps if math.isfinite(g)]
    return float(np.mean(gaps)) if gaps else float("nan")


def test_selection(rec: TrainRun, method: str, after_epoch: float) -> dict[str, float]:
    """The paper code's reported model: of the epochs ``t >= after_epoch`` (0-based; the code
    takes ``t >= schedule_start + schedule_length``, the epoch after its ramp ends), the last one
    with the lowest verified error on the test set by the per-epoch evaluation (the run's own
    bound family: IBP for ``ibp``, CROWN-IBP otherwise). ``selected_epoch`` (1-based, as the
    checkpoints count), ``selected_verified_err``, ``selected_clean_err``; NaN where the run has
    no per-epoch evaluation after the ramp. This is test-set selection: optimistic by design."""
    nan = {
        "selected_epoch": float("nan"),
        "selected_verified_err": float("nan"),
        "selected_clean_err": float("nan"),
    }
    key = "test_verified_err_" + ("ibp" if method == "ibp" else "crown_ibp")
    epochs = rec.epochs
    if key not in epochs or "epoch" not in epochs:
        return nan
    t = np.asarray(epochs["epoch"], dtype=float)
    err = np.asarray(epochs[key], dtype=float)
    ok = np.flatnonzero((t >= after_epoch) & np.isfinite(err))
    if not ok.size:
        return nan
    best = ok[
        np.flatnonzero(err[ok] == err[ok].min())[-1]
    ]  # `err <= best_err` keeps the later epoch
    clean = np.asarray(epochs.get("test_clean_err", np.full(t.shape, np.nan)), dtype=float)
    return {
        "selected_epoch": float(t[best] + 1),
        "selected_verified_err": float(err[best]),
        "selected_clean_err": float(clean[best]),
    }

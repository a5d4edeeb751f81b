"""What ``landscape reproduce`` reports: the result files of a plan, read once, one row of
statistics per run (``summary.json``), their mean and spread across seeds, and the Markdown
summary with the paper's claims (:mod:`landscape.reproduce.claims`, ``summary.md``).

Per run, from its probes (what the paper code's logs report): the loss variation along the
gradient (mean over the probes and at the last one), the gradient cosine (mean over t > 0 and
the probes, and at t = 5: mean and last), ``a_sign`` and the sign-flip rate (mean over t > 0:
mean and last), the smoothness, the RGA cosine and the unstable fraction (means over the second
half of training), and with ``probe_hessian`` the top Hessian eigenvalue of the step's loss
(``hessian_top_eig``: mean over the probes, and at the last one); from its certification:
clean, PGD and verified error at eps_train (by the union and by the run's own bound), the gap
of its own bound, and the gap of its bound measured on every model of the same setting and seed
(``bound_gap_common``: on common models the axis compares the bounds, not the models they
trained).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from landscape.reproduce.plan import Plan
from landscape.reproduce.steps import gap_column

__all__ = ["result_files", "load_results", "summary_rows", "aggregate", "summary_markdown", "json_ready",
           "STATS"]

#: per-run statistics aggregated across seeds, in the order the tables show them
STATS = ("clean_err", "pgd_err", "verified_err", "verified_err_own", "bound_gap", "bound_gap_common",
         "loss_variation", "loss_variation_last", "grad_cosine", "grad_cosine_t5", "grad_cosine_t5_last",
         "a_sign", "a_sign_last", "sign_flip", "sign_flip_last", "smoothness", "rga_cosine", "unstable_frac",
         "hessian_top_eig", "hessian_top_eig_last", "train_seconds")


def result_files(plan: Plan, out: Path, setting: str, seeds: list[int] | None = None) -> list[Path]:
    """The result files of ``setting`` that exist (of ``seeds``, default all): each run's
    train.h5 and certify.h5, then its scans."""
    paths = []
    for r in (r for r in plan.runs if r.setting == setting and (seeds is None or r.seed in seeds)):
        run_dir = r.run_dir(out)
        paths += [run_dir / "train.h5", run_dir / "certify.h5"]
        paths += sorted(r.scan_dir(out).glob(f"{r.method}_*.h5"))
    return [p for p in paths if p.exists()]


def load_results(plan: Plan, out: Path) -> dict[Path, Any]:
    """Every existing result file of ``plan`` under ``out``, each read once into its
    :mod:`figures.data` record (ValueError for a file that cannot be read)."""
    from figures.data import load

    return {p: load(p) for setting in plan.settings() for p in result_files(plan, out, setting)}


def _probe_numbers(rec: Any) -> dict[str, float]:
    """The probe statistics of one run (see the module docstring)."""
    from figures import training as ftraining

    out: dict[str, float] = {}
    s = ftraining.summary(rec, last_fraction=0.5)
    for key, name in (("smoothness", "smoothness"), ("rga_cosine", "rga_cosine"), ("unstable_frac", "unstable_frac")):
        out[name] = s[key]
    for key, name in (("loss_variation", "loss_variation"), ("grad_cosine", "grad_cosine"), ("sign_flip", "sign_flip"),
                      ("hessian_top_eig", "hessian_top_eig")):
        y = ftraining.probe_stat(rec, key)
        out[name] = _mean(y)
        out[f"{name}_last"] = _last(y)
    a_sign = rec.probes.get("a_sign")
    if a_sign is not None and rec.probe_t is not None:
        per_probe = ftraining.reduce_over_t(a_sign, rec.probe_t)
        out["a_sign"], out["a_sign_last"] = _mean(per_probe), _last(per_probe)
    cos = rec.probes.get("cos")
    if cos is not None and rec.probe_t is not None and np.ndim(cos) == 2:
        at5 = np.flatnonzero(np.isclose(rec.probe_t, 5.0))
        if at5.size:
            out["grad_cosine_t5"], out["grad_cosine_t5_last"] = _mean(cos[:, at5[0]]), _last(cos[:, at5[0]])
    return out


def _mean(y: Any) -> float:
    y = np.asarray(y, dtype=float).reshape(-1) if y is not None else np.zeros(0)
    y = y[np.isfinite(y)]
    return float(y.mean()) if y.size else float("nan")


def _last(y: Any) -> float:
    y = np.asarray(y, dtype=float).reshape(-1) if y is not None else np.zeros(0)
    y = y[np.isfinite(y)]
    return float(y[-1]) if y.size else float("nan")


def summary_rows(plan: Plan, out: Path, records: dict[Path, Any]) -> list[dict]:
    """One row per run (see the module docstring), from the ``records`` of :func:`load_results`."""
    rows = []
    for run in plan.runs:
        run_dir = run.run_dir(out)
        row: dict[str, Any] = {"setting": run.setting, "method": run.method, "seed": run.seed,
                               "model": run.config["model"], "eps_train": run.config["eps"]}
        rec = records.get(run_dir / "train.h5")
        if rec is not None:
            row.update(_probe_numbers(rec))
            row["train_seconds"] = rec.meta.attrs.get("train_seconds")
            row["warnings"] = list(rec.meta.attrs.get("warnings") or [])
        cert = records.get(run_dir / "certify.h5")
        if cert is not None and cert.rows:
            best = min(cert.rows, key=lambda r: abs(r["eps"] - run.config["eps"]))
            row.update({k: best.get(k) for k in ("clean_err", "pgd_err", "verified_err", "bound_gap")})
            row["verified_err_own"] = best.get("verified_err_own", best.get("verified_err"))
        rows.append(row)
    _common_gaps(plan, out, records, rows)
    return rows


def _common_gaps(plan: Plan, out: Path, records: dict[Path, Any], rows: list[dict]) -> None:
    """``bound_gap_common`` of each row: its method's bound gap averaged over every model of
    the same setting and seed (the ``bound_gap_<method>`` columns of their certify files)."""
    column = {r.method: gap_column(r.method) for r in plan.runs}
    for row in rows:
        gaps = []
        for other in plan.runs:
            if other.setting != row["setting"] or other.seed != row["seed"]:
                continue
            cert = records.get(other.run_dir(out) / "certify.h5")
            if cert is not None and cert.rows and column[row["method"]] in cert.rows[0]:
                gaps.append(cert.rows[0][column[row["method"]]])
        row["bound_gap_common"] = float(np.mean(gaps)) if gaps else float("nan")


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (setting, method): each statistic's mean and standard deviation (``_std``,
    ddof 1; NaN for one seed) across seeds, and the seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    out = []
    for (setting, method), rs in groups.items():
        agg: dict[str, Any] = {"setting": setting, "method": method, "model": rs[0]["model"],
                               "seeds": [r["seed"] for r in rs]}
        for key in STATS:
            values = np.asarray([float(r[key]) if r.get(key) is not None else np.nan for r in rs], dtype=float)
            values = values[np.isfinite(values)]
            agg[key] = float(values.mean()) if values.size else float("nan")
            agg[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        agg["warnings"] = [w for r in rs for w in r.get("warnings") or []]
        out.append(agg)
    return out


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (and numpy number) made JSON-safe: NaN and Inf
    become null, so ``summary.json`` is valid JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(v: Any, pct: bool = False, std: Any = None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    scale = 100.0 if pct else 1.0
    text = f"{scale * float(v):.1f}" if pct else f"{float(v):.3g}"
    if std is not None and isinstance(std, float) and math.isfinite(std):
        text += f" ± {scale * std:.1f}" if pct else f" ± {std:.2g}"
    return text


_COLUMNS = (("clean_err", "clean err. (%)", True), ("pgd_err", "PGD err. (%)", True),
            ("verified_err", "verified err. (%)", True), ("verified_err_own", "verified, own bound (%)", True),
            ("bound_gap_common", "bound gap (common models)", False), ("loss_variation", "loss variation", False),
            ("grad_cosine", "grad. cosine", False), ("grad_cosine_t5", "cosine at t=5", False),
            ("a_sign", "a_sign", False), ("sign_flip", "sign flips", False), ("rga_cosine", "RGA cosine", False),
            ("hessian_top_eig", "top Hessian eig.", False), ("train_seconds", "train s", False))


def summary_markdown(rows: list[dict]) -> str:
    """The summary: per setting and method, each statistic's mean (± its standard deviation
    across seeds when there are several), the paper's claims, then any warnings. ``rows`` are
    the per-run rows of :func:`summary_rows` (or already aggregated rows)."""
    from landscape.reproduce.claims import claims_markdown

    agg = aggregate(rows) if rows and "seed" in rows[0] else rows
    head = "| setting | method | model | seeds | " + " | ".join(name for _, name, _ in _COLUMNS) + " |"
    lines = [head, "|" + "---|" * 4 + "---:|" * len(_COLUMNS)]
    for r in agg:
        seeds = r.get("seeds") or []
        cells = [_fmt(r.get(k), pct, r.get(f"{k}_std")) for k, _, pct in _COLUMNS]
        lines.append(f"| {r['setting']} | {r['method']} | {r['model']} | {len(seeds) or 1} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if rows and "seed" in rows[0]:
        text += "\n" + claims_markdown(rows)
    notes = [f"- **{r['setting']}/{r['method']}**: {w}" for r in agg for w in r.get("warnings") or []]
    if notes:
        text += "\nWarnings (the run collapsed; its numbers above do not measure the method):\n" + "\n".join(notes) + "\n"
    return text

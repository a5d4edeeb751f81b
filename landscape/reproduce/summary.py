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

from figures.runstats import common_gap, probe_numbers, test_selection
from landscape.reproduce.plan import Plan

__all__ = [
    "result_files",
    "load_results",
    "summary_rows",
    "aggregate",
    "summary_markdown",
    "json_ready",
    "STATS",
]

#: per-run statistics aggregated across seeds, in the order the tables show them
STATS = (
    "clean_err",
    "pgd_err",
    "verified_err",
    "verified_err_own",
    "bound_gap",
    "bound_gap_common",
    "loss_variation",
    "loss_variation_last",
    "grad_cosine",
    "grad_cosine_t5",
    "grad_cosine_t5_last",
    "a_sign",
    "a_sign_last",
    "sign_flip",
    "sign_flip_last",
    "smoothness",
    "rga_cosine",
    "unstable_frac",
    "hessian_top_eig",
    "hessian_top_eig_last",
    "probes_final_eps",
    "train_seconds",
    "selected_epoch",
    "selected_verified_err",
    "selected_clean_err",
    "exact_err",
    "attack_err",
    "timeouts",
    "exact_gap_ibp",
    "exact_gap_crown_ibp",
    "exact_gap_crown",
    "exact_gap_crown_optimized",
)


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


def summary_rows(plan: Plan, out: Path, records: dict[Path, Any]) -> list[dict]:
    """One row per run (see the module docstring), from the ``records`` of :func:`load_results`."""
    rows = []
    for run in plan.runs:
        run_dir = run.run_dir(out)
        row: dict[str, Any] = {
            "setting": run.setting,
            "method": run.method,
            "seed": run.seed,
            "model": run.config["model"],
            "eps_train": run.config["eps"],
        }
        rec = records.get(run_dir / "train.h5")
        if rec is not None:
            row.update(probe_numbers(rec, float(run.config["eps"])))
            if plan.test_selected:
                after = (
                    float(run.config["eps_start_epoch"])
                    + float(run.config["eps_ramp_epochs"])
                    + 1.0
                )
                row.update(test_selection(rec, run.method, after))
            row["train_seconds"] = rec.meta.attrs.get("train_seconds")
            row["warnings"] = list(rec.meta.attrs.get("warnings") or [])
        cert = records.get(run_dir / "certify.h5")
        if cert is not None and cert.rows:
            best = min(cert.rows, key=lambda r: abs(r["eps"] - run.config["eps"]))
            row.update(
                {k: best.get(k) for k in ("clean_err", "pgd_err", "verified_err", "bound_gap")}
            )
            row["verified_err_own"] = best.get("verified_err_own", best.get("verified_err"))
        rows.append(row)
    _common_gaps(plan, out, records, rows)
    return rows


def _common_gaps(plan: Plan, out: Path, records: dict[Path, Any], rows: list[dict]) -> None:
    """``bound_gap_common`` of each row: its method's bound gap averaged over every model of
    the same setting and seed (:func:`figures.runstats.common_gap`)."""
    for row in rows:
        certs = [
            records.get(other.run_dir(out) / "certify.h5")
            for other in plan.runs
            if other.setting == row["setting"] and other.seed == row["seed"]
        ]
        row["bound_gap_common"] = common_gap(row["method"], [c for c in certs if c is not None])


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (setting, method): each statistic's mean and standard deviation (``_std``,
    ddof 1; NaN for one seed) across seeds, and the seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    out = []
    for (setting, method), rs in groups.items():
        agg: dict[str, Any] = {
            "setting": setting,
            "method": method,
            "model": rs[0]["model"],
            "seeds": [r["seed"] for r in rs],
        }
        for key in STATS:
            values = np.asarray(
                [float(r[key]) if r.get(key) is not None else np.nan for r in rs], dtype=float
            )
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


_COLUMNS = (
    ("clean_err", "clean err. (%)", True),
    ("pgd_err", "PGD err. (%)", True),
    ("verified_err", "verified err. (%)", True),
    ("verified_err_own", "verified, own bound (%)", True),
    ("bound_gap_common", "bound gap (common models)", False),
    ("loss_variation", "loss variation (mean of all probes)", False),
    ("grad_cosine", "grad. cosine", False),
    ("grad_cosine_t5", "cosine at t=5", False),
    ("smoothness", "smoothness est.", False),
    ("a_sign", "a_sign", False),
    ("sign_flip", "sign flips", False),
    ("rga_cosine", "RGA cosine", False),
    ("hessian_top_eig", "top Hessian eig.", False),
    ("train_seconds", "train s", False),
)


def summary_markdown(rows: list[dict], margins: dict | None = None) -> str:
    """The summary: per setting and method, each statistic's mean (± its standard deviation
    across seeds when there are several), the paper's claims judged by
    :func:`landscape.reproduce.claims.claims` (``margins``: per setting, the
    :class:`~landscape.reproduce.claims.Margins` its file declares), then any warnings. ``rows``
    are the per-run rows of :func:`summary_rows` (or already aggregated rows)."""
    from landscape.reproduce.claims import claims_markdown

    agg = aggregate(rows) if rows and "seed" in rows[0] else rows
    head = (
        "| setting | method | model | seeds | " + " | ".join(name for _, name, _ in _COLUMNS) + " |"
    )
    lines = [head, "|" + "---|" * 4 + "---:|" * len(_COLUMNS)]
    for r in agg:
        seeds = r.get("seeds") or []
        cells = [_fmt(r.get(k), pct, r.get(f"{k}_std")) for k, _, pct in _COLUMNS]
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['model']} | {len(seeds) or 1} | "
            + " | ".join(cells)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    selected = [
        r
        for r in agg
        if isinstance(r.get("selected_verified_err"), float)
        and math.isfinite(r["selected_verified_err"])
    ]
    if selected:
        text += (
            "\nTest-set selection (--test-selected): the epoch after the eps ramp with the lowest verified error "
            "on the test set, as the paper code picks the model it reports. The test set chose it, so these "
            "numbers are optimistic; the table above reports the final models.\n\n"
            "| setting | method | selected epoch | clean err. (%) | verified err. (%) |\n|---|---|---:|---:|---:|\n"
        )
        for r in selected:
            text += (
                f"| {r['setting']} | {r['method']} | {_fmt(r.get('selected_epoch'))} | "
                f"{_fmt(r.get('selected_clean_err'), True, r.get('selected_clean_err_std'))} | "
                f"{_fmt(r.get('selected_verified_err'), True, r.get('selected_verified_err_std'))} |\n"
            )
    exact = [
        r for r in agg if isinstance(r.get("exact_err"), float) and math.isfinite(r["exact_err"])
    ]
    if exact:
        text += (
            "\nThe exact worst case (landscape/reproduce/exact.py: the first test samples decided by a MILP at "
            "eps_train): exact robust error beside the attack's, and each bound's mean gap to the exact minimum "
            "margin on the samples solved to optimality (lower = tighter).\n\n"
            "| setting | method | exact err. (%) | attack err. (%) | timeouts | gap IBP | gap CROWN-IBP | gap CROWN "
            "| gap CROWN, optimized slopes |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for r in exact:
            cells = [
                _fmt(r.get("exact_err"), True, r.get("exact_err_std")),
                _fmt(r.get("attack_err"), True, r.get("attack_err_std")),
                _fmt(r.get("timeouts")),
            ]
            cells += [
                _fmt(r.get(f"exact_gap_{b}"), False, r.get(f"exact_gap_{b}_std"))
                for b in ("ibp", "crown_ibp", "crown", "crown_optimized")
            ]
            text += f"| {r['setting']} | {r['method']} | " + " | ".join(cells) + " |\n"
    if rows and "seed" in rows[0]:
        text += "\n" + claims_markdown(rows, margins)
    notes = [
        f"- **{r['setting']}/{r['method']}**: {w}" for r in agg for w in r.get("warnings") or []
    ]
    if notes:
        text += (
            "\nWarnings (the run collapsed; its numbers above do not measure the method):\n"
            + "\n".join(notes)
            + "\n"
        )
    return text

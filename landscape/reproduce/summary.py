"""What ``landscape reproduce`` reports: the result files of a plan, read once, and the
per-run summary table (``summary.json``, ``summary.md``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from landscape.reproduce.plan import Plan

__all__ = ["result_files", "load_results", "summary_rows", "summary_markdown"]


def result_files(plan: Plan, out: Path, setting: str) -> list[Path]:
    """The result files of ``setting`` that exist: each run's train.h5 and certify.h5, then its scans."""
    paths = []
    for r in (r for r in plan.runs if r.setting == setting):
        run_dir = out / "runs" / setting / r.method
        paths += [run_dir / "train.h5", run_dir / "certify.h5"]
        paths += sorted((out / "scans" / setting).glob(f"{r.method}_*.h5"))
    return [p for p in paths if p.exists()]


def load_results(plan: Plan, out: Path) -> dict[Path, Any]:
    """Every existing result file of ``plan`` under ``out``, each read once into its
    :mod:`figures.data` record (ValueError for a file that cannot be read)."""
    from figures.data import load

    return {p: load(p) for setting in plan.settings() for p in result_files(plan, out, setting)}


def summary_rows(plan: Plan, out: Path, records: dict[Path, Any]) -> list[dict]:
    """One row per run: verified error at eps_train, mean probe statistics over the second
    half of training, bound gap and training time (from the ``records`` of :func:`load_results`)."""
    from figures import training as ftraining

    rows = []
    for run in plan.runs:
        run_dir = out / "runs" / run.setting / run.method
        row: dict[str, Any] = {"setting": run.setting, "method": run.method, "model": run.config["model"],
                               "eps_train": run.config["eps"]}
        rec = records.get(run_dir / "train.h5")
        if rec is not None:
            s = ftraining.summary(rec, last_fraction=0.5)
            row.update({k: s[k] for k in ("loss_variation", "grad_cosine", "smoothness", "sign_flip", "rga_cosine",
                                          "unstable_frac")})
            row["train_seconds"] = rec.meta.attrs.get("train_seconds")
            row["warnings"] = list(rec.meta.attrs.get("warnings") or [])
        cert = records.get(run_dir / "certify.h5")
        if cert is not None and cert.rows:
            best = min(cert.rows, key=lambda r: abs(r["eps"] - run.config["eps"]))
            row.update({k: best.get(k) for k in ("clean_err", "pgd_err", "verified_err", "bound_gap")})
        rows.append(row)
    return rows


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


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if pct:
        return f"{100 * float(v):.1f}"
    return f"{float(v):.3g}"


def summary_markdown(rows: list[dict]) -> str:
    head = ("| setting | method | model | clean err. (%) | PGD err. (%) | verified err. (%) | bound gap | "
            "loss variation | grad. cosine | smoothness | sign flips | RGA cosine | train s |")
    lines = [head, "|" + "---|" * 3 + "---:|" * 10]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['model']} | {_fmt(r.get('clean_err'), True)} | "
            f"{_fmt(r.get('pgd_err'), True)} | {_fmt(r.get('verified_err'), True)} | {_fmt(r.get('bound_gap'))} | "
            f"{_fmt(r.get('loss_variation'))} | {_fmt(r.get('grad_cosine'))} | {_fmt(r.get('smoothness'))} | "
            f"{_fmt(r.get('sign_flip'))} | {_fmt(r.get('rga_cosine'))} | {_fmt(r.get('train_seconds'))} |")
    notes = [f"- **{r['setting']}/{r['method']}**: {w}" for r in rows for w in r.get("warnings") or []]
    if notes:
        lines += ["", "Warnings (the run collapsed; its numbers above do not measure the method):", *notes]
    return "\n".join(lines) + "\n"

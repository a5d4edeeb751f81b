"""``landscape reproduce``: the paper's analysis end to end.

For each method Lee et al. (2021) compare - IBP, CROWN-IBP with beta = 1, CAP and the
tightest-slope method - and each setting of a profile it trains with probes, certifies, scans
(:mod:`landscape.reproduce.steps`), draws every figure and table with
:func:`figures.dispatch.plot_records` (``figures/<setting>/``) and writes ``summary.json`` /
``summary.md`` (:mod:`landscape.reproduce.summary`). The plan (:mod:`landscape.reproduce.plan`)
is fixed before any work starts; every step resumes.

With ``--seeds`` every run is trained once per seed (``runs/<setting>/seed<k>/<method>/``) and
the summary states the paper's claims with their paired differences and spread
(:mod:`landscape.reproduce.claims`).

This package is a composition root: it is one of the places allowed to wire train,
landscape and figures together (figures lazily).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.reproduce.claims import claims
from landscape.reproduce.exact import add_exact_columns
from landscape.reproduce.execute import Execution, SlurmOptions, carry_out, summary_lock
from landscape.reproduce.plan import Plan, RunPlan, describe_plan, make_plan
from landscape.reproduce.steps import certify_run, log, scan_run, train_run
from landscape.reproduce.summary import (
    aggregate,
    json_ready,
    load_results,
    result_files,
    summary_markdown,
    summary_rows,
)

__all__ = [
    "Plan",
    "RunPlan",
    "make_plan",
    "describe_plan",
    "run",
    "draw",
    "draw_summary",
    "ReproduceResult",
    "train_run",
    "certify_run",
    "scan_run",
    "load_results",
    "Execution",
    "SlurmOptions",
]


@dataclass
class ReproduceResult:
    """What :func:`run` produced."""

    out_dir: Path
    files: list[Path]
    summary_rows: list[dict]
    wall_time: float
    trained: list[str]
    reused: list[str]
    margins: dict | None = None

    def summary(self) -> str:
        """The summary table (Markdown) and where the figures are."""
        text = summary_markdown(self.summary_rows, self.margins)
        n_fig = sum(1 for p in self.files if p.suffix == ".png")
        return (
            f"{text}\ntrained {len(self.trained)} runs, reused {len(self.reused)}; "
            f"{n_fig} PNG figures under {self.out_dir / 'figures'}; {self.wall_time:.0f} s"
        )


def run(
    plan: Plan,
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    progress: bool = True,
    download: bool = False,
    how: Execution | None = None,
) -> ReproduceResult:
    """Carry out ``plan`` into ``out_dir`` (see the module docstring); resumable. ``how`` says
    where the runs go (:mod:`landscape.reproduce.execute`: this process, ``--jobs N`` workers,
    SLURM jobs); the figures and summary are written when every run is done."""
    from figures.style import normalise_formats

    fmts = normalise_formats(formats)
    from train.config import TrainConfig
    from train.loop import load_data, resolve_device

    resolve_device(plan.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.txt").write_text(describe_plan(plan) + "\n")
    t0 = time.perf_counter()
    datasets: dict[tuple, Any] = {}

    def data_for(run: RunPlan):
        cfg = TrainConfig.from_dict(run.config)
        key = (cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed, cfg.data_dir)
        if key not in datasets:
            datasets[key] = load_data(cfg, download=download)
        return datasets[key]

    for r in plan.runs:  # load every dataset first: a missing one fails before any training
        data_for(r)
    trained, reused = carry_out(plan, out, data_for, how, progress=progress, download=download)

    held = summary_lock(out)  # another plan on this --out may be writing them
    records = load_results(plan, out)
    files = draw(plan, out, fmts, records)
    rows = summary_rows(plan, out, records)
    add_exact_columns(plan, out, rows)
    margins = {s: plan.setting(s).margins for s in plan.settings()}
    methods = aggregate(rows)
    files = list(dict.fromkeys(files + draw_summary(plan, out, fmts, methods)))
    summary = {
        "runs": rows,
        "methods": methods,
        "margins": {s: dataclasses.asdict(m) for s, m in margins.items()},
        "claims": {s: claims(rows, s, margins[s]) for s in plan.settings()},
    }
    (out / "summary.json").write_text(
        json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n"
    )
    (out / "summary.md").write_text(summary_markdown(rows, margins))
    held.release()
    wall = time.perf_counter() - t0
    log(f"done in {wall:.0f} s")
    return ReproduceResult(out, files, rows, wall, trained, reused, margins)


def draw_summary(plan: Plan, out: Path, formats: Sequence[str], methods: list[dict]) -> list[Path]:
    """The figures that show summary statistics, drawn from the summary's own per-method rows
    (``methods`` of ``summary.json``): ``compare_tightness_vs_smoothness`` of every setting,
    with error bars across seeds (replacing the one :func:`draw` made from the first seed)."""
    from figures.tables import plot_tightness_vs_smoothness, summary_points

    files: list[Path] = []
    for setting in plan.settings():
        points, seeds = summary_points(methods, setting)
        if not any(
            math.isfinite(p["tightness"]) and math.isfinite(p["smoothness"]) for p in points
        ):
            continue
        title = (
            "Tightness versus smoothness: mean ± sd over " + f"{seeds} seeds"
            if seeds > 1
            else "Tightness versus smoothness (one seed)"
        )
        files += plot_tightness_vs_smoothness(
            points,
            out / "figures" / setting,
            "compare_tightness_vs_smoothness",
            formats,
            title=title,
        )
    return files


def draw(
    plan: Plan,
    out: Path,
    formats: Sequence[str] = ("png", "pdf"),
    records: dict[Path, Any] | None = None,
) -> list[Path]:
    """All figures and tables of every setting into ``out/figures/<setting>/``, from
    ``records`` (:func:`load_results`; read here when not given): every figure of the first
    seed's runs (2D losses on a log colour scale, so the region around each checkpoint is
    resolved next to IBP's large corners). With several seeds those figures say which seed they
    show, and ``compare_gradient``, ``compare_verified_error_vs_eps`` and
    ``compare_verified_error.md/.tex`` are drawn again as the mean with a band or bars across
    every seed, and the probe statistics of every run as mean and band (``seeds_*``)."""
    from figures.dispatch import plot_records
    from figures.records import CertifyResult, LineScan
    from figures.seeds import plot_seed_bands, plot_seed_gradient, seed_certify_rows
    from figures.style import context_note
    from figures.tables import plot_error_vs_eps, write_tables

    if records is None:
        records = load_results(plan, out)
    files: list[Path] = []
    for setting in plan.settings():
        mine = [
            records[p]
            for p in result_files(plan, out, setting, seeds=plan.seeds[:1])
            if p in records
        ]
        log(f"drawing {setting} ({len(mine)} files)")
        where = out / "figures" / setting
        if len(plan.seeds) < 2:
            files += plot_records(mine, where, formats, log=True)
            continue
        with context_note(f"seed {plan.seeds[0]} of {len(plan.seeds)}"):
            files += plot_records(mine, where, formats, log=True)
        per_seed = [
            [records[p] for p in result_files(plan, out, setting, seeds=[s]) if p in records]
            for s in plan.seeds
        ]
        grads = [
            r
            for rs in per_seed
            for r in rs
            if isinstance(r, LineScan) and r.meta.kind == "gradient"
        ]
        files += plot_seed_gradient(grads, where, "compare_gradient", formats)
        rows = seed_certify_rows(
            [[row for r in rs if isinstance(r, CertifyResult) for row in r.rows] for rs in per_seed]
        )
        if rows:
            files += write_tables(rows, where, "compare_verified_error")
            md = where / "compare_verified_error.md"
            md.write_text(
                md.read_text() + f"\nMean over {max(r['n_seeds'] for r in rows)} seeds "
                f"({', '.join(map(str, plan.seeds))}); the standard deviations are the error bars of "
                "compare_verified_error_vs_eps.\n"
            )
            files += plot_error_vs_eps(rows, where, "compare_verified_error_vs_eps", formats)
        runs = [
            records[r.run_dir(out) / "train.h5"]
            for r in plan.runs
            if r.setting == setting and r.run_dir(out) / "train.h5" in records
        ]
        files += plot_seed_bands(runs, where, "seeds", formats)
        files += draw_across_seeds([r for rs in per_seed for r in rs], runs, where, formats)
    return files


def draw_across_seeds(
    records: Sequence[Any], runs: Sequence[Any], where: Path, formats: Sequence[str]
) -> list[Path]:
    """The ``compare_*`` figures of several seeds that :func:`draw` first drew from one seed,
    drawn again from every seed's ``records`` (scans) and ``runs`` (training runs): the probe
    statistics over training and the random-direction profiles as mean and band, the Hessian's
    top eigenvalue and trace as bars with error bars, each saying how many seeds it averages."""
    from figures.records import LineScan, SpectrumScan
    from figures.seedcurves import plot_seed_lines, plot_seed_spectra, plot_seed_stat
    from figures.seeds import plot_seed_bands

    files: list[Path] = []
    lines = [r for r in records if isinstance(r, LineScan) and r.meta.kind == "random-1d"]
    files += plot_seed_lines(lines, where, "compare_random-1d", formats, log=True)
    spectra = [r for r in records if isinstance(r, SpectrumScan) and r.n_computed]
    files += plot_seed_spectra(spectra, where, "compare_hessian", formats)
    probed = [r for r in runs if r.probes]
    for key in ("loss_variation", "grad_cosine"):
        files += plot_seed_stat(probed, key, where, f"compare_{key}_over_training", formats)
    files += plot_seed_bands(probed, where, "compare", formats)
    files += _seed_panels(records, where, formats)
    return files


def _seed_panels(records: Sequence[Any], where: Path, formats: Sequence[str]) -> list[Path]:
    """``compare_random-2d_*`` of several seeds as small multiples: one panel per seed and
    method (each seed has its own random plane, so there is nothing to average), all on one log
    colour scale."""
    from figures.records import SurfaceScan
    from figures.seedcurves import seed_planes
    from figures.style import context_note
    from figures.surfaces import plot_surface

    files: list[Path] = []
    planes = [r for r in records if isinstance(r, SurfaceScan) and r.meta.kind == "random-2d"]
    merged = seed_planes(planes)
    if merged is not None:
        n = len({r.meta.path.parent for r in planes})
        with context_note(f"one panel per seed ({n} seeds), each its own random plane"):
            files += plot_surface(merged, where, "compare_random-2d", formats, log=True)
    return files

"""The three steps ``landscape reproduce`` takes for every run of its plan, each resumable:

1. :func:`train_run`: train with gradient-direction probes (``runs/<setting>/<method>/``:
   ``checkpoint.pt``, ``train.h5``); a finished run is not trained again, an interrupted one
   resumes from its last epoch checkpoint;
2. :func:`certify_run`: clean / PGD / verified error at the setting's eps, and the tightness
   of the method's own bound at eps_train (``certify.h5``);
3. :func:`scan_run`: the final model along its gradient, a random direction and a random plane
   (filter-normalised, Li et al. 2018) with its own certified loss at eps_train, by the one scan
   runner (``scans/<setting>/<method>_{gradient,random-1d,random-2d}.h5``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from common.names import resolve_method
from figures.runstats import gap_column
from landscape.reproduce.plan import Plan, RunPlan
from landscape.runs import latest_epoch_checkpoint, train_in_dir

__all__ = ["log", "gap_column", "train_run", "certify_run", "scan_run"]


LOG_PREFIX = ""
"""Put before every progress line of this process (a worker of ``--jobs N`` sets its name)."""


def log(msg: str) -> None:
    """One progress line of ``reproduce`` on stderr."""
    print(f"[reproduce] {LOG_PREFIX}{msg}", file=sys.stderr, flush=True)


def _finished(run_dir: Path, cfg: Any) -> bool:
    """True when ``run_dir/checkpoint.pt`` holds this run trained to its last epoch; a run
    directory from another config is a ValueError (never overwritten)."""
    from train.checkpoint import load_checkpoint
    from train.loop import check_resumable

    ckpt_path = run_dir / "checkpoint.pt"
    probe = ckpt_path if ckpt_path.exists() else latest_epoch_checkpoint(run_dir)
    if probe is None:
        return False
    ckpt = load_checkpoint(probe)
    try:
        check_resumable(cfg, ckpt)
    except ValueError as exc:
        raise ValueError(
            f"{run_dir} holds a run with other settings ({exc}); choose another --out"
        ) from None
    return ckpt_path.exists() and int(ckpt.get("epoch", 0)) >= cfg.epochs


def train_run(run: RunPlan, out: Path, plan: Plan, data: Any, progress: bool = True) -> bool:
    """Train ``run`` into its directory under ``out`` unless it is finished; returns True when
    it trained."""
    from common import store
    from train.config import TrainConfig

    run_dir = run.run_dir(out)
    cfg = TrainConfig.from_dict(run.config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _finished(run_dir, cfg):
        return False
    resume = latest_epoch_checkpoint(run_dir)
    log(
        f"training {run.key} ({cfg.model}, {cfg.epochs} epochs)"
        + (f", resuming from {resume.name}" if resume else "")
    )
    t0 = time.perf_counter()
    train_in_dir(
        run_dir,
        cfg,
        data,
        resume_from=resume,
        probe_t=plan.setting(run.setting).probe_t,
        extra_attrs={"profile": plan.profile},
        progress=progress,
    )
    store.write_attrs(str(run_dir / "train.h5"), {"train_seconds": time.perf_counter() - t0})
    return True


def _add_gaps(path: Path, old: dict[str, Any], gaps: dict[str, dict[str, float]]) -> Path:
    """Rewrite a complete ``certify.h5`` with the bound gaps of more methods added as columns
    (the same value on every row), its other columns and attributes kept."""
    import numpy as np

    from landscape.certification import write_certify_file

    rows = {
        c: [v.decode() if isinstance(v, bytes) else v for v in col.tolist()]
        for c, col in old["results"].items()
        if isinstance(col, np.ndarray)
    }
    n_rows = len(next(iter(rows.values())))
    for m, g in gaps.items():
        rows[gap_column(m)] = list(np.full(n_rows, g["gap"]))
    keep = {
        a: v for a, v in old["attrs"].items() if a not in ("complete", "kind", "schema_version")
    }
    return write_certify_file(path, rows, keep)


def _certify_attrs(
    run: RunPlan,
    cfg: dict[str, Any],
    run_dir: Path,
    n: int,
    bounds: dict[str, tuple],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    """The attributes of a run's ``certify.h5``: what was certified, on how many samples, with
    which bound, and the union of the methods."""
    bound, slope, _ = bounds[run.method]
    return {
        "method": run.method,
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "eps": float(cfg["eps"]),
        "checkpoint": str(run_dir / "checkpoint.pt"),
        "n_test": int(n),
        "tightness_eps": float(cfg["eps"]),
        "bound": f"{bound}/{slope}",
        "union": results[0]["union"],
        "seed": run.seed,
    }


def certify_run(run: RunPlan, out: Path, plan: Plan, data: Any) -> Path:
    """Clean / PGD / verified error at the setting's eps (by the setting's verification methods,
    the run's own bound and their union), and at eps_train how tight the bound of every method
    of the plan is on this model (``bound_gap_<method>``; ``bound_gap`` is the run's own), into
    ``certify.h5`` of the run. A complete file is kept; when it lacks the gap of a method of this
    plan (it was certified by a plan with fewer methods, e.g. one ``--methods M`` process per
    method), only those gaps are computed and added, on the same samples."""
    import numpy as np
    import torch

    from bounds import BoundSpec
    from common import store
    from landscape.certification import certify_rows, write_certify_file
    from landscape.metrics import bound_gaps
    from train.checkpoint import load_model
    from train.config import run_domain
    from train.evaluate import metric_key

    run_dir = run.run_dir(out)
    path = run_dir / "certify.h5"
    bounds = {m: resolve_method(m, None, 1.0) for m in dict.fromkeys(r.method for r in plan.runs)}
    old = store.read(str(path)) if path.exists() else None
    if old is not None and old["attrs"].get("complete"):
        missing = [m for m in bounds if gap_column(m) not in old["results"]]
        if not missing:
            return path
    else:
        old = None
        path.unlink(missing_ok=True)
    setting = plan.setting(run.setting)
    model, ckpt = load_model(run_dir / "checkpoint.pt", device=plan.device)
    model.eval()
    cfg = ckpt["config"]
    domain = run_domain(cfg, data.spec)
    n = min(setting.certify_size, len(data.test_x))
    x, y = data.test_x[:n].to(plan.device), data.test_y[:n].to(plan.device)
    k = min(setting.tight_samples, n)

    def gaps_of(methods: list[str]) -> dict[str, dict[str, float]]:
        return bound_gaps(
            model,
            x[:k],
            y[:k],
            float(cfg["eps"]),
            {m: BoundSpec(str(bounds[m][0]), bounds[m][1], bounds[m][2], domain) for m in methods},
            domain=domain,
            attack=(setting.pgd_steps, 1, 0),
            generator=torch.Generator().manual_seed(0),
        )

    if old is not None:
        log(f"adding the bound gaps of {', '.join(missing)} to {path}")
        return _add_gaps(path, old, gaps_of(missing))
    eps_list = setting.certify_eps
    methods = list(dict.fromkeys([*setting.certify_methods, run.method]))
    log(f"certifying {run.key} at eps {', '.join(f'{e:.4g}' for e in eps_list)}")
    rows, results = certify_rows(
        model,
        x,
        y,
        eps_list,
        methods,
        run.method,
        pgd_steps=setting.pgd_steps,
        domain=domain,
        compile=bool(run.config.get("compile", False)),
    )
    rows["verified_err_own"] = list(rows[metric_key(run.method)])
    gaps = gaps_of(list(bounds))
    own = gaps[run.method]
    for name, key in (("bound_gap", "gap"), ("bound_lb", "lb"), ("pgd_margin", "pgd_margin")):
        rows[name] = list(np.full(len(eps_list), own[key]))
    for m, g in gaps.items():
        rows[gap_column(m)] = list(np.full(len(eps_list), g["gap"]))
    return write_certify_file(path, rows, _certify_attrs(run, cfg, run_dir, n, bounds, results))


def scan_run(run: RunPlan, out: Path, plan: Plan, data: Any) -> list[Path]:
    """Gradient, random-1d, random-2d, PCA (the run's epoch checkpoints) and Hessian scans of the
    final model with the run's own certified loss at eps_train
    (:func:`landscape.scan_runner.run_scan`; complete files are kept)."""
    from common.store import ScanMismatchError
    from landscape.scan_runner import ScanRequest, run_scan

    setting = plan.setting(run.setting)
    scan_dir = run.scan_dir(out)
    scan_dir.mkdir(parents=True, exist_ok=True)
    written = []
    common = dict(
        checkpoint=str(run.run_dir(out) / "checkpoint.pt"),
        methods=[run.method],
        samples=setting.scan_samples,
        seed=0,
        device=plan.device,
        data=data,
        command="landscape reproduce",
        compile=bool(run.config.get("compile", False)),
    )
    r = setting.scan_range
    kinds: list[tuple[str, dict]] = [
        ("gradient", {"points": setting.scan_points_gradient}),
        ("random-1d", {"points": setting.scan_points_1d, "range": (-r, r)}),
        ("random-2d", {"points": setting.scan_points_2d, "range": (-r, r)}),
        ("pca", {"points": setting.scan_points_2d}),  # the plane of the run's epoch checkpoints
    ]
    if setting.scan_hessian is not None:  # the setting's `scan: hessian:` (false: none)
        kinds.append(("hessian", {**HESSIAN_WORK, **setting.scan_hessian}))
    for kind, extra in kinds:
        path = scan_dir / f"{run.method}_{kind}.h5"
        request = ScanRequest(out=str(path), kind=kind, **extra, **common)
        try:
            try:
                run_scan(request, progress=False)
            except ScanMismatchError:  # made by another version or plan: a derived file, so redo it
                log(f"{path} was made with other settings; scanning again")
                path.unlink()
                run_scan(request, progress=False)
        except ValueError as exc:
            if kind != "pca":
                raise
            log(f"{run.key}: no PCA scan ({exc})")  # e.g. a run with a single checkpoint
            continue
        written.append(path)
    return written


HESSIAN_WORK = {
    "top_k": 5,
    "lanczos_steps": 30,
    "trace_samples": 30,
    "density_runs": 4,
    "density_steps": 30,
}
"""The Hessian scan of each final model in ``reproduce``: fewer products than the scan's defaults
(30 + 30 + 4 x 30 per loss and about 60 per layer), enough for the top eigenvalues, a trace with
its error and a density shape."""

"""The exact worst case beside the bounds in ``landscape reproduce``.

For the small models of the profiles in :data:`EXACT_PROFILES` (the quick MLPs), every run is
decided exactly at its eps_train by :func:`landscape.complete.run_complete` with ``margins``
(each correctly classified sample's exact minimum margin, :data:`TIME_LIMIT` seconds per
sample) on the first :data:`EXACT_SAMPLES` test samples, into ``complete.h5`` of the run (the
certify layout of ``docs/schema.md``; resumed like
``certify --complete --out``). :func:`add_exact_columns` then gives each summary row

- ``exact_err``, ``attack_err``, ``timeouts``: the exact robust error (share falsified), the
  attack's error and the samples left undecided;
- ``exact_gap_<bound>`` and ``fault_share_<bound>`` for every bound of the file (the setting's
  verification methods, the run's own bound and ``crown:optimized``): the mean gap between the
  bound's margin lower bound and the exact minimum margin, and the share of the gap between its
  verified error and the attack's error that the bound causes; ``exact_gap_own`` /
  ``fault_share_own`` for the run's own bound.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from landscape.reproduce.plan import Plan, RunPlan

__all__ = [
    "EXACT_PROFILES",
    "EXACT_SAMPLES",
    "TIME_LIMIT",
    "wants_exact",
    "exact_run",
    "add_exact_columns",
]

#: the profiles whose runs are decided exactly (MLPs small enough for the program).
EXACT_PROFILES = ("quick",)
#: seconds of the exact program per sample.
TIME_LIMIT = 10.0
#: the first this many test samples are decided (every correct one solved for its exact minimum
#: margin, a few seconds each on a 2-core CPU).
EXACT_SAMPLES = 100


def wants_exact(plan: Plan, run: RunPlan) -> bool:
    """Whether ``run`` of ``plan`` gets a ``complete.h5``: a profile of :data:`EXACT_PROFILES`
    and an MLP."""
    return plan.profile in EXACT_PROFILES and str(run.config.get("model")) == "mlp"


def _key(name: str) -> str:
    return name.replace("-", "_").replace(":", "_")


def exact_run(run: RunPlan, out: Path, plan: Plan, data: Any) -> Path:
    """Decide the first :data:`EXACT_SAMPLES` test samples exactly at eps_train; a complete
    ``complete.h5`` is kept, an interrupted one continued."""
    from common import store
    from landscape.certification import write_complete_file
    from landscape.complete import progress_path, run_complete
    from landscape.reproduce.steps import log
    from train.checkpoint import load_model
    from train.config import run_domain

    run_dir = run.run_dir(out)
    path = run_dir / "complete.h5"
    if path.exists() and store.read(str(path))["attrs"].get("complete"):
        return path
    setting = plan.setting(run.setting)
    model, ckpt = load_model(run_dir / "checkpoint.pt", device="cpu")
    model.eval()
    cfg = ckpt["config"]
    n = min(EXACT_SAMPLES, setting.certify_size, len(data.test_x))
    x, y = data.test_x[:n].cpu(), data.test_y[:n].cpu()
    eps = float(cfg["eps"])
    methods = list(dict.fromkeys([*setting.certify_methods, run.method]))
    settings = {
        "checkpoint": str(run_dir / "checkpoint.pt"),
        "eps": eps,
        "n": n,
        "time_limit": TIME_LIMIT,
        "margins": True,
        "pgd_steps": setting.pgd_steps,
        "methods": methods,
    }
    log(f"deciding {run.key} exactly at eps {eps:g} ({n} samples)")
    result = run_complete(
        model,
        x,
        y,
        eps,
        methods,
        # an unclipped eps-ball (bounded_input: false) is the box (-inf, inf): clamping is a no-op
        domain=run_domain(cfg, data.spec) or (-math.inf, math.inf),
        pgd_steps=setting.pgd_steps,
        time_limit=TIME_LIMIT,
        margins=True,
        progress=False,
        resume=progress_path(path),
        settings=settings,
    )
    write_complete_file(
        path,
        result,
        {
            "method": run.method,
            "dataset": cfg["dataset"],
            "model": cfg["model"],
            "eps": eps,
            "checkpoint": settings["checkpoint"],
            "n_test": n,
            "methods": methods,
            "pgd_steps": setting.pgd_steps,
            "complete_verification": True,
            "time_limit": TIME_LIMIT,
            "margins": True,
            "seed": run.seed,
        },
    )
    progress_path(path).unlink(missing_ok=True)
    return path


def add_exact_columns(plan: Plan, out: Path, rows: list[dict]) -> None:
    """Add the columns of the module docstring to the summary ``rows`` (one per run, in the
    order of ``plan.runs``) whose run has a complete ``complete.h5``; others are left as they are."""
    from common import store

    for run, row in zip(plan.runs, rows):
        path = run.run_dir(out) / "complete.h5"
        if not path.exists():
            continue
        data = store.read(str(path))
        if not data["attrs"].get("complete"):
            continue
        res = data["results"]
        for k in ("exact_err", "attack_err", "timeouts"):
            row[k] = float(res[k][0])
        tight = data.get("tightness", {})
        for b, gap, share in zip(
            tight.get("bound", []), tight.get("gap_mean", []), tight.get("fault_share", [])
        ):
            row[f"exact_gap_{_key(str(b))}"] = float(gap)
            row[f"fault_share_{_key(str(b))}"] = float(share)
            if str(b) == run.method:
                row["exact_gap_own"], row["fault_share_own"] = float(gap), float(share)

"""``landscape reproduce --launcher slurm``: every run of the plan one SLURM job through
``submitit`` (the optional extra ``cert-landscape[slurm]``), or, with the hidden ``--launcher
local``, one subprocess on this machine through submitit's local executor (what the tests run in
place of a cluster). The command waits for the jobs; the caller then writes the summary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.reproduce.plan import Plan, RunPlan
from landscape.reproduce.steps import log

__all__ = ["SLURM_KEYS", "SlurmOptions", "parse_slurm_time", "make_executor", "submit_all"]

SLURM_KEYS = ("partition", "gpus_per_job", "time", "cpus_per_job")
"""Keys of a setting file's ``reproduce: slurm:`` section (the ``--slurm-*`` options override them)."""


def parse_slurm_time(value: Any) -> int:
    """A SLURM time limit as minutes: an integer (minutes), ``MM:SS``, ``HH:MM:SS``,
    ``D-HH`` or ``D-HH:MM[:SS]`` (seconds rounded up). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"--slurm-time: expected minutes or [D-]HH:MM:SS, got {value!r}")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if m is None:
            raise ValueError(f"--slurm-time: expected minutes or [D-]HH:MM:SS, got {value!r}")
        days, a, b, c = m.groups()
        nums = [int(v) for v in (a, b, c) if v is not None]
        if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
            nums += [0] * (3 - len(nums))
            seconds = int(days) * 86400 + nums[0] * 3600 + nums[1] * 60 + nums[2]
        elif len(nums) == 1:  # minutes
            seconds = nums[0] * 60
        elif len(nums) == 2:  # MM:SS
            seconds = nums[0] * 60 + nums[1]
        else:  # HH:MM:SS
            seconds = nums[0] * 3600 + nums[1] * 60 + nums[2]
        minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"--slurm-time: the limit must be at least one minute, got {value!r}")
    return minutes


@dataclass
class SlurmOptions:
    """One SLURM job per run: its partition (None: the cluster's default), GPUs, CPUs (also the
    job's torch threads) and time limit in minutes."""

    partition: str | None = None
    gpus_per_job: int = 0
    time: int = 60
    cpus_per_job: int = 2

    @classmethod
    def resolve(cls, plan: Plan, **given: Any) -> SlurmOptions:
        """The options from the command line (``given``, None = not given) over those of the plan's
        settings' ``reproduce: slurm:`` sections (the first setting that names a key wins) over the
        defaults. ValueError for a bad value or an unknown key."""
        merged: dict[str, Any] = {}
        for name in plan.settings():
            section = dict(getattr(plan.setting(name), "slurm", None) or {})
            bad = [k for k in section if k not in SLURM_KEYS]
            if bad:
                raise ValueError(
                    f"setting {name}: unknown key {bad[0]!r} in reproduce: slurm: "
                    f"(expected {', '.join(SLURM_KEYS)})"
                )
            for k, v in section.items():
                merged.setdefault(k, v)
        merged.update({k: v for k, v in given.items() if v is not None})
        opts = cls()
        if merged.get("partition") is not None:
            opts.partition = str(merged["partition"])
        for key in ("gpus_per_job", "cpus_per_job"):
            if key in merged:
                try:
                    value = int(merged[key])
                except (TypeError, ValueError):
                    value = -1
                low = 0 if key == "gpus_per_job" else 1
                if value < low or isinstance(merged[key], bool):
                    raise ValueError(
                        f"--slurm-{key.replace('_', '-')}: expected an integer >= {low}, got {merged[key]!r}"
                    )
                setattr(opts, key, value)
        if "time" in merged:
            opts.time = parse_slurm_time(merged["time"])
        return opts


def make_executor(out: Path, launcher: str, opts: SlurmOptions) -> Any:
    """The submitit executor of ``launcher`` (``slurm`` or ``local``) with ``opts``, its job folders
    under ``out/submitit/``. ValueError without submitit, RuntimeError without SLURM."""
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "--launcher slurm needs submitit: pip install 'cert-landscape[slurm]'"
        ) from None
    folder = Path(out) / "submitit" / "%j"
    ex: Any
    if launcher == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=opts.time)
        return ex
    try:
        ex = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as exc:  # no srun here
        raise RuntimeError(
            f"--launcher slurm: no SLURM cluster found from this machine ({exc}); run the command "
            "on a login node of the cluster"
        ) from None
    params: dict[str, Any] = {
        "time": opts.time,
        "cpus_per_task": opts.cpus_per_job,
        "ntasks_per_node": 1,
        "nodes": 1,
        "job_name": "landscape-reproduce",
    }
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_job:
        params["gpus_per_node"] = opts.gpus_per_job
    ex.update_parameters(**params)
    return ex


def submit_all(
    plan: Plan,
    out: Path,
    launcher: str,
    opts: SlurmOptions,
    at_once: int,
    job: Callable[..., dict[str, Any]],
    args: tuple,
) -> tuple[list[dict], list[tuple[str, BaseException]]]:
    """Submit ``job(plan, str(out), index, *args)`` for every run of ``plan`` and wait for them all:
    at most ``at_once`` at a time with the local executor (a cluster's scheduler paces its own).
    Returns the jobs' outcomes and the ``(run key, exception)`` of every failed one; each
    submission and end is one progress line."""
    ex = make_executor(out, launcher, opts)
    cap = at_once if launcher == "local" else len(plan.runs)
    pending = list(range(len(plan.runs)))
    running: list[tuple[Any, RunPlan]] = []
    outcomes: list[dict] = []
    failures: list[tuple[str, BaseException]] = []
    while pending or running:
        while pending and len(running) < cap:
            i = pending.pop(0)
            submitted = ex.submit(job, plan, str(out), i, *args)
            log(
                f"submitted {plan.runs[i].key} as job {submitted.job_id} (log: {submitted.paths.stderr})"
            )
            running.append((submitted, plan.runs[i]))
        done = [(j, r) for j, r in running if j.done()]
        if not done:
            time.sleep(1.0)
            continue
        for j, r in done:
            running.remove((j, r))
            try:
                o = j.result()
            except Exception as exc:
                log(f"{r.key} (job {j.job_id}) failed: {' '.join(str(exc).split())[-400:]}")
                failures.append((r.key, exc))
                continue
            outcomes.append(o)
            log(
                f"finished {r.key} on {o['where']} in {o['seconds']:.0f} s ({'trained' if o['trained'] else 'reused'})"
            )
    return outcomes, failures

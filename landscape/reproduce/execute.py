"""How ``landscape reproduce`` carries out the runs of its plan: in this process, in N worker
processes (``--jobs N``), or as one SLURM job per run through ``submitit`` (``--launcher slurm``).

The unit of work is one run of the plan: :func:`carry_out_run` trains it, certifies it and
scans it (:mod:`landscape.reproduce.steps`; every step resumes). Runs are independent of each
other - the certify and scan steps of a run need only its own checkpoint - so they can go to
any worker in any order; the caller draws the figures and writes the summary once every run is
done.

Repeatability: a run's numbers depend only on its config and on the number of CPU threads it
computes with (torch's reductions split by thread), never on the worker or the order, since
every random draw of the three steps comes from a generator seeded from the run's config. So
``--jobs N --threads-per-run T`` gives the numbers of ``--jobs 1 --threads-per-run T`` bit for
bit. With ``--jobs N`` and no ``--threads-per-run`` a worker takes ``max(1, T_total // N)``
threads, where ``T_total`` is torch's thread count in the parent (``OMP_NUM_THREADS`` or the
cores); with several GPUs visible and a ``cuda`` device, worker ``i`` sees only GPU
``i mod n_gpus`` (``CUDA_VISIBLE_DEVICES``).

Two processes writing into one ``--out`` (two plans, or a rerun while a cluster job still
runs) are kept apart by a lock file per run (``runs/<setting>/seed<k>/<method>/.lock``, an
advisory ``flock`` released by the kernel when its holder dies, so a killed plan leaves no stale
lock): a run held by another live process is waited for, with a line saying who holds it, and
then found finished. The figures and summary are written under ``<out>/.summary.lock``.

This module is part of the composition root :mod:`landscape.reproduce`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.reproduce import steps
from landscape.reproduce.exact import exact_run, wants_exact
from landscape.reproduce.locks import RunLock, summary_lock
from landscape.reproduce.plan import Plan, RunPlan
from landscape.reproduce.slurm import SlurmOptions, parse_slurm_time, submit_all
from landscape.reproduce.steps import certify_run, log, scan_run, train_run

__all__ = [
    "Execution",
    "SlurmOptions",
    "RunLock",
    "carry_out",
    "carry_out_run",
    "LAUNCHERS",
    "parse_slurm_time",
    "summary_lock",
]

LAUNCHERS = ("processes", "slurm", "local")
"""``processes``: this machine (``--jobs`` workers, 1 = this process); ``slurm``: one SLURM job per
run through submitit; ``local``: the same through submitit's local executor (real subprocesses on
this machine; what the test suite runs in place of a cluster)."""


@dataclass
class Execution:
    """How the runs are carried out (see the module docstring): ``jobs`` workers at a time
    (``processes`` and ``local``), ``threads_per_run`` torch threads each (None: the share),
    ``launcher`` one of :data:`LAUNCHERS`, ``slurm`` the cluster's options."""

    jobs: int = 1
    threads_per_run: int | None = None
    launcher: str = "processes"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self) -> None:
        if int(self.jobs) < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads_per_run is not None and int(self.threads_per_run) < 1:
            raise ValueError(f"--threads-per-run must be >= 1, got {self.threads_per_run}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r}; choose one of processes, slurm")

    def threads(self) -> int | None:
        """Torch threads of one worker: the pinned count, else the parent's share (None for one
        job in this process: its threads are left as they are)."""
        if self.threads_per_run is not None:
            return int(self.threads_per_run)
        if self.jobs == 1:
            return None
        import torch

        return max(1, torch.get_num_threads() // self.jobs)


# ----------------------------------------------------------------------------------------------
# one run


def carry_out_run(
    run: RunPlan,
    out: Path,
    plan: Plan,
    data: Any,
    progress: bool = True,
    where: str = "this process",
) -> dict[str, Any]:
    """Train, certify and scan ``run`` (each step resumes) under its lock; returns
    ``{"key", "trained", "seconds", "where"}``."""
    t0 = time.perf_counter()
    lock = RunLock(run.run_dir(out) / ".lock")
    lock.acquire(what=run.key)
    try:
        log(f"start {run.key} on {where}")
        trained = train_run(run, out, plan, data, progress=progress)
        if not trained:
            log(f"{run.key}: finished run found, not trained again")
        certify_run(run, out, plan, data)
        if wants_exact(plan, run):
            exact_run(run, out, plan, data)
        log(f"scanning {run.key}")
        scan_run(run, out, plan, data)
    finally:
        lock.release()
    seconds = time.perf_counter() - t0
    log(f"finished {run.key} on {where} in {seconds:.0f} s ({'trained' if trained else 'reused'})")
    return {"key": run.key, "trained": trained, "seconds": seconds, "where": where}


_DATA: dict[tuple, Any] = {}
"""A worker's datasets, by what selects them (a worker loads each once)."""


def _data(run: RunPlan, download: bool) -> Any:
    from train.config import TrainConfig
    from train.loop import load_data

    cfg = TrainConfig.from_dict(run.config)
    key = (cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed, cfg.data_dir)
    if key not in _DATA:
        _DATA[key] = load_data(cfg, download=download)
    return _DATA[key]


# ----------------------------------------------------------------------------------------------
# worker processes on this machine

_WORKER: dict[str, Any] = {"name": "this process"}


def _watch_parent() -> None:
    """End this worker when the plan's process dies (a killed plan leaves no orphan holding a lock)."""
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _init_worker(slots: Any, threads: int | None, gpus: list[str]) -> None:
    """Set up a worker: its number (from ``slots``), its GPU (before CUDA starts) and threads."""
    slot = int(slots.get())
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    _watch_parent()
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    gpu = f", GPU {gpus[slot % len(gpus)]}" if gpus else ""
    _WORKER["name"] = (
        f"worker {slot + 1} (pid {os.getpid()}, {torch.get_num_threads()} threads{gpu})"
    )
    steps.LOG_PREFIX = f"w{slot + 1}: "


def _work(plan: Plan, out: str, index: int, download: bool) -> dict[str, Any]:
    """A worker's task: run ``index`` of ``plan``."""
    run = plan.runs[index]
    return carry_out_run(
        run, Path(out), plan, _data(run, download), progress=False, where=_WORKER["name"]
    )


def _visible_gpus(device: str) -> list[str]:
    """The GPUs to share out among workers: those visible, when ``device`` is plain ``cuda`` and
    there are several (else none: every worker uses the device as given)."""
    if device != "cuda":
        return []
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return []
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:n] if len(listed) >= n else [str(i) for i in range(n)]


def _failed(failures: list[tuple[str, BaseException]]) -> RuntimeError:
    names = "; ".join(f"{key}: {type(exc).__name__}: {exc}" for key, exc in failures)
    return RuntimeError(
        f"{len(failures)} run(s) failed ({names}); the others are kept: "
        "run the same command again to resume"
    )


def _in_processes(plan: Plan, out: Path, how: Execution, download: bool) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
    n = min(how.jobs, len(plan.runs))
    slots = ctx.Queue()
    for i in range(n):
        slots.put(i)
    threads = how.threads()
    gpus = _visible_gpus(plan.device)
    log(
        f"{len(plan.runs)} runs on {n} worker processes, {threads} torch threads each"
        + (f", GPUs {','.join(gpus)}" if gpus else "")
    )
    outcomes: list[dict] = []
    failures: list[tuple[str, BaseException]] = []
    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads, gpus)
    ) as pool:
        futures = {
            pool.submit(_work, plan, str(out), i, download): r for i, r in enumerate(plan.runs)
        }
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                outcomes.append(fut.result())
            except Exception as exc:  # the others go on; the plan fails at the end
                log(f"{r.key} failed: {type(exc).__name__}: {exc}")
                failures.append((r.key, exc))
    if failures:
        raise _failed(failures)
    return outcomes


# ----------------------------------------------------------------------------------------------
# submitit: SLURM jobs (or its local executor)


def _job(plan: Plan, out: str, index: int, download: bool, threads: int | None) -> dict[str, Any]:
    """A submitit job: run ``index`` of ``plan`` with ``threads`` torch threads."""
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    job = (
        os.environ.get("SLURM_JOB_ID")
        or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
        or str(os.getpid())
    )
    where = f"job {job} on {socket.gethostname()} ({torch.get_num_threads()} threads)"
    run = plan.runs[index]
    return carry_out_run(run, Path(out), plan, _data(run, download), progress=False, where=where)


# ----------------------------------------------------------------------------------------------


def carry_out(
    plan: Plan,
    out: Path,
    data_for: Callable[[RunPlan], Any],
    how: Execution | None = None,
    progress: bool = True,
    download: bool = False,
) -> tuple[list[str], list[str]]:
    """Train, certify and scan every run of ``plan`` as ``how`` says (one job: in this process, in
    plan order, with ``data_for(run)``); returns the keys of the runs trained and of those reused.
    A failed run does not stop the others under ``--jobs N`` or a launcher; they fail the plan at
    the end with one RuntimeError naming every failed run."""
    how = how or Execution()
    if how.launcher in ("slurm", "local"):
        threads = (
            how.threads_per_run
            if how.threads_per_run is not None
            else (how.slurm.cpus_per_job if how.launcher == "slurm" else how.threads())
        )
        outcomes, failures = submit_all(
            plan, out, how.launcher, how.slurm, how.jobs, _job, (download, threads)
        )
        if failures:
            raise _failed(failures)
    elif how.jobs > 1 and len(plan.runs) > 1:
        outcomes = _in_processes(plan, out, how, download)
    else:
        threads = how.threads()
        import torch

        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            where = f"this process ({torch.get_num_threads()} threads)"
            outcomes = [
                carry_out_run(r, out, plan, data_for(r), progress=progress, where=where)
                for r in plan.runs
            ]
        finally:
            torch.set_num_threads(before)
    by_key = {o["key"]: o for o in outcomes}
    trained = [r.key for r in plan.runs if by_key[r.key]["trained"]]
    reused = [r.key for r in plan.runs if not by_key[r.key]["trained"]]
    return trained, reused

"""`landscape reproduce --jobs N` and `--launcher slurm` (through submitit's local executor, real
subprocesses): the same numbers as one job with the same threads per run, bit for bit; a killed
plan resumes; two processes on one --out share its runs through the per-run locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from landscape.cli import main
from landscape.reproduce import execute
from landscape.reproduce.execute import Execution, RunLock, SlurmOptions, parse_slurm_time
from landscape.reproduce.slurm import make_executor

# a small plan: two methods of the tiny profile (tightest draws random slopes), seed 3
PLAN = ["--profile", "tiny", "--methods", "ibp,tightest", "--seeds", "3"]
KEYS = ["digits_eps0.1/seed3/ibp", "digits_eps0.1/seed3/tightest"]
REPO = Path(__file__).resolve().parents[1]


def _plan():
    from landscape.reproduce import make_plan

    return make_plan("tiny", methods=["ibp", "tightest"], seeds=[3])


def _numbers(rows: list[dict]) -> list[dict]:
    """The rows of a summary without what is a wall time (JSON round trip: NaN as null)."""
    from landscape.reproduce.summary import json_ready

    rows = json.loads(json.dumps(json_ready(rows)))
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def _carry_out(out: Path, how: Execution) -> tuple[list[dict], list[str], list[str]]:
    """Carry out the plan into ``out`` as ``how`` says; the summary rows (no figures)."""
    from landscape.reproduce import load_results
    from landscape.reproduce.summary import summary_rows
    from train.config import TrainConfig
    from train.loop import load_data

    plan = _plan()
    data = {}

    def data_for(run):
        key = (run.seed,)
        if key not in data:
            data[key] = load_data(TrainConfig.from_dict(run.config))
        return data[key]

    trained, reused = execute.carry_out(plan, out, data_for, how, progress=False)
    return summary_rows(plan, out, load_results(plan, out)), trained, reused


@pytest.fixture(scope="module")
def one_job(tmp_path_factory) -> list[dict]:
    """The plan's rows from one job in this process with one thread per run."""
    rows, trained, _ = _carry_out(
        tmp_path_factory.mktemp("one") / "out", Execution(jobs=1, threads_per_run=1)
    )
    assert trained == KEYS
    return _numbers(rows)


@pytest.mark.slow
def test_two_jobs_give_the_numbers_of_one_bit_for_bit(
    tmp_path: Path, one_job: list[dict], capfd
) -> None:
    out = tmp_path / "two"
    assert (
        main(
            [
                "reproduce",
                *PLAN,
                "--jobs",
                "2",
                "--threads-per-run",
                "1",
                "--out",
                str(out),
                "--format",
                "png",
            ]
        )
        == 0
    )
    err = capfd.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert _numbers(summary["runs"]) == one_job  # exact: no tolerance
    assert all(
        r["verified_err"] is not None and r["loss_variation"] is not None for r in summary["runs"]
    )
    # progress: one start and one finish line per run, each naming its worker
    for key in KEYS:
        assert sum(f"start {key} on worker " in line for line in err.splitlines()) == 1, err
        assert sum(f"finished {key} on worker " in line for line in err.splitlines()) == 1, err
    assert "worker 1 (pid" in err and "worker 2 (pid" in err and "1 threads" in err
    assert (out / "figures" / "digits_eps0.1" / "compare_gradient.png").exists()


@pytest.mark.slow
def test_submitit_local_executor_gives_the_same_numbers(
    tmp_path: Path, one_job: list[dict], capfd
) -> None:
    pytest.importorskip("submitit")
    # one job at a time: the second run waits for the first job to end
    rows, trained, reused = _carry_out(
        tmp_path / "local", Execution(jobs=1, threads_per_run=1, launcher="local")
    )
    assert _numbers(rows) == one_job and trained == KEYS and not reused
    err = capfd.readouterr().err
    assert err.count("submitted digits_eps0.1/") == 2 and (tmp_path / "local" / "submitit").is_dir()
    lines = err.splitlines()
    first_done = next(i for i, line in enumerate(lines) if f"finished {KEYS[0]} on job " in line)
    assert first_done < next(
        i for i, line in enumerate(lines) if f"submitted {KEYS[1]} as job" in line
    )
    # a rerun submits again, and every job finds its run finished
    rows, trained, reused = _carry_out(
        tmp_path / "local", Execution(jobs=2, threads_per_run=1, launcher="local")
    )
    assert _numbers(rows) == one_job and not trained and reused == KEYS


@pytest.mark.slow
def test_the_cli_sends_a_plan_through_submitit(tmp_path: Path, capfd) -> None:
    """--launcher local end to end: jobs, then figures and summary in this process."""
    pytest.importorskip("submitit")
    out = tmp_path / "cli"
    args = [
        "reproduce",
        "--profile",
        "tiny",
        "--methods",
        "ibp",
        "--launcher",
        "local",
        "--slurm-time",
        "0:10:00",
        "--threads-per-run",
        "1",
        "--out",
        str(out),
        "--format",
        "png",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["ibp"] and summary["runs"][0][
        "verified_err"
    ] is not None
    assert "submitted digits_eps0.1/seed0/ibp as job" in capfd.readouterr().err


def _wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_a_killed_plan_resumes_under_two_jobs(tmp_path: Path, one_job: list[dict]) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "landscape.cli",
        "reproduce",
        *PLAN,
        "--jobs",
        "2",
        "--threads-per-run",
        "1",
        "--out",
        str(out),
        "--format",
        "png",
    ]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=REPO, text=True
    )
    first = out / "runs" / "digits_eps0.1" / "seed3" / "ibp" / "certify.h5"
    try:
        _wait_for(
            lambda: first.exists() or proc.poll() is not None, 120, "the first run's certification"
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # the plan's process dies at once, no clean-up
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the plan finished before it could be killed"
    workers = [
        int(p.read_text().split()[0]) for p in out.glob("runs/*/*/*/.lock") if p.read_text().strip()
    ]
    assert workers
    _wait_for(lambda: not any(_alive(p) for p in workers), 30, "the orphaned workers to end")
    assert not (out / "summary.json").exists()

    again = subprocess.run(cmd, capture_output=True, env=env, cwd=REPO, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "finished run found, not trained again" in again.stderr
    )  # at least the first run is reused
    summary = json.loads((out / "summary.json").read_text())
    assert _numbers(summary["runs"]) == one_job


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} somehost\\n".encode())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_lock_held_by_a_live_process_is_waited_for(tmp_path: Path, capfd) -> None:
    path = tmp_path / "run" / ".lock"
    path.parent.mkdir()
    holder = _holder(path, 2.0)
    lock = RunLock(path)
    assert lock.acquire(wait=False) is False
    t0 = time.perf_counter()
    assert lock.acquire(what="digits/seed0/ibp", poll=0.1)
    assert time.perf_counter() - t0 > 0.5  # it waited for the holder
    err = capfd.readouterr().err
    assert f"digits/seed0/ibp is being worked on by process {holder.pid} on somehost" in err
    assert path.read_text().split()[0] == str(os.getpid())
    lock.release()
    holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = _holder(path, 60.0)
    assert RunLock(path).acquire(wait=False) is False
    holder.kill()
    holder.wait()
    lock = RunLock(path)
    assert lock.acquire(wait=False) is True  # the kernel let it go with its holder
    lock.release()


@pytest.mark.slow
def test_two_plans_on_one_out_share_its_runs(tmp_path: Path, one_job: list[dict]) -> None:
    """Two processes carry out the same plan into one --out at once: every run is trained once,
    by one of them, and both end with the numbers of one job."""
    out = tmp_path / "shared"
    code = (
        "import json, sys; sys.path.insert(0, %r); import test_reproduce_jobs as t; import torch; "
        "torch.set_num_threads(1); from landscape.reproduce.execute import Execution; "
        "rows, tr, re = t._carry_out(__import__('pathlib').Path(%r), Execution(jobs=1, threads_per_run=1)); "
        "print(json.dumps({'rows': t._numbers(rows), 'trained': tr}))"
    ) % (str(Path(__file__).parent), str(out))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_o, e) in zip(procs, results):
        assert p.returncode == 0, e[-3000:]
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in results]
    assert got[0]["rows"] == one_job and got[1]["rows"] == one_job
    trained = got[0]["trained"] + got[1]["trained"]
    assert sorted(trained) == sorted(r.key for r in _plan().runs)  # each run trained exactly once


def test_slurm_time_and_options() -> None:
    assert parse_slurm_time(90) == 90 and parse_slurm_time("90") == 90
    assert (
        parse_slurm_time("1:30:00") == 90
        and parse_slurm_time("2-00") == 2880
        and parse_slurm_time("0:30") == 1
    )
    assert parse_slurm_time("1-02:03") == 1563 and parse_slurm_time("00:00:01") == 1
    for bad in ("", "1h", "0", "-5", "1:2:3:4", True):
        with pytest.raises(ValueError, match="--slurm-time"):
            parse_slurm_time(bad)
    plan = _plan()
    setting = plan.setting("digits_eps0.1")
    object.__setattr__(setting, "slurm", {"partition": "gpu", "gpus_per_job": 1, "time": "2:00:00"})
    opts = SlurmOptions.resolve(plan, partition=None, gpus_per_job=None, cpus_per_job=8, time=None)
    assert (opts.partition, opts.gpus_per_job, opts.cpus_per_job, opts.time) == ("gpu", 1, 8, 120)
    opts = SlurmOptions.resolve(plan, partition="cpu", gpus_per_job=0, time="15")
    assert (opts.partition, opts.gpus_per_job, opts.time) == ("cpu", 0, 15)
    with pytest.raises(ValueError, match="--slurm-gpus-per-job"):
        SlurmOptions.resolve(plan, gpus_per_job=-1)
    object.__setattr__(setting, "slurm", {"gpus": 1})
    with pytest.raises(ValueError, match="unknown key 'gpus'"):
        SlurmOptions.resolve(plan)


def test_the_slurm_job_script_carries_the_options(tmp_path: Path, monkeypatch) -> None:
    """What sbatch would get (submitit writes the script; no cluster here to run it, so submitit
    is told srun exists), and one clear error where there is no cluster."""
    submitit = pytest.importorskip("submitit")
    if submitit.SlurmExecutor.affinity() <= 0:
        with pytest.raises(RuntimeError, match="no SLURM cluster found"):
            make_executor(tmp_path, "slurm", SlurmOptions())
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    ex = make_executor(
        tmp_path, "slurm", SlurmOptions(partition="gpu", gpus_per_job=2, time=90, cpus_per_job=8)
    )
    text = ex._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --ntasks-per-node=1",
    ):
        assert line in text, text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--threads-per-run", "0"], "--threads-per-run must be >= 1"),
        (["--launcher", "slurm", "--slurm-time", "soon"], "--slurm-time"),
        (["--launcher", "slurm", "--slurm-cpus-per-job", "0"], "--slurm-cpus-per-job"),
    ],
)
def test_bad_execution_options_are_one_error_line(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "o"
    assert main(["reproduce", "--profile", "tiny", "--out", str(out), *args]) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("Error") == 1
    assert not out.exists()

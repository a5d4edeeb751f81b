"""A scan file belongs to one writer: a second writer is refused, and a file that changed under a
writer (replaced, rewritten or deleted) is never overwritten with a mix of both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common import store
from landscape.cli import main


def _scan(path, args=None):
    return store.open_or_create_scan(
        path,
        kind="random-1d",
        args=args or {"seed": 1},
        coords={"x": [0.0, 1.0, 2.0]},
        labels=["ibp"],
        lock=True,
    )


def test_second_writer_is_refused_and_the_lock_goes_with_the_writer(tmp_path):
    p = tmp_path / "s.h5"
    first, _ = _scan(p)
    before = p.read_bytes()
    with pytest.raises(store.FileBusyError, match=r"s\.h5 is being written by another process"):
        _scan(p)
    # another process is refused too (flock is per open file, so this is the real thing)
    code = (
        f"from common import store\ntry:\n    store.WriterLock({str(p)!r}).acquire()\n"
        "except store.FileBusyError as e:\n    print('busy', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("busy")
    assert p.read_bytes() == before
    first.close()
    assert not (tmp_path / ".s.h5.lock").exists()
    again, resumed = _scan(p)
    assert resumed
    again.close()


def test_a_file_replaced_under_a_writer_is_left_as_the_other_made_it(tmp_path):
    p, other = tmp_path / "s.h5", tmp_path / "other.h5"
    scan, _ = _scan(p)
    scan.set_point("ibp", 0, {"loss": 1.0})
    scan.flush()
    foreign = store.create_scan(
        other, kind="random-1d", args={"seed": 2}, coords={"x": [0.0, 1.0, 2.0]}, labels=["ibp"]
    )
    for i in range(3):
        foreign.set_point("ibp", i, {"loss": 7.0})
    foreign.flush(complete=True)
    os.replace(other, p)  # e.g. a finished scan copied over the running one's --out
    theirs = p.read_bytes()
    scan.set_point("ibp", 1, {"loss": 2.0})
    with pytest.raises(store.FileChangedError, match="replaced or changed by another process"):
        scan.flush()
    assert p.read_bytes() == theirs
    with pytest.raises(store.FileChangedError):
        scan.write_attrs({"x": 1})
    assert p.read_bytes() == theirs
    scan.close()


def test_a_file_deleted_under_a_writer_is_one_clear_error(tmp_path):
    p = tmp_path / "s.h5"
    scan, _ = _scan(p)
    p.unlink()
    scan.set_point("ibp", 1, {"loss": 2.0})
    with pytest.raises(
        store.FileChangedError, match="was deleted while this process was writing it"
    ):
        scan.flush()
    assert not p.exists()
    scan.close()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": [8]},
        method="ibp",
        eps=0.1,
        epochs=1,
        batch_size=50,
        train_size=50,
        test_size=10,
        eval_size=0,
        lr=1e-3,
    )
    train(cfg, out_dir=out, progress=False)
    return out / "checkpoint.pt"


RACER = textwrap.dedent("""
    import contextlib, io, json, os, sys, time
    from landscape.cli import main
    ckpt, folder, seed, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    results = []
    for i in range(rounds):
        open(os.path.join(folder, f"ready{i}.{seed}"), "w").close()
        while not all(os.path.exists(os.path.join(folder, f"ready{i}.{s}")) for s in ("1", "2")):
            time.sleep(0.001)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["scan", ckpt, "--kind", "random-1d", "--points", "9", "--samples", "20", "--methods",
                       "ibp,clean", "--seed", seed, "--quiet", "--out", os.path.join(folder, f"c{i}.h5")])
        results.append([rc, err.getvalue()])
    print(json.dumps(results))
""")


def test_two_real_scans_of_one_file_never_mix(tiny_ckpt, tmp_path):
    """Two `landscape scan` processes with different seeds start on the same --out at the same
    moment, 20 times: each time exactly one writes the file, which holds its seed's values only,
    and the other exits 1 with one `Error:` line."""
    refs = {}
    for seed in ("1", "2"):
        ref = tmp_path / f"ref{seed}.h5"
        assert (
            main(
                [
                    "scan",
                    str(tiny_ckpt),
                    "--kind",
                    "random-1d",
                    "--points",
                    "9",
                    "--samples",
                    "20",
                    "--methods",
                    "ibp,clean",
                    "--seed",
                    seed,
                    "--quiet",
                    "--out",
                    str(ref),
                ]
            )
            == 0
        )
        refs[seed] = store.read(ref)
    race = tmp_path / "race"
    race.mkdir()
    rounds = 20
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", RACER, str(tiny_ckpt), str(race), seed, str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for seed in ("1", "2")
    }
    results = {}
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results[seed] = json.loads(out.strip().splitlines()[-1])
    for i in range(rounds):
        rcs = {seed: results[seed][i][0] for seed in results}
        assert sorted(rcs.values()) == [0, 1], (i, results["1"][i], results["2"][i])
        winner = next(seed for seed, rc in rcs.items() if rc == 0)
        loser = "2" if winner == "1" else "1"
        lines = results[loser][i][1].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and f"c{i}.h5" in lines[0], lines
        d = store.read(race / f"c{i}.h5")
        ref = refs[winner]
        assert d["attrs"]["complete"] is True
        assert json.loads(d["attrs"]["args_json"])["seed"] == int(winner)
        for lab in ("ibp", "clean"):
            np.testing.assert_array_equal(d["results"][lab]["loss"], ref["results"][lab]["loss"])
        np.testing.assert_array_equal(d["arrays"]["direction_x"], ref["arrays"]["direction_x"])
    assert not [p.name for p in race.iterdir() if p.name.endswith((".tmp", ".lock"))]

"""Defects a hostile-input trial found (issue 25), one test each: every bad input is one clear
`Error:` line, checked before any work, and nothing written before is lost or mixed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from landscape.cli import main

TINY = ["--dataset", "digits", "--model", "mlp", "--model-option", "widths=[16]", "--eps", "0.02", "--epochs", "1",
        "--batch-size", "32", "--train-size", "64", "--test-size", "32", "--eps-ramp-epochs", "0", "--quiet"]


def run(capsys, args: list) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *words: str) -> str:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 1-epoch digits run (the `r2` of the issue, smaller)."""
    out = tmp_path_factory.mktemp("r") / "r2"
    assert main(["train", *TINY, "--method", "ibp", "--out", str(out)]) == 0
    return out


@pytest.fixture()
def run_copy(run_dir, tmp_path) -> Path:
    dst = tmp_path / "x"
    shutil.copytree(run_dir, dst)
    return dst


# ----------------------------------------------------------------------------- resume never destroys
def test_resume_without_an_epoch_checkpoint_refuses_and_changes_nothing(run_copy, capsys):
    for p in run_copy.glob("checkpoint_epoch*.pt"):
        p.unlink()
    before = snapshot(run_copy)
    code, _, err = run(capsys, ["train", "--out", run_copy, "--resume", "--lr", "0.5", "--method", "crown-ibp",
                                "--quiet"])
    one_error(code, err, "--resume", str(run_copy), "checkpoint_epoch")
    assert snapshot(run_copy) == before


def test_resume_failing_on_a_broken_train_h5_keeps_config_json(run_copy, capsys):
    (run_copy / "train.h5").write_text("garbage\n")
    before = snapshot(run_copy)
    code, _, err = run(capsys, ["train", "--out", run_copy, "--resume", "--epochs", "3", "--quiet"])
    one_error(code, err, "train.h5")
    assert snapshot(run_copy) == before
    assert json.loads((run_copy / "config.json").read_text())["epochs"] == 1


# ----------------------------------------------------------------------------- loading never runs code
@pytest.mark.parametrize("name", ["this:s", "os:getcwd", "evil.py:run"])
def test_a_checkpoint_naming_code_as_its_model_is_refused_without_importing(run_dir, tmp_path, capsys, name):
    import subprocess
    import sys

    import torch

    c = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    c["model"]["name"] = name
    (tmp_path / "evil.py").write_text("open('RAN', 'w').write('x')\ndef run(*a, **k):\n    open('RAN', 'w')\n")
    bad = tmp_path / "e.pt"
    torch.save(c, bad)
    code = ("import sys\nfrom landscape.cli import main\nrc = main(sys.argv[1:])\n"
            "print('IMPORTED' if 'this' in sys.modules else 'clean')\nsys.exit(rc)")
    for args in (["certify", bad], ["scan", bad, "--kind", "random-1d", "--points", "3", "--out", tmp_path / "s.h5"],
                 ["scan", run_dir / "checkpoint.pt", "--kind", "interpolate", "--to", bad, "--points", "3",
                  "--out", tmp_path / "i.h5"]):
        p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=tmp_path, capture_output=True, text=True)
        one_error(p.returncode, p.stderr, name, "not a model of the zoo", "never imports or runs code")
        assert "Zen of Python" not in p.stdout and p.stdout.strip() == "clean", p.stdout
        assert not (tmp_path / "RAN").exists()
        assert not (tmp_path / "s.h5").exists() and not (tmp_path / "i.h5").exists()

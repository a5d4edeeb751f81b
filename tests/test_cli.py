"""The console script: help, version, and one clear error line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.names import VERSION as __version__
from landscape.cli import cli, main


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "certify", "scan", "plot", "reproduce"):
        assert command in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_one_error_and_nonzero(capsys) -> None:
    assert main(["no-such-command"]) != 0
    err = capsys.readouterr().err
    assert "No such command" in err and "Traceback" not in err


def test_console_script_runs_as_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "landscape.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout


def test_command_line_starts_without_torch() -> None:
    """`landscape --help` must stay instant: commands load torch only when they run."""
    code = "import sys, landscape.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tune_allocator_sets_glibc_thresholds() -> None:
    import platform

    from landscape.allocator import tune_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected


@pytest.mark.parametrize("name", ["train", "common"])
def test_a_users_module_shadowing_a_package_is_refused(tmp_path, name: str) -> None:
    """A user's own ``train.py`` (or ``common.py``) in the working directory comes first on
    ``sys.path`` under ``python -m``: the command line refuses in one line, before it runs it."""
    (tmp_path / f"{name}.py").write_text("print('the user module ran')\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "landscape.cli", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"Error: '{name}' resolves to ")
    assert str(tmp_path / f"{name}.py") in lines[0]

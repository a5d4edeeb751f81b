"""The console script: help, version, and one clear error line for bad input."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from bounds.names import VERSION as __version__
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

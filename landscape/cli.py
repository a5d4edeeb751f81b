"""The ``landscape`` command line: the composition root that wires bounds, train, landscape
and figures together.

Each command lives in a small module of its own (``cmd_train``, ``cmd_scan``, ``cmd_plot``,
``cmd_reproduce``);
this module only assembles the group and turns expected failures into one clear message and
a non-zero exit, never a traceback (``LANDSCAPE_DEBUG=1`` shows it).
"""

from __future__ import annotations

import os
import sys

import click

from landscape.allocator import tune_allocator
from landscape.guard import refuse_shadowed

refuse_shadowed()  # before any other toolkit import: a user's own train.py must not load


def _version() -> str:
    """The toolkit's version, read once the packages are known to be the installed ones."""
    from common.names import VERSION

    return VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="landscape")
def cli() -> None:
    """Certified training with bound propagation, and the smoothness of its loss landscape."""


def _register() -> None:
    from landscape import cmd_plot, cmd_reproduce, cmd_scan, cmd_train

    for module in (cmd_train, cmd_scan, cmd_plot, cmd_reproduce):
        for command in module.COMMANDS:
            cli.add_command(command)
    from landscape.cmd_export import export

    cli.add_command(export)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tune_allocator()  # keep big freed blocks on the heap: tight bounds run ~1.4x faster
    try:
        cli.main(args=argv, prog_name="landscape", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (ValueError, OSError, KeyError, RuntimeError, MemoryError) as exc:
        if debug():
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        click.echo(f"Error: {' '.join(str(msg).split())}", err=True)
        return 1
    return 0


def debug() -> bool:
    """True when ``LANDSCAPE_DEBUG`` asks for tracebacks (1, true, yes or on)."""
    return os.environ.get("LANDSCAPE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


if __name__ == "__main__":
    sys.exit(main())

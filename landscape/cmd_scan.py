"""``landscape scan CKPT``: scan a trained model's loss landscape into an HDF5 file.

The options are the fields of :class:`landscape.scan_request.ScanRequest`, with their defaults
and help (:func:`request_options`); :func:`~landscape.scan_runner.run_scan` does the rest
(kinds, defaults, resuming, torchrun: see that module and ``docs/scans.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from common.names import SCAN_KINDS
from landscape.scan_request import Cli, ScanRequest, cli_of


def _click_option(f: dataclasses.Field, cli: Cli) -> Callable[[Callable], Callable]:
    """The ``click.option`` of request field ``f``: its flag, type and default, shown in
    ``--help`` where it is a value (an unset option's help says its default in words)."""
    flag = cli.flag or "--" + f.name.replace("_", "-")
    required = f.default is dataclasses.MISSING
    default = None if required else f.default
    if cli.listed and default is not None:
        default = ",".join(default)
    kw: dict[str, Any] = {"help": cli.help or None, "metavar": cli.metavar}
    if cli.type is bool and "/" not in flag:
        kw["is_flag"] = True
    elif cli.choices is not None:
        kw["type"] = click.Choice(tuple(cli.choices))
    elif cli.low is not None or cli.high is not None:
        kw["type"] = click.IntRange(min=cli.low, max=cli.high)
    elif cli.path:
        kw["type"] = click.Path()
    elif cli.type is not bool:
        kw["type"] = cli.type
    if required:
        kw["required"] = True
    else:
        kw["default"] = default
        kw["show_default"] = default is not None and default is not False
    return click.option(flag, f.name, **kw)


def request_options(command: Callable) -> Callable:
    """Decorate ``command`` with one option per field of :class:`ScanRequest` that has a
    command-line face, in the order of the fields."""
    for f in reversed(dataclasses.fields(ScanRequest)):
        cli = cli_of(f)
        if cli is not None:
            command = _click_option(f, cli)(command)
    return command


@click.command("scan")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@request_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def scan(checkpoint: str, methods: str | None, quiet: bool, **options: Any) -> None:
    """Scan the loss landscape of CHECKPOINT into an HDF5 file (resumable)."""
    from landscape.scan_runner import run_scan

    options["verify_methods"] = [
        m.strip() for m in options["verify_methods"].split(",") if m.strip()
    ]
    listed = None if methods is None else methods.split(",")
    request = ScanRequest(checkpoint=checkpoint, methods=listed, **options)
    done = run_scan(request, progress=not quiet)
    if done.label_attrs:  # rank 0 only
        parts = []
        for label, attrs in done.label_attrs.items():
            lv = attrs.get("loss_variation")
            if "trace" in attrs:
                parts.append(
                    f"{label}: top eigenvalue {attrs['top_eigenvalue']:.4g}, trace {attrs['trace']:.4g} "
                    f"± {attrs['trace_stderr']:.2g}"
                )
            else:
                parts.append(f"{label}: loss variation {lv:.4g}" if lv is not None else label)
        unit = "points" if SCAN_KINDS[request.kind].dims else "losses"  # no grid: one per loss
        click.echo(
            f"wrote {done.path}: {done.n_points} {unit} ({done.computed} computed now in "
            f"{done.seconds:.2f} s); " + "; ".join(parts)
        )
    for label, n in done.nonfinite.items():
        click.echo(
            f"Warning: {n} point(s) of {label} have a loss that is not finite (an overflow: a step too "
            "large for the model, e.g. --lr or --range); they are stored as computed, as NaN or Inf",
            err=True,
        )


COMMANDS = [scan]

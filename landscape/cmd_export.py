"""``landscape export SCAN.h5 --format vtk --out DIR``: a 2D scan as files other tools read.

The work is :func:`landscape.export.export_scan` (imported when the command runs, like every
command's heavy modules); bad input there is a ``ValueError`` or ``FileNotFoundError``, which
``landscape/cli.py`` turns into one ``Error:`` line and a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("scan_file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    default="vtk",
    show_default=True,
    help="Output format. vtk: one VTK XML unstructured grid (.vtu) per label, the surface "
    "z = loss over the (x, y) grid with the loss as point data; points not computed are left out.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the files (created if absent).",
)
@click.option(
    "--log", is_flag=True, help="Also store log_loss = ln(max(loss, 1e-12)) as point data."
)
def export(scan_file: Path, fmt: str, out_dir: Path, log: bool) -> None:
    """Export the 2D scan SCAN_FILE (e.g. random-2d) for ParaView, VisIt or VTK."""
    from landscape.export import export_scan

    written = export_scan(scan_file, out_dir, fmt=fmt.lower(), log=log)
    for label, path in written.items():
        if path is None:
            click.echo(f"{label}: no computed point, nothing written", err=True)
        else:
            click.echo(str(path))
    n = sum(p is not None for p in written.values())
    click.echo(f"wrote {n} file{'s' if n != 1 else ''} to {out_dir}", err=True)


COMMANDS = [export]

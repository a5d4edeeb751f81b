"""``landscape reproduce``: the paper's analysis end to end (:mod:`landscape.reproduce`).

The package, which trains, is imported only when the command runs, so ``landscape --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from bounds.names import PAPER_METHODS, PROFILES


@click.command("reproduce")
@click.option("--profile", type=click.Choice(tuple(PROFILES)), default="quick", show_default=True,
              help="quick: < 20 min on a 2-core CPU; paper: the paper's settings (GPU); tiny: a smoke test.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for runs, scans, figures and tables; an existing one is resumed.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset files are (default: the dataset's usual place).")
@click.option("--dataset", default=None,
              help="quick: digits or fashion-mnist [default: fashion-mnist when its files are present, "
                   "else digits]; paper: mnist or cifar10 [default: both].")
@click.option("--methods", default=None, help=f"Comma-separated subset of {','.join(PAPER_METHODS)}.")
@click.option("--download", is_flag=True, help="Fetch a missing dataset from its official source (needs a network).")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="Image formats of the figures.")
@click.option("--dry-run", is_flag=True, help="Print the plan (runs and their settings) and stop.")
def reproduce(profile: str, out_dir: Path, device: str, data_dir: Path | None, dataset: str | None,
              methods: str | None, download: bool, formats: str, dry_run: bool) -> None:
    """Reproduce the paper's analysis: train IBP, CROWN-IBP (beta = 1), CAP and the
    tightest-slope method with training probes, certify them at several eps, scan them, and
    write the figures and tables. Finished runs are not trained again."""
    from figures.style import normalise_formats
    from landscape import reproduce as repro

    try:
        normalise_formats(formats)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from None
    chosen = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    plan = repro.make_plan(profile, device=device, data_dir=data_dir, methods=chosen, dataset=dataset)
    if dry_run:
        click.echo(repro.describe_plan(plan))
        return
    result = repro.run(plan, out_dir, formats=formats, download=download)
    click.echo(result.summary())


COMMANDS = [reproduce]

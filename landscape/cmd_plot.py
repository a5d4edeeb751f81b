"""``landscape plot`` and ``landscape reproduce``.

Both import their heavy parts lazily inside the command, so ``landscape --help`` stays fast
and plotting never loads torch: ``figures`` is imported only when ``plot`` runs, and
``landscape.reproduce`` (which trains) only when ``reproduce`` runs.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the figures (created if absent).")
@click.option("--format", "formats", default="png,pdf", show_default=True,
              help="Comma-separated image formats: png, pdf, svg.")
@click.option("--surface3d", is_flag=True, help="Also draw 3D surfaces of 2D scans.")
def plot(files: tuple[Path, ...], out_dir: Path, formats: str, surface3d: bool) -> None:
    """Draw whatever the result FILES hold (scans, training runs, certification results).

    Several files are overlaid (methods on shared axes); training runs with probes also give
    a tightness-versus-smoothness scatter, and certify files a verified-error table
    (Markdown and LaTeX).
    """
    import figures
    from figures.style import normalise_formats

    try:
        fmts = normalise_formats(formats)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from None
    for f in files:
        if not f.exists():
            raise click.BadParameter(f"result file {f} does not exist", param_hint="FILES")
    written = figures.plot_file(list(files), out_dir, formats=fmts, surface3d=surface3d)
    for path in written:
        click.echo(str(path))
    click.echo(f"wrote {len(written)} files to {out_dir}", err=True)


@click.command("reproduce")
@click.option("--profile", type=click.Choice(["quick", "paper", "tiny"]), default="quick", show_default=True,
              help="quick: < 20 min on a 2-core CPU; paper: the paper's settings (GPU); tiny: a smoke test.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for runs, scans, figures and tables; an existing one is resumed.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset files are (default: the dataset's usual place).")
@click.option("--dataset", default=None,
              help="quick: digits or fashion-mnist [default: fashion-mnist when its files are present, "
                   "else digits]; paper: mnist or cifar10 [default: both].")
@click.option("--methods", default=None, help="Comma-separated subset of ibp,crown-ibp,cap,tightest.")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="Image formats of the figures.")
@click.option("--dry-run", is_flag=True, help="Print the plan (runs and their settings) and stop.")
def reproduce(profile: str, out_dir: Path, device: str, data_dir: Path | None, dataset: str | None,
              methods: str | None, formats: str, dry_run: bool) -> None:
    """Reproduce the paper's analysis: train IBP, CROWN-IBP (beta = 1), CAP and the
    tightest-slope method with training probes, certify them at several eps, scan them, and
    write the figures and tables. Finished runs are not trained again."""
    from landscape import reproduce as repro

    chosen = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    plan = repro.make_plan(profile, device=device, data_dir=data_dir, methods=chosen, dataset=dataset)
    if dry_run:
        click.echo(repro.describe_plan(plan))
        return
    result = repro.run(plan, out_dir, formats=formats)
    click.echo(result.summary())


COMMANDS = [plot, reproduce]

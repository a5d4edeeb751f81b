"""``landscape plot``: draw whatever result files hold.

``figures`` is imported only when the command runs, so ``landscape --help`` stays fast and
plotting never loads torch.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the figures (created if absent).",
)
@click.option(
    "--format",
    "formats",
    default="png,pdf",
    show_default=True,
    help="Comma-separated image formats: png, pdf, svg.",
)
@click.option("--surface3d", is_flag=True, help="Also draw 3D surfaces of 2D scans.")
@click.option(
    "--log",
    is_flag=True,
    help="Draw losses on a log scale: the shared colour scale of 2D scans, the "
    "z axis of 3D surfaces, the loss axis of 1D scans.",
)
@click.option(
    "--color-scale",
    "color_scale",
    type=click.Choice(["robust", "linear", "log"]),
    default="robust",
    show_default=True,
    help="Colour scale of 2D scans: robust = linear over the 2nd..98th percentile of the "
    "values with extended colour-bar ends, so huge corners do not hide the region around the "
    "checkpoint; linear = the whole range; log = as --log.",
)
def plot(
    files: tuple[Path, ...],
    out_dir: Path,
    formats: str,
    surface3d: bool,
    log: bool,
    color_scale: str,
) -> None:
    """Draw whatever the result FILES hold (scans, training runs, certification results).

    Several files are overlaid (methods on shared axes; 2D scans share one colour scale);
    training runs with probes also give a tightness-versus-smoothness scatter, certify files a
    verified-error table (Markdown and LaTeX), PCA scans the training path on the loss
    contours and Hessian scans the spectral densities and top eigenvalues.
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
    from figures.surfaces import robust_scale

    log = log or color_scale == "log"
    with robust_scale(color_scale == "robust" and not log):
        written = figures.plot_file(
            list(files), out_dir, formats=fmts, surface3d=surface3d, log=log
        )
    for path in written:
        click.echo(str(path))
    click.echo(f"wrote {len(written)} files to {out_dir}", err=True)


COMMANDS = [plot]

"""``landscape scan CKPT``: scan a trained model's loss landscape into an HDF5 file.

The options make a :class:`landscape.scan_runner.ScanRequest`; :func:`~landscape.scan_runner.run_scan`
does the rest (kinds, defaults, resuming, torchrun: see that module and ``docs/scans.md``).
"""

from __future__ import annotations

from typing import Any

import click

from common.names import DIRECTION_NORMS, SCAN_KINDS, SCAN_LOSSES, TRAIN_METHODS


@click.command("scan")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option(
    "--kind",
    type=click.Choice(tuple(SCAN_KINDS)),
    default="gradient",
    show_default=True,
    help="What to scan: " + "; ".join(f"{k}: {v.summary}" for k, v in SCAN_KINDS.items()) + ".",
)
@click.option(
    "--to",
    "to_checkpoint",
    type=click.Path(),
    default=None,
    help="Second checkpoint (interpolate).",
)
@click.option(
    "--out", required=True, type=click.Path(), help="Results file (.h5); resumed if it exists."
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated losses scanned over the same points: training methods "
    f"({', '.join(TRAIN_METHODS)}) or {', '.join(SCAN_LOSSES)}; a gradient scan moves each along "
    "its own gradient (see --direction-from). [default: the checkpoint's method]",
)
@click.option(
    "--direction-from",
    default=None,
    metavar="METHOD",
    help="gradient: move every loss of --methods along this one's gradient (a shared direction) "
    "[default: each loss along its own gradient].",
)
@click.option(
    "--loss",
    type=click.Choice(("certified", *SCAN_LOSSES)),
    default="certified",
    show_default=True,
    help="Loss kind when --methods is not given.",
)
@click.option(
    "--eps",
    type=float,
    default=None,
    help="Radius of the certified/PGD loss [default: the final training eps].",
)
@click.option(
    "--beta",
    type=float,
    default=None,
    help="CROWN-IBP mixing weight [default: the final training beta].",
)
@click.option(
    "--kappa",
    type=float,
    default=None,
    help="Clean-loss weight [default: the final training kappa].",
)
@click.option(
    "--slope",
    default=None,
    help="Lower-slope policy (see common.names.SLOPES) [default: each method's own].",
)
@click.option(
    "--samples",
    default="100",
    show_default=True,
    help="Fixed samples the loss is computed on: a number, or 'all' (the whole split).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate the losses, gradients and Hessian-vector products over mini-batches of this many "
    "samples, accumulated, so memory does not grow with --samples [default: one batch].",
)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="Seeds samples, directions, random slopes.",
)
@click.option(
    "--points",
    type=click.IntRange(min=1),
    default=None,
    help="Points per axis [gradient: 10 log-spaced t (plus 0 and 1); random, pca: 21; interpolate: 41].",
)
@click.option(
    "--range",
    "range_",
    default=None,
    help="'a,b' coefficient range [random: -1,1; interpolate: -0.5,1.5; pca: each axis covers the "
    "trajectory with a 10% margin].",
)
@click.option(
    "--t-min",
    type=float,
    default=0.5,
    show_default=True,
    help="Smallest t > 0 of the gradient scan.",
)
@click.option(
    "--t-max", type=float, default=5.0, show_default=True, help="Largest t of the gradient scan."
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Step scale of the gradient scan [default: the training lr].",
)
@click.option(
    "--norm",
    type=click.Choice(DIRECTION_NORMS),
    default="filter",
    show_default=True,
    help="Normalisation of random directions.",
)
@click.option(
    "--keep-bias/--zero-bias",
    default=None,
    help="Move biases along random or PCA directions, or not [default: zeroed for random directions, "
    "kept for PCA ones].",
)
@click.option(
    "--trajectory",
    default=None,
    help="pca: the checkpoints of the trajectory, a glob such as 'runs/a/checkpoint_step*.pt' or a run "
    "directory [default: the checkpoint_epoch*.pt and checkpoint_step*.pt beside CHECKPOINT]; the "
    "trajectory ends at CHECKPOINT.",
)
@click.option(
    "--center",
    is_flag=True,
    help="pca: centre the checkpoints' differences before the SVD (as "
    "scikit-learn's PCA does) [default: not, as Li et al.'s text].",
)
@click.option(
    "--top-k",
    type=int,
    default=None,
    help="hessian: how many of the largest eigenvalues [default: 5].",
)
@click.option(
    "--lanczos-steps",
    type=int,
    default=None,
    help="hessian: Lanczos steps for the top eigenvalues [default: max(2k + 20, 40)].",
)
@click.option(
    "--trace-samples",
    type=int,
    default=None,
    help="hessian: Rademacher vectors of Hutchinson's trace estimate [default: 100].",
)
@click.option(
    "--density-runs",
    type=int,
    default=None,
    help="hessian: SLQ runs of the spectral density [default: 10].",
)
@click.option(
    "--density-steps",
    type=int,
    default=None,
    help="hessian: Lanczos steps per SLQ run [default: 40].",
)
@click.option(
    "--density-sigma",
    type=float,
    default=None,
    help="hessian: Gaussian width of the density, relative to the spread of the eigenvalues [default: 0.01].",
)
@click.option(
    "--density-points",
    type=int,
    default=None,
    help="hessian: grid points of the density [default: 1000].",
)
@click.option(
    "--layers/--no-layers",
    default=None,
    help="hessian: also the top eigenvalues and trace of each layer's block of the Hessian [default: on].",
)
@click.option(
    "--fields",
    default=None,
    help="random, interpolate, pca: also store at every point the errors named here, of clean_err, "
    "pgd_err, verified_err (the union of --verify-methods' bounds), on the scan's samples at its eps.",
)
@click.option(
    "--verify-methods",
    default="ibp,crown-ibp",
    show_default=True,
    help="The bounds whose union certifies a sample for --fields verified_err.",
)
@click.option(
    "--hessian",
    is_flag=True,
    help="Also store the Hessian eigenvalue of largest magnitude of each loss at "
    "the checkpoint (Lanczos).",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Gradient scans: sign changes (a_sign, sign_flip) of the bound coefficients.",
)
@click.option(
    "--pgd-steps",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="PGD steps of the pgd loss (recomputed at every point).",
)
@click.option("--fused", is_flag=True, help="Use the fused certified loss.")
@click.option(
    "--batch-points",
    type=click.IntRange(min=1),
    default=None,
    help="Grid points per torch.func.vmap pass of the losses vmap can batch (clean, IBP, CROWN-IBP with fixed "
    "slopes; the others loop) [default: 16 on CUDA, 1 on CPU, where vmap measured slower].",
)
@click.option(
    "--compile",
    is_flag=True,
    help="Run the bound engine's element-wise steps as compiled kernels (cached "
    "on disk; the first run of a model compiles for a while).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--data-dir",
    type=click.Path(),
    default=None,
    help="Dataset folder [default: the checkpoint's].",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch a missing dataset from its official source (needs a network).",
)
@click.option(
    "--dataset",
    default=None,
    help="The dataset code (FILE.py:function) the checkpoint names, named again to allow importing it.",
)
@click.option(
    "--trust-code",
    is_flag=True,
    help="Import and run the dataset code the checkpoint names (a checkpoint's "
    "code runs only with this or --dataset naming it).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def scan(
    checkpoint: str, methods: str | None, range_: str | None, quiet: bool, **options: Any
) -> None:
    """Scan the loss landscape of CHECKPOINT into an HDF5 file (resumable)."""
    from landscape.scan_runner import ScanRequest, run_scan

    options["verify_methods"] = [
        m.strip() for m in options["verify_methods"].split(",") if m.strip()
    ]
    listed = None if methods is None else methods.split(",")
    request = ScanRequest(checkpoint=checkpoint, methods=listed, range=range_, **options)
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
        unit = "losses" if request.kind == "hessian" else "points"
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

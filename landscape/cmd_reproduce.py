"""``landscape reproduce``: the paper's analysis end to end (:mod:`landscape.reproduce`).

The package, which trains, is imported only when the command runs, so ``landscape --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from common.names import PAPER_METHODS


def _parse_seeds(seeds: str) -> list[int]:
    """``--seeds "0,1,2"`` -> ``[0, 1, 2]``; each an integer a training config accepts."""
    try:
        seed_list = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds"
        ) from None
    from train.config import MAX_SEED

    if any(not 0 <= s <= MAX_SEED for s in seed_list):
        raise click.BadParameter(
            f"seeds must lie in 0 .. {MAX_SEED}, got {seeds!r}", param_hint="--seeds"
        )
    return seed_list


@click.command("reproduce")
@click.option(
    "--profile",
    default="quick",
    show_default=True,
    help="A profile of configs/*.yaml: quick (minutes on a 2-core CPU), official-short (the paper "
    "code's protocol on model_small for 1,500 steps, CPU-sized), paper (the paper code's MNIST, "
    "CIFAR-10 and SVHN settings, for a GPU), tiny (a smoke test), "
    "modern (IBP, CROWN-IBP, tightest, SABR, MTL-IBP on a Fashion-MNIST subset).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for runs, scans, figures and tables; an existing one is resumed.",
)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the dataset files are (default: the dataset's usual place).",
)
@click.option(
    "--dataset",
    default=None,
    help="Run only the profile's settings on this dataset [quick: fashion-mnist when its files are "
    "present, else digits; paper: mnist and cifar10].",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Shorten every run to about this many steps, on a training subset: a smoke test.",
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    help="Comma-separated seeds: every run once per seed, and "
    "the summary states each claim with its spread across them.",
)
@click.option(
    "--methods",
    default=None,
    help=f"Comma-separated training methods with a bound, e.g. "
    f"{','.join(PAPER_METHODS)},sabr,mtl-ibp [default: the profile's, else {','.join(PAPER_METHODS)}].",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch a missing dataset from its official source (needs a network).",
)
@click.option(
    "--format",
    "formats",
    default="png,pdf",
    show_default=True,
    help="Image formats of the figures.",
)
@click.option(
    "--compile",
    is_flag=True,
    help="Train, certify and scan with the bound engine's compiled kernels "
    "(cached on disk; the first run of a model compiles for a while).",
)
@click.option(
    "--test-selected",
    is_flag=True,
    help="Also report, beside the final model, each run's epoch with the lowest verified error on the "
    "test set after the eps ramp, as the paper code selects its reported model (test-set "
    "selection: optimistic, labelled so; needs the per-epoch evaluation, eval_size > 0).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (runs and their settings) and stop.")
@click.option(
    "--jobs",
    type=int,
    default=1,
    show_default=True,
    help="Carry out this many runs at a time in worker processes, each with its share of the CPU threads "
    "(or its own GPU when several are visible); the figures and summary follow when all are done.",
)
@click.option(
    "--threads-per-run",
    type=int,
    default=None,
    help="Torch threads of every run [default: the CPU threads / --jobs]; the same value gives the same "
    "numbers bit for bit under any --jobs.",
)
@click.option(
    "--launcher",
    type=click.Choice(["processes", "slurm", "local"]),
    default="processes",
    show_default=True,
    help="processes: this machine (--jobs); slurm: one SLURM job per run through "
    "submitit (pip install 'cert-landscape[slurm]'); this command waits for them, then writes the summary; "
    "local: the same jobs as subprocesses here through submitit's local executor (a test of the launcher).",
)
@click.option(
    "--slurm-partition",
    default=None,
    help="SLURM partition of the jobs [profile's reproduce: slurm:, else the cluster's default].",
)
@click.option(
    "--slurm-gpus-per-job", type=int, default=None, help="GPUs of every SLURM job [default 0]."
)
@click.option(
    "--slurm-cpus-per-job",
    type=int,
    default=None,
    help="CPUs of every SLURM job, also its torch threads [default 2].",
)
@click.option(
    "--slurm-time",
    default=None,
    help="Time limit of every SLURM job: minutes or [D-]HH:MM:SS [default 60].",
)
def reproduce(
    profile: str,
    out_dir: Path,
    device: str,
    data_dir: Path | None,
    dataset: str | None,
    steps: int | None,
    seeds: str,
    methods: str | None,
    download: bool,
    formats: str,
    compile: bool,
    test_selected: bool,
    dry_run: bool,
    jobs: int,
    threads_per_run: int | None,
    launcher: str,
    slurm_partition: str | None,
    slurm_gpus_per_job: int | None,
    slurm_cpus_per_job: int | None,
    slurm_time: str | None,
) -> None:
    """Reproduce the paper's analysis: train IBP, CROWN-IBP (beta = 1), CAP and the
    tightest-slope method with training probes (once per seed), certify them at several eps,
    scan them, and write the figures, tables and a summary that states the paper's claims with
    their spread. Finished runs are not trained again."""
    from figures.style import normalise_formats
    from landscape import reproduce as repro

    try:
        normalise_formats(formats)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from None
    chosen = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    seed_list = _parse_seeds(seeds)
    plan = repro.make_plan(
        profile,
        device=device,
        data_dir=data_dir,
        methods=chosen,
        dataset=dataset,
        seeds=seed_list,
        steps=steps,
    )
    plan.test_selected = test_selected
    if (
        compile
    ):  # the runs' configs carry it (a resume keeps it), and their certify and scan steps read it
        for r in plan.runs:
            r.config["compile"] = True
    how = repro.Execution(
        jobs=jobs,
        threads_per_run=threads_per_run,
        launcher=launcher,
        slurm=repro.SlurmOptions.resolve(
            plan,
            partition=slurm_partition,
            gpus_per_job=slurm_gpus_per_job,
            cpus_per_job=slurm_cpus_per_job,
            time=slurm_time,
        ),
    )
    if launcher != "processes":
        import importlib.util

        if importlib.util.find_spec("submitit") is None:
            raise click.UsageError(
                "--launcher slurm needs submitit: pip install 'cert-landscape[slurm]'"
            )
    if dry_run:
        click.echo(repro.describe_plan(plan))
        return
    result = repro.run(plan, out_dir, formats=formats, download=download, how=how)
    click.echo(result.summary())


COMMANDS = [reproduce]

"""``landscape train`` and ``landscape certify``: certified training and honest evaluation.

``landscape train --dataset digits --model cnn-tiny --method ibp --eps 0.1 --epochs 5 --out runs/ibp``
writes ``runs/ibp/config.json``, ``checkpoint_epoch{N}.pt`` after every epoch,
``checkpoint.pt`` at the end and ``train.h5`` (root attrs and groups ``steps``, ``epochs``,
optionally ``grads`` and ``probes``; layout in ``docs/schema.md``). Options may come from
``--config FILE`` (YAML or JSON, keys named like the options); options on the command line win.

``landscape certify runs/ibp/checkpoint.pt --eps 0.1 --json`` prints clean, PGD and verified
error (per method and their union) on the test set of the checkpoint's dataset; with
``--complete`` it also decides every sample exactly (:mod:`landscape.complete`), with
``--attack autoattack`` it adds that attack beside its PGD (:mod:`landscape.standard_attacks`).

The ``certify`` command is written in :mod:`landscape.cmd_certify` and registered here.

Every bad value is reported before any work starts, as one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from common.names import SLOPES, TRAIN_METHODS
from landscape.cmd_certify import certify
from landscape.runs import latest_epoch_checkpoint, train_in_dir

RUN_FILES = ("config.json", "train.h5", "checkpoint.pt")


# ----------------------------------------------------------------------------- helpers
def _parse_model_options(items: tuple[str, ...]) -> dict[str, Any] | None:
    """``("widths=[64,64]", "width=2")`` -> ``{"widths": [64, 64], "width": 2}`` (values as YAML)."""
    if not items:
        return None
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.ClickException(f"--model-option: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise click.ClickException(
                f"--model-option: cannot read the value of {item!r}"
            ) from None
    return out


def _parse_milestones(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.ClickException(
            f"--lr-milestones: expected comma-separated epochs, got {text!r}"
        ) from None


def _existing_run(out: Path) -> dict[str, Any] | None:
    """The config dict of the run in ``out`` (None if ``out`` holds no run)."""
    cfg = out / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError:
            raise click.ClickException(
                f"{cfg} is not valid JSON; use --overwrite or another --out"
            ) from None
    from landscape.trajectory import run_checkpoints

    if any((out / f).exists() for f in RUN_FILES) or run_checkpoints(out):
        return {}
    return None


def _clear_run(out: Path) -> None:
    from landscape.trajectory import run_checkpoints

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in run_checkpoints(
        out
    ):  # epoch and step checkpoints: a stale one would join the next trajectory
        p.unlink()


# ----------------------------------------------------------------------------- train
def _default(name: str) -> str:
    """What a ``train`` option defaults to, in words (``--help`` shows it)."""
    from train import config as C

    derived = {
        "eps_start_epoch": f"{C.WARMUP_FRACTION:.0%} of --epochs",
        "eps_ramp_epochs": f"{C.RAMP_FRACTION:.0%} of --epochs, so eps ramps over epochs "
        f"{C.WARMUP_FRACTION:.0%}-{C.WARMUP_FRACTION + C.RAMP_FRACTION:.0%} of the run",
        "lr": ", ".join(f"{v:g} for {o}" for o, v in C.DEFAULT_LR.items()),
        "slope": "the method's own",
        "data_dir": "the dataset's usual places",
    }
    if name in derived:
        return derived[name]
    value = next(f.default for f in dataclasses.fields(C.TrainConfig) if f.name == name)
    return (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _option(flag: str, help: str = "", **kw):
    """A ``train`` option whose ``--help`` shows the config's default (the option itself defaults
    to None, so a config file or a resumed run's config fills what the command line leaves open)."""
    name = flag.lstrip("-").split("/")[0].replace("-", "_")
    return click.option(flag, help=help, show_default=_default(name), **kw)


def _resume_config(
    out: Path,
    old: dict[str, Any] | None,
    config_file: str | None,
    options: dict[str, Any],
    trust_code: bool,
) -> tuple[Any, Path | None]:
    """``--resume``: the run's config in ``out`` with the options given on top (its own code
    imported only when trusted), and the epoch checkpoint to continue from; one clear error
    when ``out`` holds no run or no epoch checkpoint."""
    from train.config import TrainConfig, read_config_file

    if not old:
        raise click.ClickException(f"--resume: {out} holds no run to resume (no config.json)")
    given = {
        **(read_config_file(config_file) if config_file else {}),
        **{k: v for k, v in options.items() if v is not None},
    }
    from train.plugins import check_trusted

    for what in ("model", "dataset"):  # the run's own code runs only when asked for
        if what not in given:
            check_trusted(
                old.get(what), what, f"the run's config {out / 'config.json'}", trust=trust_code
            )
    config = TrainConfig.from_dict({**old, **{k.replace("-", "_"): v for k, v in given.items()}})
    resume_from = latest_epoch_checkpoint(out)
    from landscape.trajectory import run_checkpoints

    if resume_from is None and (
        any((out / name).exists() for name in RUN_FILES[1:]) or run_checkpoints(out)
    ):
        raise click.ClickException(
            f"--resume: {out} holds a run but no epoch checkpoint (checkpoint_epoch*.pt) to continue from; "
            "nothing was changed. Use --overwrite to train it again from the start"
        )
    return config, resume_from


def _fresh_config(
    out: Path,
    old: dict[str, Any] | None,
    config_file: str | None,
    options: dict[str, Any],
    overwrite: bool,
) -> Any:
    """A new run's config from ``--config`` and the options; refused when ``out`` holds a run
    already (this one or another) and ``--overwrite`` was not given."""
    from train.config import TrainConfig, load_config

    config = load_config(config_file, options)
    if old is not None and not overwrite:
        try:
            same = bool(old) and TrainConfig.from_dict(old).identity() == config.identity()
        except ValueError:
            same = False
        if same:
            raise click.ClickException(
                f"{out} already holds this run; pass --resume to continue it or --overwrite to start again"
            )
        raise click.ClickException(
            f"{out} holds another run (a different config); use --overwrite to replace it or choose another --out"
        )
    return config


@click.command("train")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON file of options."
)
@_option(
    "--dataset",
    help="digits, mnist, fashion-mnist, cifar10, svhn, or your own: FILE.py:function (README).",
)
@_option(
    "--model",
    help="A model of the zoo (train.models.MODELS), e.g. mlp, cnn-tiny, dm-small, or your own: "
    "FILE.py:function returning an nn.Sequential (README).",
)
@click.option(
    "--model-option",
    "model_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Model option, e.g. widths=[64,64].",
)
@_option("--method", help=f"Training method: {', '.join(TRAIN_METHODS)}.")
@_option("--slope", help=f"Lower-slope policy: {', '.join(SLOPES)}.")
@_option("--eps", type=float, help="Training radius eps_train (input units).")
@_option(
    "--eps-start-epoch",
    type=float,
    help="Epoch at which the eps/beta/kappa ramp starts (eps = 0 before).",
)
@_option("--eps-ramp-epochs", type=float, help="Length of the ramp in epochs.")
@_option("--eps-schedule", type=click.Choice(["linear", "smooth"]), help="Shape of the eps ramp.")
@_option(
    "--beta-start",
    type=float,
    help="CROWN-IBP's weight of the CROWN bound at the start of the ramp.",
)
@_option("--beta-end", type=float, help="... and at its end (CROWN-IBP's own recipe: 0).")
@_option("--beta-schedule", type=click.Choice(["linear", "smooth"]))
@_option("--kappa-start", type=float, help="Weight of the clean loss at the start of the ramp.")
@_option("--kappa-end", type=float, help="... and at its end.")
@_option("--kappa-schedule", type=click.Choice(["linear", "smooth"]))
@_option("--epochs", type=int)
@_option("--batch-size", type=int)
@_option("--optimizer", type=click.Choice(["adam", "sgd"]))
@_option("--lr", type=float, help="Learning rate.")
@_option("--momentum", type=float, help="SGD momentum.")
@_option("--weight-decay", type=float)
@click.option(
    "--lr-milestones",
    help="Comma-separated epochs at which lr is multiplied by --lr-decay [default: none].",
)
@_option("--lr-decay", type=float)
@_option("--grad-clip", type=float, help="Max gradient L2 norm (0 = off).")
@_option("--seed", type=int)
@_option("--fused-loss/--no-fused-loss", default=None, help="Fused certified cross-entropy bound.")
@_option(
    "--fused-ramp/--no-fused-ramp",
    default=None,
    help="While eps ramps up, the fused bound or IBP's, whichever "
    "is smaller per sample; from the final eps on, the loss --fused-loss says (CROWN-IBP on Fashion-MNIST "
    "subsets reached its verified error in 0.66x (mlp) and 0.82x (dm-small) the CPU time).",
)
@_option(
    "--sabr-lambda",
    type=float,
    help="sabr: box size lambda in (0, 1]; IBP on B(x', lambda eps) around a PGD point.",
)
@_option(
    "--mtl-alpha",
    type=float,
    help="mtl-ibp: weight alpha of the IBP loss, (1 - alpha) on the PGD loss.",
)
@_option(
    "--attack-steps",
    type=int,
    help="PGD steps of the sabr / mtl-ibp attack (none: 8 for sabr, 1 for mtl-ibp).",
)
@_option(
    "--init",
    type=click.Choice(["default", "ibp"]),
    help="Weight init: the zoo's, or Shi et al.'s IBP init.",
)
@_option(
    "--warmup-reg/--no-warmup-reg",
    default=None,
    help="Shi et al.'s tightness and ReLU-balance regularisers while eps ramps.",
)
@_option("--warmup-reg-lambda", type=float, help="Weight lambda of the warm-up regularisers.")
@_option("--warmup-reg-tol", type=float, help="Tolerance tau of the warm-up regularisers.")
@_option("--train-size", type=int, help="Use a seeded subset of the training set.")
@_option("--test-size", type=int, help="Use a seeded subset of the test set.")
@_option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="The only folder the dataset is looked for in.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch a missing dataset from its official source (needs a network).",
)
@_option("--device", help="cpu, cuda, cuda:N.")
@_option("--record-every", type=int, help="Write recorded step scalars every N steps.")
@_option("--grad-every", type=int, help="Record the flattened gradient every N steps (0 = off).")
@_option("--probe-every", type=int, help="Gradient-direction probe every N steps (0 = off).")
@_option(
    "--probe-batches",
    type=int,
    help="Probe the step's batch (1) or K fixed training batches, storing their spread.",
)
@_option(
    "--probe-fresh-slopes/--no-probe-fresh-slopes",
    default=None,
    help="Draw new random slopes at every probe point, as the paper's probe does.",
)
@_option(
    "--probe-hessian/--no-probe-hessian",
    default=None,
    help="Each probe also records the top Hessian eigenvalue (Lanczos) and the trace (Hutchinson) of the "
    "step's loss (probes columns hessian_top_eig, hessian_trace, hessian_trace_stderr).",
)
@_option(
    "--checkpoint-every-steps",
    type=int,
    help="Also write checkpoint_step{S}.pt every N steps (and "
    "checkpoint_step0.pt, the initialisation): a finer trajectory for scan --kind pca (0 = off).",
)
@_option("--eval-size", type=int, help="Test samples evaluated after each epoch (0 = off).")
@_option("--opt-steps", type=int, help="Iterations of the 'optimized' slope policy.")
@_option("--opt-lr", type=float, help="Step size of the 'optimized' slope policy.")
@_option(
    "--compile/--no-compile",
    default=None,
    help="Run the bound engine's element-wise steps as compiled kernels "
    "(cached on disk; the first run of a model compiles for a while).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Run directory.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last epoch checkpoint; options not "
    "given are the run's own (e.g. --resume --epochs 40 extends it).",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option(
    "--trust-code",
    is_flag=True,
    help="--resume: import and run the model or dataset code (FILE.py:function) "
    "that the run's config names [default: only when --model / --dataset name it again].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    config_file,
    model_option,
    lr_milestones,
    download,
    out_dir,
    resume,
    overwrite,
    trust_code,
    quiet,
    **options,
) -> None:
    """Train a certifiably robust model; write checkpoints and train.h5 to --out."""
    from landscape.distributed import barrier
    from train import parallel
    from train.loop import load_data, resolve_device
    from train.models import model_description

    if resume and overwrite:
        raise click.ClickException("--resume and --overwrite exclude each other")
    options["model_options"] = _parse_model_options(model_option)
    options["lr_milestones"] = _parse_milestones(lr_milestones)

    # -- every check before any work that changes the run directory
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"--out {out} exists and is not a directory")
    old = _existing_run(out) if out.is_dir() else None
    if resume:
        config, resume_from = _resume_config(out, old, config_file, options, trust_code)
    else:
        config, resume_from = _fresh_config(out, old, config_file, options, overwrite), None
    resolve_device(config.device)
    if config.compile:
        from bounds.compiled import check_cache

        check_cache()  # an unwritable cache fails now, not inside the first compiled step
    data = load_data(config, download=download)  # unknown or missing dataset: one clear error here
    spec = data.spec
    model_description(
        config.model, spec.input_shape, spec.n_classes, spec.mean, spec.std, **config.model_options
    )

    proc = parallel.init(
        parallel.backend_for(config.device)
    )  # under torchrun: every rank checked the same
    try:
        parallel.check_batch(proc, config.batch_size)
        barrier(proc)  # every rank has read --out before rank 0 changes it
        if proc.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if overwrite:
                _clear_run(out)
        result = train_in_dir(
            out, config, data, resume_from=resume_from, progress=not quiet, parallel=proc
        )
    finally:
        parallel.shutdown(proc)
    if not proc.is_main:
        return
    m = result.metrics
    summary = ", ".join(
        f"{k}={m[k]:.4f}" for k in sorted(m) if k.startswith("test_") or k in ("train_loss",)
    )
    click.echo(
        f"trained {config.method} for {result.epoch} epochs ({result.step} steps, {result.wall_time:.1f} s): "
        f"{summary}; wrote {result.checkpoint}"
    )


COMMANDS = [train, certify]

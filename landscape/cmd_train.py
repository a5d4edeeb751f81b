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

Every bad value is reported before any work starts, as one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from common.names import CERTIFY_METHODS, SLOPES, TRAIN_METHODS
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


def _parse_eps(text: str) -> list[float]:
    """``"0.05,0.1"`` -> ``[0.05, 0.1]``; each a finite number >= 0."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.ClickException(
            f"--eps: expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not (v >= 0 and v != float("inf")) for v in values):
        raise click.ClickException(f"--eps: must be finite numbers >= 0, got {text!r}")
    return values


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
    from train.config import TrainConfig, load_config, read_config_file
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
    resume_from = None
    if resume:
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
        config = TrainConfig.from_dict(
            {**old, **{k.replace("-", "_"): v for k, v in given.items()}}
        )
        resume_from = latest_epoch_checkpoint(out)
        from landscape.trajectory import run_checkpoints

        if resume_from is None and (
            any((out / name).exists() for name in RUN_FILES[1:]) or run_checkpoints(out)
        ):
            raise click.ClickException(
                f"--resume: {out} holds a run but no epoch checkpoint (checkpoint_epoch*.pt) to continue from; "
                "nothing was changed. Use --overwrite to train it again from the start"
            )
    else:
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


# ----------------------------------------------------------------------------- certify
@click.command("certify")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--eps", help="Radius, or several comma-separated [default: the checkpoint's eps_train]."
)
@click.option(
    "--methods",
    default=",".join(CERTIFY_METHODS),
    show_default=True,
    help="Comma-separated verification methods: bound or training methods (cap, tightest verify with "
    "their own bound) or method:slope pairs such as crown-ibp:tightest; may be empty.",
)
@click.option("--pgd-steps", type=int, default=20, show_default=True)
@click.option("--pgd-restarts", type=int, default=1, show_default=True)
@click.option("--test-size", type=int, help="Evaluate a seeded subset of the test set.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="The only folder the dataset is looked for in.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch a missing dataset from its official source (needs a network).",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="Seed of the subset and the attack.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results to this HDF5 file (kind certify, one row per eps; docs/schema.md).",
)
@click.option(
    "--float64",
    "double",
    is_flag=True,
    help="Bound in float64: float32 rounding can move a bound by ~1e-6 relative, so use this "
    "when a certificate must hold to the last digit.",
)
@click.option(
    "--compile",
    is_flag=True,
    help="Bound with the engine's compiled kernels (cached on disk; the first "
    "run of a model compiles for a while).",
)
@click.option(
    "--dataset",
    "named_dataset",
    default=None,
    help="The dataset code (FILE.py:function) the checkpoint names, named again to allow importing it.",
)
@click.option(
    "--trust-code",
    is_flag=True,
    help="Import and run the dataset code the checkpoint names (a checkpoint's "
    "code runs only with this or --dataset naming it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--complete",
    is_flag=True,
    help="Also decide every sample exactly (verified / falsified / timeout) "
    "by a mixed-integer program solved with HiGHS; one eps; resumable with --out.",
)
@click.option(
    "--time-limit",
    type=float,
    default=10.0,
    show_default=True,
    help="--complete: seconds of the exact program per sample.",
)
@click.option(
    "--jobs", type=int, default=1, show_default=True, help="--complete: processes solving samples."
)
@click.option(
    "--margins",
    is_flag=True,
    help="--complete: solve the exact minimum margin of every correctly "
    "classified sample, also those a bound or the attack decided (the tightness measures need it).",
)
@click.option(
    "--attack",
    "attack_name",
    default="pgd",
    show_default=True,
    help="Attack reported beside the toolkit's PGD: pgd (that one alone), autoattack, apgd-ce or "
    "apgd-t (the Adversarial Robustness Toolbox: pip install 'cert-landscape[attack]').",
)
def certify(
    checkpoint,
    eps,
    methods,
    pgd_steps,
    pgd_restarts,
    test_size,
    batch_size,
    data_dir,
    download,
    device,
    seed,
    out,
    double,
    compile,
    named_dataset,
    trust_code,
    as_json,
    complete,
    time_limit,
    jobs,
    margins,
    attack_name,
) -> None:
    """Clean, PGD and verified error of a checkpoint on its dataset's test set."""
    from landscape.certification import certify_rows, write_certify_file
    from train.checkpoint import check_fits, load_model
    from train.config import run_domain
    from train.data import load_dataset
    from train.evaluate import metric_key, verifier
    from train.loop import resolve_device

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    for m in method_list:
        try:
            verifier(m)
        except ValueError as exc:
            raise click.ClickException(f"--methods: {exc}") from None
    if pgd_steps < 0 or pgd_restarts < 1:
        raise click.ClickException("--pgd-steps must be >= 0 and --pgd-restarts >= 1")
    if batch_size < 1:
        raise click.ClickException("--batch-size: must be >= 1")
    if test_size is not None and test_size < 1:
        raise click.ClickException("--test-size: must be >= 1")
    eps_list = None if eps is None else _parse_eps(eps)
    if compile:
        from bounds.compiled import check_cache

        check_cache()
    if out is not None:
        from landscape.certification import check_certify_out

        check_certify_out(out)  # before any work: a missing, read-only or wrong place fails now
    from landscape.complete import options_problem

    problem = options_problem(complete, time_limit, jobs, margins, attack_name, eps_list, out)
    if problem:
        raise click.ClickException(problem)
    dev = resolve_device(device)
    model, ckpt = load_model(checkpoint, device=dev)
    cfg = ckpt["config"]
    from train.plugins import check_trusted

    check_trusted(
        cfg["dataset"],
        "dataset",
        f"checkpoint {checkpoint!r}",
        named=named_dataset,
        trust=trust_code,
    )
    eps_list = [float(cfg.get("eps", 0.0))] if eps_list is None else eps_list
    data = load_dataset(
        cfg["dataset"],
        data_dir=data_dir or cfg.get("data_dir"),
        download=download,
        test_size=test_size,
        seed=seed,
    )
    check_fits(ckpt, data.spec, where=f"checkpoint {checkpoint!r}")
    test_x = data.test_x
    if double:
        model, test_x = model.double(), test_x.double()
    if complete or attack_name != "pgd":
        from landscape.certification import certify_complete

        try:
            certify_complete(
                model,
                test_x,
                data.test_y,
                eps_list[0] if len(eps_list) == 1 else None,
                cfg,
                checkpoint=checkpoint,
                methods=method_list,
                domain=run_domain(cfg, data.spec),
                attack_name=attack_name,
                pgd_steps=pgd_steps,
                pgd_restarts=pgd_restarts,
                seed=seed,
                complete=complete,
                time_limit=time_limit,
                jobs=jobs,
                margins=margins,
                batch_size=batch_size,
                out=out,
                as_json=as_json,
                double=double,
                test_size=test_size,
            )
        except (ValueError, ImportError) as exc:
            raise click.ClickException(str(exc)) from None
        return
    columns, results = certify_rows(
        model,
        test_x,
        data.test_y,
        eps_list,
        method_list,
        str(cfg.get("method")),
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        batch_size=batch_size,
        domain=run_domain(cfg, data.spec),
        seed=seed,
        progress=not as_json,
        compile=compile,
    )
    for res in results:
        res["checkpoint"] = str(checkpoint)
        res["dtype"] = "float64" if double else "float32"
    if out is not None:
        write_certify_file(
            out,
            columns,
            {
                "method": cfg.get("method"),
                "dataset": cfg["dataset"],
                "model": cfg.get("model"),
                "eps": float(cfg.get("eps", 0.0)),
                "checkpoint": str(Path(checkpoint).resolve()),
                "n_test": len(test_x),
                "dtype": results[0]["dtype"],
                "methods": method_list,
                "union": results[0]["union"],
                "pgd_steps": pgd_steps,
                "pgd_restarts": pgd_restarts,
            },
        )
    if as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, sort_keys=True))
        return
    for e, res in zip(eps_list, results):
        click.echo(
            f"{checkpoint}: {cfg.get('method')} {cfg.get('model')} on {cfg['dataset']}, "
            f"{res['n']} test samples, eps = {e:g}"
        )
        rows = [
            ("clean error", res["clean_err"]),
            (f"PGD error ({pgd_steps} steps x {pgd_restarts})", res["pgd_err"]),
        ]
        rows += [(f"verified error, {m}", res[metric_key(m)]) for m in method_list]
        rows.append(
            (
                f"verified error (union of {', '.join(res['union'])})"
                if res["union"]
                else "verified error (no method)",
                res["verified_err"],
            )
        )
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            click.echo(f"  {name:<{width}}  {100 * value:6.2f} %")
    if out is not None:
        click.echo(f"wrote {out}", err=True)


COMMANDS = [train, certify]

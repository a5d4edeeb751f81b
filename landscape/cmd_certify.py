"""``landscape certify``: clean, PGD and verified error of a checkpoint on its dataset's test
set, and with ``--complete`` every sample decided exactly (:mod:`landscape.complete`).

``landscape certify runs/ibp/checkpoint.pt --eps 0.1 --json`` prints the errors per method and
their union; ``--attack autoattack`` adds that attack beside its PGD
(:mod:`landscape.standard_attacks`). The command is registered with ``train`` in
:mod:`landscape.cmd_train`.

Every bad value is reported before any work starts, as one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from common.names import CERTIFY_METHODS


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


@dataclasses.dataclass(frozen=True)
class CertifyArgs:
    """The ``certify`` command's options as click passes them (see its ``--help``)."""

    checkpoint: str
    eps: str | None
    methods: str
    pgd_steps: int
    pgd_restarts: int
    test_size: int | None
    batch_size: int
    data_dir: str | None
    download: bool
    device: str
    seed: int
    out: str | None
    double: bool
    compile: bool
    named_dataset: str | None
    trust_code: bool
    as_json: bool
    complete: bool
    time_limit: float
    jobs: int
    margins: bool
    attack_name: str


def _check_certify_args(a: CertifyArgs) -> tuple[list[str], list[float] | None]:
    """Every bad option reported as one line before any work; the methods and radii asked for
    (None: the checkpoint's eps_train)."""
    from train.evaluate import verifier

    method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in method_list:
        try:
            verifier(m)
        except ValueError as exc:
            raise click.ClickException(f"--methods: {exc}") from None
    if a.pgd_steps < 0 or a.pgd_restarts < 1:
        raise click.ClickException("--pgd-steps must be >= 0 and --pgd-restarts >= 1")
    if a.batch_size < 1:
        raise click.ClickException("--batch-size: must be >= 1")
    if a.test_size is not None and a.test_size < 1:
        raise click.ClickException("--test-size: must be >= 1")
    eps_list = None if a.eps is None else _parse_eps(a.eps)
    if a.compile:
        from bounds.compiled import check_cache

        check_cache()
    if a.out is not None:
        from landscape.certification import check_certify_out

        check_certify_out(a.out)  # before any work: a missing, read-only or wrong place fails now
    from landscape.complete import options_problem

    problem = options_problem(
        a.complete, a.time_limit, a.jobs, a.margins, a.attack_name, eps_list, a.out
    )
    if problem:
        raise click.ClickException(problem)
    return method_list, eps_list


def _load_for_certify(a: CertifyArgs) -> tuple[Any, dict[str, Any], Any, Any]:
    """The checkpoint's model and run config, its test set (the dataset's code imported only when
    trusted; the model must fit it) and the test inputs (float64 with ``--float64``)."""
    from train.checkpoint import check_fits, load_model
    from train.data import load_dataset
    from train.loop import resolve_device

    dev = resolve_device(a.device)
    model, ckpt = load_model(a.checkpoint, device=dev)
    cfg = ckpt["config"]
    from train.plugins import check_trusted

    check_trusted(
        cfg["dataset"],
        "dataset",
        f"checkpoint {a.checkpoint!r}",
        named=a.named_dataset,
        trust=a.trust_code,
    )
    data = load_dataset(
        cfg["dataset"],
        data_dir=a.data_dir or cfg.get("data_dir"),
        download=a.download,
        test_size=a.test_size,
        seed=a.seed,
    )
    check_fits(ckpt, data.spec, where=f"checkpoint {a.checkpoint!r}")
    test_x = data.test_x
    if a.double:
        model, test_x = model.double(), test_x.double()
    return model, cfg, data, test_x


def _certify_complete_cmd(
    a: CertifyArgs,
    model: Any,
    test_x: Any,
    data: Any,
    cfg: dict[str, Any],
    eps_list: list[float],
    method_list: list[str],
) -> None:
    """``--complete`` or another attack: :func:`landscape.certification.certify_complete`, its
    errors as one line."""
    from landscape.certification import certify_complete
    from train.config import run_domain

    try:
        certify_complete(
            model,
            test_x,
            data.test_y,
            eps_list[0] if len(eps_list) == 1 else None,
            cfg,
            checkpoint=a.checkpoint,
            methods=method_list,
            domain=run_domain(cfg, data.spec),
            attack_name=a.attack_name,
            pgd_steps=a.pgd_steps,
            pgd_restarts=a.pgd_restarts,
            seed=a.seed,
            complete=a.complete,
            time_limit=a.time_limit,
            jobs=a.jobs,
            margins=a.margins,
            batch_size=a.batch_size,
            out=a.out,
            as_json=a.as_json,
            double=a.double,
            test_size=a.test_size,
        )
    except (ValueError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None


def _print_certify_table(
    a: CertifyArgs,
    cfg: dict[str, Any],
    eps_list: list[float],
    results: list[dict[str, Any]],
    method_list: list[str],
) -> None:
    """One table per radius: clean, PGD and verified error per method and their union."""
    from train.evaluate import metric_key

    for e, res in zip(eps_list, results):
        click.echo(
            f"{a.checkpoint}: {cfg.get('method')} {cfg.get('model')} on {cfg['dataset']}, "
            f"{res['n']} test samples, eps = {e:g}"
        )
        rows = [
            ("clean error", res["clean_err"]),
            (f"PGD error ({a.pgd_steps} steps x {a.pgd_restarts})", res["pgd_err"]),
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
def certify(**options: Any) -> None:
    """Clean, PGD and verified error of a checkpoint on its dataset's test set."""
    from landscape.certification import certify_rows, write_certify_file
    from train.config import run_domain

    a = CertifyArgs(**options)
    method_list, eps_list = _check_certify_args(a)
    model, cfg, data, test_x = _load_for_certify(a)
    eps_list = [float(cfg.get("eps", 0.0))] if eps_list is None else eps_list
    if a.complete or a.attack_name != "pgd":
        _certify_complete_cmd(a, model, test_x, data, cfg, eps_list, method_list)
        return
    columns, results = certify_rows(
        model,
        test_x,
        data.test_y,
        eps_list,
        method_list,
        str(cfg.get("method")),
        pgd_steps=a.pgd_steps,
        pgd_restarts=a.pgd_restarts,
        batch_size=a.batch_size,
        domain=run_domain(cfg, data.spec),
        seed=a.seed,
        progress=not a.as_json,
        compile=a.compile,
    )
    for res in results:
        res["checkpoint"] = str(a.checkpoint)
        res["dtype"] = "float64" if a.double else "float32"
    if a.out is not None:
        write_certify_file(
            a.out,
            columns,
            {
                "method": cfg.get("method"),
                "dataset": cfg["dataset"],
                "model": cfg.get("model"),
                "eps": float(cfg.get("eps", 0.0)),
                "checkpoint": str(Path(a.checkpoint).resolve()),
                "n_test": len(test_x),
                "dtype": results[0]["dtype"],
                "methods": method_list,
                "union": results[0]["union"],
                "pgd_steps": a.pgd_steps,
                "pgd_restarts": a.pgd_restarts,
            },
        )
    if a.as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, sort_keys=True))
        return
    _print_certify_table(a, cfg, eps_list, results, method_list)
    if a.out is not None:
        click.echo(f"wrote {a.out}", err=True)

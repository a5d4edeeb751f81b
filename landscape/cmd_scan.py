"""``landscape scan CKPT``: scan a trained model's loss landscape into an HDF5 file.

Kinds: ``gradient`` (theta_t = theta - t lr g), ``random-1d`` / ``random-2d`` (filter-, layer- or
un-normalised random directions), ``interpolate`` (theta_1 + alpha (theta_2 - theta_1), with
``--to CKPT2``). ``--methods a,b,c`` scans several losses over the same points (``clean`` and
``pgd`` name those losses; any other name is a certified-training method). The defaults come
from the checkpoint: its training method, final eps, final beta and kappa, learning rate and
dataset. Re-running the same command on an existing file resumes it (only the NaN points are
computed); a file made with other arguments is refused and left as it is. Under
``torchrun --nproc-per-node K -m landscape.cli scan ...`` the points are split over K processes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import sys
import time
from typing import Any, Sequence

import click
import numpy as np

KINDS = ("gradient", "random-1d", "random-2d", "interpolate")
DEFAULT_POINTS = {"gradient": 10, "random-1d": 21, "random-2d": 21, "interpolate": 41}
DEFAULT_RANGE = {"random-1d": (-1.0, 1.0), "random-2d": (-1.0, 1.0), "interpolate": (-0.5, 1.5)}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_range(text: str | None, kind: str) -> tuple[float, float]:
    """``"a,b"`` -> (a, b) with a < b (default per kind)."""
    if text is None:
        return DEFAULT_RANGE.get(kind, (-1.0, 1.0))
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected two numbers 'a,b', got {text!r}", param_hint="--range") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise click.BadParameter(f"need finite a < b, got {text!r}", param_hint="--range")
    return lo, hi


def _loss_specs(methods: str | None, loss: str, cfg: dict[str, Any], eps: float, beta: float | None,
                kappa: float | None, slope: str | None, pgd_steps: int, fused: bool, seed: int,
                domain: Sequence[float]) -> list[Any]:
    from landscape.losses import LossSpec

    if methods is not None and loss != "certified":
        raise click.BadParameter("give either --loss clean|pgd or --methods, not both", param_hint="--methods")
    names = [m.strip() for m in methods.split(",")] if methods is not None else [cfg.get("method", "ibp")]
    if methods is None and loss != "certified":
        names = [loss]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise click.BadParameter(f"expected distinct comma-separated names, got {methods!r}", param_hint="--methods")
    specs = []
    for name in names:
        kind = name if name in ("clean", "pgd") else "certified"
        own = name == cfg.get("method")
        s_slope = slope if slope is not None else (cfg.get("slope") if own else None)
        s_beta = beta if beta is not None else float(cfg.get("beta_end", 1.0))
        if name == "tightest":
            s_beta, s_slope = 1.0, None if s_slope in (None, "tightest") else s_slope
        s_kappa = kappa if kappa is not None else float(cfg.get("kappa_end", 0.0))
        specs.append(LossSpec(kind=kind, method=name if kind == "certified" else "ibp", slope=s_slope, beta=s_beta,
                              kappa=s_kappa, eps=float(eps), domain=(float(domain[0]), float(domain[1])),
                              fused=bool(fused and kind == "certified"), pgd_steps=int(pgd_steps), seed=int(seed)))
    return specs


def _params_meta(model: Any) -> dict[str, Any]:
    from landscape.directions import named_params

    params = named_params(model)
    return {"param_names": [n for n, _ in params], "param_shapes": [list(p.shape) for _, p in params]}


def _check_output(out: str, kind: str, args: dict[str, Any]) -> None:
    """Refuse early: an existing file from other arguments, an unwritable place."""
    from landscape import store

    if os.path.isdir(out):
        raise click.BadParameter(f"{out} is a directory", param_hint="--out")
    if os.path.exists(out):
        store.open_scan(out, args=args, kind=kind)
        if not os.access(out, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(out)), os.W_OK):
            raise PermissionError(f"cannot write {out}: permission denied")
        return
    directory = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(directory, exist_ok=True)  # like `train --out` and `plot --out`
    except OSError as exc:
        raise PermissionError(f"cannot write {out}: cannot create directory {directory} ({exc.strerror})") from None
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {out}: directory {directory} is not writable")


@click.command("scan")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option("--kind", type=click.Choice(KINDS), default="gradient", show_default=True, help="What to scan.")
@click.option("--to", "to_checkpoint", type=click.Path(), default=None, help="Second checkpoint (interpolate).")
@click.option("--out", required=True, type=click.Path(), help="Results file (.h5); resumed if it exists.")
@click.option("--methods", default=None,
              help="Comma-separated losses scanned over the same points: training methods "
                   "(natural, ibp, crown-ibp, crown, cap, tightest) or clean, pgd; a gradient scan moves along the "
                   "first one's gradient. [default: the checkpoint's method]")
@click.option("--loss", type=click.Choice(["certified", "clean", "pgd"]), default="certified", show_default=True,
              help="Loss kind when --methods is not given.")
@click.option("--eps", type=float, default=None, help="Radius of the certified/PGD loss [default: the final training eps].")
@click.option("--beta", type=float, default=None, help="CROWN-IBP mixing weight [default: the final training beta].")
@click.option("--kappa", type=float, default=None, help="Clean-loss weight [default: the final training kappa].")
@click.option("--slope", default=None, help="Lower-slope policy [default: each method's own].")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Fixed samples the loss is computed on.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds samples, directions, random slopes.")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="Points per axis [gradient: 10 log-spaced t (plus 0 and 1); random: 21; interpolate: 41].")
@click.option("--range", "range_", default=None, help="'a,b' coefficient range [random: -1,1; interpolate: -0.5,1.5].")
@click.option("--t-min", type=float, default=0.5, show_default=True, help="Smallest t > 0 of the gradient scan.")
@click.option("--t-max", type=float, default=5.0, show_default=True, help="Largest t of the gradient scan.")
@click.option("--lr", type=float, default=None, help="Step scale of the gradient scan [default: the training lr].")
@click.option("--norm", type=click.Choice(["filter", "layer", "none"]), default="filter", show_default=True,
              help="Normalisation of random directions.")
@click.option("--keep-bias", is_flag=True, help="Also move biases along random directions (default: zeroed).")
@click.option("--hessian", is_flag=True, help="Also store the top Hessian eigenvalue of each loss at the checkpoint.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Gradient scans: sign changes (a_sign, sign_flip) of the bound coefficients.")
@click.option("--pgd-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="PGD steps of the pgd loss (recomputed at every point).")
@click.option("--fused", is_flag=True, help="Use the fused certified loss.")
@click.option("--batch-points", type=click.IntRange(min=1), default=None,
              help="Grid points per torch.func.vmap pass (clean loss only) [default: 16 on CUDA, 1 on CPU, "
                   "where vmap measured slower than a loop].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-dir", type=click.Path(), default=None, help="Dataset folder [default: the checkpoint's].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def scan(checkpoint: str, kind: str, to_checkpoint: str | None, out: str, methods: str | None, loss: str,
         eps: float | None, beta: float | None, kappa: float | None, slope: str | None, samples: int, split: str,
         seed: int, points: int | None, range_: str | None, t_min: float, t_max: float, lr: float | None,
         norm: str, keep_bias: bool, hessian: bool, metrics: bool, pgd_steps: int, fused: bool,
         batch_points: int | None, device: str, data_dir: str | None, quiet: bool) -> None:
    """Scan the loss landscape of CHECKPOINT into an HDF5 file (resumable)."""
    import torch

    from landscape import distributed, store
    from landscape import scans as S
    from landscape.directions import flatten, get_params, interpolation_direction, random_direction
    from landscape.losses import LossClosure, select_samples
    from train.checkpoint import load_model
    from train.data import load_dataset

    # -------------------------------------------------------------- arguments
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        raise click.BadParameter(f"eps must be a finite number >= 0, got {eps}", param_hint="--eps")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise click.BadParameter(f"lr must be a finite number > 0, got {lr}", param_hint="--lr")
    if kind == "interpolate" and to_checkpoint is None:
        raise click.UsageError("--kind interpolate needs --to CKPT2")
    if kind != "interpolate" and to_checkpoint is not None:
        raise click.UsageError("--to is only used with --kind interpolate")
    if slope is not None:
        from train.config import SLOPES

        if slope not in SLOPES:
            raise click.BadParameter(f"unknown slope {slope!r}; choose one of {', '.join(SLOPES)}", param_hint="--slope")
    lo, hi = parse_range(range_, kind)
    if batch_points is None:
        batch_points = 16 if str(device).startswith("cuda") else 1
    n_points = points if points is not None else DEFAULT_POINTS[kind]
    if kind == "gradient":
        t_values = S.default_t_values(t_min, t_max, n_points)
        coords: dict[str, np.ndarray] = {"t": t_values}
    elif kind == "random-2d":
        coords = {"x": S.grid_coords(lo, hi, n_points), "y": S.grid_coords(lo, hi, n_points)}
    else:
        coords = {"alpha" if kind == "interpolate" else "x": S.grid_coords(lo, hi, n_points)}

    ctx = distributed.init()
    try:
        torch.manual_seed(seed)
        model, ckpt = load_model(checkpoint, device=device)
        cfg = dict(ckpt.get("config") or {})
        model.eval()
        model2 = None
        if to_checkpoint is not None:
            model2, _ = load_model(to_checkpoint, device=device)
        from train.data import DATASETS

        dataset = cfg.get("dataset", "digits")
        domain = tuple(DATASETS[dataset].domain) if dataset in DATASETS else (0.0, 1.0)
        eps_used = float(cfg.get("eps", 0.0)) if eps is None else float(eps)
        specs = _loss_specs(methods, loss, cfg, eps_used, beta, kappa, slope, pgd_steps, fused, seed, domain)
        lr_used = float(cfg.get("lr", 1.0)) if lr is None else float(lr)
        labels = [s.label for s in specs]
        fields = list(S.GRADIENT_FIELDS) + (list(S.SIGN_FIELDS) if metrics else []) if kind == "gradient" else ["loss"]
        args = {
            "kind": kind,
            "checkpoint_sha256": file_sha256(checkpoint),
            "to_sha256": file_sha256(to_checkpoint) if to_checkpoint else None,
            "losses": [s.to_dict() for s in specs],
            "samples": samples, "split": split, "seed": seed,
            "data": {k: cfg.get(k) for k in ("dataset", "train_size", "test_size", "seed")},
            "coords": {k: [float(v) for v in c] for k, c in coords.items()},
            "lr": lr_used if kind == "gradient" else None,
            "norm": norm if kind.startswith("random") else None,
            "keep_bias": keep_bias if kind.startswith("random") else None,
            "metrics": metrics if kind == "gradient" else None,
            "hessian": hessian,
        }
        error = None
        if ctx.is_main:
            try:
                _check_output(out, kind, args)
            except (ValueError, OSError, click.ClickException) as exc:
                error = exc
        status = distributed.broadcast(ctx, None if error is None else str(error))
        if error is not None:
            raise error
        if status is not None:
            raise SystemExit(1)

        # -------------------------------------------------------------- data and losses
        data = load_dataset(dataset, data_dir=data_dir or cfg.get("data_dir"), train_size=cfg.get("train_size"),
                            test_size=cfg.get("test_size"), seed=int(cfg.get("seed", 0)))
        x, y = select_samples(data, samples, split, seed)
        x, y = x.to(device), y.to(device)
        closures = [LossClosure(model, x, y, s) for s in specs]

        # -------------------------------------------------------------- evaluator and stored arrays
        meta = _params_meta(model)
        arrays: dict[str, Any] = {}
        if kind == "gradient":
            point_metrics = S.sign_change_metrics(closures, labels) if metrics else None
            evaluator: Any = S.GradientEvaluator(model, closures, t_values, lr_used, labels=labels,
                                                 point_metrics=point_metrics,
                                                 point_fields=S.SIGN_FIELDS if metrics else ())
            arrays["gradient"] = (flatten(evaluator.direction).cpu().numpy().astype(np.float32), meta)
        elif kind.startswith("random"):
            gen = torch.Generator().manual_seed(seed)
            ignore = None if keep_bias else "biasbn"
            dirs = [random_direction(model, norm, ignore, generator=gen) for _ in coords]
            grid = np.stack(np.meshgrid(*coords.values(), indexing="ij"), axis=-1).reshape(-1, len(coords))
            evaluator = S.DirectionEvaluator(model, closures, dirs, grid, labels, vmap_batch=batch_points)
            for name, d in zip(coords, dirs):
                arrays[f"direction_{name}"] = (flatten(d).cpu().numpy().astype(np.float32), meta)
        else:
            theta1, theta2 = get_params(model), get_params(model2)
            if [t.shape for t in theta1] != [t.shape for t in theta2]:
                raise ValueError(f"{to_checkpoint} has another architecture than {checkpoint}; cannot interpolate")
            d = interpolation_direction(theta1, theta2)
            evaluator = S.DirectionEvaluator(model, closures, [d], coords["alpha"][:, None], labels,
                                             base=theta1, vmap_batch=batch_points)

        def summaries(scan_file: Any) -> dict[str, dict[str, Any]]:
            out_attrs: dict[str, dict[str, Any]] = {}
            if hessian:
                from landscape.curvature import top_hessian_eigenvalue

                for label, fn in zip(labels, closures):
                    out_attrs[label] = {"hessian_top_eig": top_hessian_eigenvalue(fn, model, seed=seed)[0]}
            if kind == "gradient":
                for label in labels:
                    out_attrs.setdefault(label, {})["loss0"] = evaluator.loss0[label]
            return out_attrs

        # -------------------------------------------------------------- file
        scan_file = None
        todo: Any = None
        if ctx.is_main:
            try:
                attrs = {
                    "toolkit_version": _toolkit_version(), "command": " ".join(["landscape", *sys.argv[1:]]),
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "checkpoint": os.path.abspath(checkpoint), "checkpoint_sha256": args["checkpoint_sha256"],
                    "to_checkpoint": os.path.abspath(to_checkpoint) if to_checkpoint else None,
                    "dataset": dataset, "model": (ckpt.get("model") or {}).get("name"),
                    "train_method": cfg.get("method"), "methods": labels, "eps": eps_used, "seed": seed,
                    "samples": samples, "split": split, "lr": lr_used if kind == "gradient" else None,
                    "norm": norm if kind.startswith("random") else None, "world_size": ctx.world,
                }
                scan_file, resumed = store.open_or_create_scan(out, kind=kind, args=args, coords=coords,
                                                               labels=labels, fields=fields, attrs=attrs, arrays=arrays)
                if resumed and kind.startswith("random"):
                    for name, (value, _) in arrays.items():
                        stored, _ = store.read_array(out, name)
                        if stored.shape != value.shape or not np.array_equal(stored, value):
                            raise ValueError(f"{out} holds other random directions than this seed gives; "
                                             "choose another --out or delete it")
                todo = scan_file.missing().tolist()
                status = None
            except (ValueError, OSError) as exc:
                status, error = str(exc), exc
            status = distributed.broadcast(ctx, (status, todo))
            if status[0] is not None:
                raise error  # type: ignore[misc]
        else:
            status = distributed.broadcast(ctx, None)
            if status[0] is not None:
                raise SystemExit(1)
            todo = status[1]
        n_total = int(np.prod([len(c) for c in coords.values()]))
        t0 = time.perf_counter()
        distributed.fill_scan_distributed(ctx, scan_file, evaluator, todo, progress=not quiet, summaries=summaries)
        seconds = time.perf_counter() - t0
        if ctx.is_main:
            parts = []
            for label in labels:
                lv = scan_file.label_attrs.get(label, {}).get("loss_variation")
                parts.append(f"{label}: loss variation {lv:.4g}" if lv is not None else label)
            click.echo(f"wrote {out}: {n_total} points ({len(todo)} computed now in {seconds:.2f} s); " + "; ".join(parts))
    finally:
        distributed.shutdown(ctx)


def _toolkit_version() -> str:
    from landscape import __version__

    return __version__


COMMANDS = [scan]

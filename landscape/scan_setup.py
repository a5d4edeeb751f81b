"""What a scan computes, built from a :class:`landscape.scan_runner.ScanRequest`: the model at
the checkpoint, the fixed batch, the losses, the evaluator of the kind, the arrays that repeat
the scan exactly and the arguments that identify it.

Every process of a torchrun group builds the same (all of it is seeded). The inputs (checkpoint,
data, the model fitting the data) are checked before rank 0 checks and creates the output's
place, and the output file itself is only created once the scan is ready to run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from landscape import distributed, store
from landscape.distributed import Context
from landscape.provenance import file_sha256

__all__ = ["PreparedScan", "prepare_scan", "scan_args", "check_output"]


@dataclass
class PreparedScan:
    """A scan ready to run: grid ``coords``, ``labels`` and ``fields`` of the results, the
    identifying ``args``, root ``attrs``, stored ``arrays`` (name -> (value, attrs)), the
    ``evaluator`` of the points and the per-label ``summaries`` computed once complete."""

    coords: dict[str, np.ndarray]
    labels: list[str]
    fields: list[str]
    args: dict[str, Any]
    attrs: dict[str, Any]
    arrays: dict[str, tuple[np.ndarray, dict[str, Any]]]
    evaluator: Callable[[Sequence[int]], list]
    summaries: Callable[[Any], Mapping[str, Mapping[str, Any]]]


def scan_args(request: Any, coords: Mapping[str, np.ndarray], specs: Sequence[Any], cfg: Mapping[str, Any],
              lr: float) -> dict[str, Any]:
    """The arguments that determine a scan's results (stored as ``args_json``; a resume with
    other ones is refused)."""
    kind = request.kind
    return {
        "kind": kind,
        "checkpoint_sha256": file_sha256(request.checkpoint),
        "to_sha256": file_sha256(request.to_checkpoint) if request.to_checkpoint else None,
        "losses": [s.to_dict() for s in specs],
        "samples": request.samples, "split": request.split, "seed": request.seed,
        "data": {k: cfg.get(k) for k in ("dataset", "train_size", "test_size", "seed")},
        "coords": {k: [float(v) for v in c] for k, c in coords.items()},
        "lr": lr if kind == "gradient" else None,
        "norm": request.norm if kind.startswith("random") else None,
        "keep_bias": request.keep_bias if kind.startswith("random") else None,
        "metrics": request.metrics if kind == "gradient" else None,
        "hessian": request.hessian,
    }


def check_output(out: str, kind: str, args: Mapping[str, Any]) -> None:
    """Refuse early: an existing file from other arguments, a folder, an unwritable place
    (the output's folder is created, like ``train --out`` and ``plot --out``)."""
    if os.path.isdir(out):
        raise ValueError(f"--out: {out} is a directory")
    if os.path.exists(out):
        store.open_scan(out, args=args, kind=kind)
        if not os.access(out, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(out)), os.W_OK):
            raise PermissionError(f"cannot write {out}: permission denied")
        return
    directory = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot write {out}: cannot create directory {directory} ({exc.strerror})") from None
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {out}: directory {directory} is not writable")


def _params_meta(model: Any) -> dict[str, Any]:
    from landscape.directions import named_params

    params = named_params(model)
    return {"param_names": [n for n, _ in params], "param_shapes": [list(p.shape) for _, p in params]}


def prepare_scan(request: Any, ctx: Context) -> PreparedScan:
    """Build the scan of ``request`` (already checked) in this process; see the module doc."""
    import torch

    from landscape import evaluators as E
    from landscape.directions import flatten, get_params, interpolation_direction, random_direction
    from landscape.scan_losses import LossClosure, select_samples
    from train.checkpoint import check_fits, load_model
    from train.config import run_domain
    from train.data import DATASETS, load_dataset

    kind, seed, device = request.kind, request.seed, request.device
    coords = request.coords()
    torch.manual_seed(seed)
    model, ckpt = load_model(request.checkpoint, device=device)
    cfg = dict(ckpt.get("config") or {})
    model.eval()
    model2 = load_model(request.to_checkpoint, device=device)[0] if request.to_checkpoint is not None else None
    dataset = cfg.get("dataset", "digits")
    domain = run_domain(cfg, DATASETS[dataset]) if dataset in DATASETS else (0.0, 1.0)
    eps = float(cfg.get("eps", 0.0)) if request.eps is None else float(request.eps)
    specs = request.loss_specs(cfg, eps, domain)
    lr = float(cfg.get("lr", 1.0)) if request.lr is None else float(request.lr)
    labels = [s.label for s in specs]
    if kind == "gradient":
        fields = [*E.GRADIENT_FIELDS, *(E.SIGN_FIELDS if request.metrics else ())]
    else:
        fields = ["loss"]
    args = scan_args(request, coords, specs, cfg, lr)

    data = request.data
    if data is None:
        data = load_dataset(dataset, data_dir=request.data_dir or cfg.get("data_dir"), download=request.download,
                            train_size=cfg.get("train_size"), test_size=cfg.get("test_size"),
                            seed=int(cfg.get("seed", 0)))
    check_fits(ckpt, data.spec, where=f"checkpoint {request.checkpoint!r}")

    error = None  # every input is checked: now rank 0 checks (and creates) the output's place
    if ctx.is_main:
        try:
            check_output(request.out, kind, args)
        except (ValueError, OSError) as exc:
            error = exc
    status = distributed.broadcast(ctx, None if error is None else str(error))
    if error is not None:
        raise error
    if status is not None:  # rank 0 refused the output and says so
        raise SystemExit(1)

    x, y = select_samples(data, request.samples, request.split, seed)
    x, y = x.to(device), y.to(device)
    closures = [LossClosure(model, x, y, s) for s in specs]

    batch_points = request.batch_points
    if batch_points is None:
        batch_points = 16 if str(device).startswith("cuda") else 1
    meta = _params_meta(model)
    arrays: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    if kind == "gradient":
        point_metrics = E.sign_change_metrics(closures, labels) if request.metrics else None
        evaluator: Any = E.GradientEvaluator(model, closures, coords["t"], lr, labels=labels,
                                             point_metrics=point_metrics,
                                             point_fields=E.SIGN_FIELDS if request.metrics else ())
        arrays["gradient"] = (flatten(evaluator.direction).cpu().numpy().astype(np.float32), meta)
    elif kind.startswith("random"):
        gen = torch.Generator().manual_seed(seed)
        ignore = None if request.keep_bias else "biasbn"
        dirs = [random_direction(model, request.norm, ignore, generator=gen) for _ in coords]
        grid = np.stack(np.meshgrid(*coords.values(), indexing="ij"), axis=-1).reshape(-1, len(coords))
        evaluator = E.DirectionEvaluator(model, closures, dirs, grid, labels, vmap_batch=batch_points)
        for name, d in zip(coords, dirs):
            arrays[f"direction_{name}"] = (flatten(d).cpu().numpy().astype(np.float32), meta)
    else:
        theta1, theta2 = get_params(model), get_params(model2)
        if [t.shape for t in theta1] != [t.shape for t in theta2]:
            raise ValueError(f"{request.to_checkpoint} has another architecture than {request.checkpoint}; "
                             "cannot interpolate")
        d = interpolation_direction(theta1, theta2)
        evaluator = E.DirectionEvaluator(model, closures, [d], coords["alpha"][:, None], labels,
                                         base=theta1, vmap_batch=batch_points)

    def summaries(scan_file: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if request.hessian:
            from landscape.curvature import top_hessian_eigenvalue

            for label, fn in zip(labels, closures):
                out[label] = {"hessian_top_eig": top_hessian_eigenvalue(fn, model, seed=seed)[0]}
        if kind == "gradient":
            for label in labels:
                out.setdefault(label, {})["loss0"] = evaluator.loss0[label]
        return out

    attrs = {
        "checkpoint": os.path.abspath(request.checkpoint), "checkpoint_sha256": args["checkpoint_sha256"],
        "to_checkpoint": os.path.abspath(request.to_checkpoint) if request.to_checkpoint else None,
        "dataset": dataset, "model": (ckpt.get("model") or {}).get("name"),
        "train_method": cfg.get("method"), "methods": labels, "eps": eps, "seed": seed,
        "samples": request.samples, "split": request.split, "lr": lr if kind == "gradient" else None,
        "norm": request.norm if kind.startswith("random") else None,
    }
    return PreparedScan(coords, labels, fields, args, attrs, arrays, evaluator, summaries)

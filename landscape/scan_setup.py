"""What a scan computes, built from a :class:`landscape.scan_runner.ScanRequest`: the model at
the checkpoint, the fixed batch, the losses, the evaluator of the kind, the arrays that repeat
the scan exactly and the arguments that identify it. A PCA scan also loads the run's trajectory
(:mod:`landscape.trajectory`); a Hessian scan has no grid and one record per loss
(:mod:`landscape.spectrum`).

Every process of a torchrun group builds the same (all of it is seeded). The inputs (checkpoint,
data, the model fitting the data) are checked before rank 0 checks and creates the output's
place, and the output file itself is only created once the scan is ready to run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import store
from landscape import distributed
from landscape.distributed import Context
from landscape.provenance import file_sha256

__all__ = ["PreparedScan", "prepare_scan", "scan_args", "check_output"]


@dataclass
class PreparedScan:
    """A scan ready to run: grid ``coords``, ``labels`` and ``fields`` of the results, the
    identifying ``args``, root ``attrs``, stored ``arrays`` (name -> (value, attrs)), the
    ``evaluator`` of the points, the per-label ``summaries`` computed once complete and the
    names of the per-label arrays a point sets (``label_arrays``)."""

    coords: dict[str, np.ndarray]
    labels: list[str]
    fields: list[str]
    args: dict[str, Any]
    attrs: dict[str, Any]
    arrays: dict[str, tuple[np.ndarray, dict[str, Any]]]
    evaluator: Callable[[Sequence[int]], list]
    summaries: Callable[[Any], Mapping[str, Mapping[str, Any]]]
    label_arrays: Sequence[str] = ()


def scan_args(
    request: Any,
    coords: Mapping[str, np.ndarray],
    specs: Sequence[Any],
    cfg: Mapping[str, Any],
    lr: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The arguments that determine a scan's results (stored as ``args_json``; a resume with
    other ones is refused); ``extra``: those of the newer kinds (PCA, hessian), whose keys the
    older kinds' files do not have."""
    kind = request.kind
    return {
        "kind": kind,
        "checkpoint_sha256": file_sha256(request.checkpoint),
        "to_sha256": file_sha256(request.to_checkpoint) if request.to_checkpoint else None,
        "losses": [s.to_dict() for s in specs],
        "samples": request.samples,
        "split": request.split,
        "seed": request.seed,
        "data": {k: cfg.get(k) for k in ("dataset", "train_size", "test_size", "seed")},
        "coords": {k: [float(v) for v in c] for k, c in coords.items()},
        "lr": lr if kind == "gradient" else None,
        "norm": request.norm if kind.startswith("random") else None,
        "keep_bias": request.moves_bias() if kind.startswith("random") else None,
        "metrics": request.metrics if kind == "gradient" else None,
        "hessian": "lanczos-magnitude" if request.hessian else False,
        **({"batch_size": int(request.batch_size)} if request.batch_size is not None else {}),
        **dict(extra or {}),
    }


def check_output(out: str, kind: str, args: Mapping[str, Any]) -> None:
    """Refuse early: an existing file from other arguments, a folder, an unwritable place
    (the output's folder is created, like ``train --out`` and ``plot --out``)."""
    if os.path.isdir(out):
        raise ValueError(f"--out: {out} is a directory")
    if os.path.exists(out):
        store.open_scan(out, args=args, kind=kind)
        if not os.access(out, os.W_OK) or not os.access(
            os.path.dirname(os.path.abspath(out)), os.W_OK
        ):
            raise PermissionError(f"cannot write {out}: permission denied")
        return
    directory = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"cannot write {out}: cannot create directory {directory} ({exc.strerror})"
        ) from None
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {out}: directory {directory} is not writable")


def nice_range(lo: float, hi: float, digits: int = 3) -> tuple[float, float]:
    """``[lo, hi]`` widened outwards to ``digits`` significant digits of its span, so that a range
    computed from floats (a trajectory's) is the same number whatever the last bits were."""
    span = hi - lo
    if not span > 0:
        return float(lo), float(hi)
    q = 10.0 ** (math.floor(math.log10(span)) - digits + 1)
    return float(math.floor(lo / q) * q), float(math.ceil(hi / q) * q)


def _pca(
    request: Any, model: Any, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any], list, dict, dict]:
    """The PCA plane of the run's trajectory ending at the scanned checkpoint: the grid, the
    arguments and attributes it adds, the two directions (on the model's device and dtype) and
    the stored arrays."""
    from common.tensors import flatten
    from landscape.directions import named_params
    from landscape.trajectory import default_range, load_trajectory, pca_directions

    traj = load_trajectory(request.trajectory or request.checkpoint, final=request.checkpoint)
    keep = request.moves_bias()
    pca = pca_directions(
        traj.params, traj.final, center=request.center, ignore=None if keep else "biasbn", seed=seed
    )
    coords = request.coords([nice_range(*r) for r in default_range(pca.path)])
    extra = {
        "trajectory_sha256": [file_sha256(p) for p in traj.paths],
        "center": bool(request.center),
        "keep_bias": keep,
    }
    ratios = [float(v) for v in pca.explained_variance_ratio]
    attrs = {
        "explained_variance": ratios,
        "explained_variance_ratio": ratios,
        "center": bool(request.center),
        "keep_bias": keep,
        "trajectory_checkpoints": len(traj.paths),
    }
    params = [p for _, p in named_params(model)]
    dirs = [
        [t.to(device=p.device, dtype=p.dtype) for t, p in zip(d, params)] for d in pca.directions
    ]
    meta = _params_meta(model)
    arrays = {
        f"direction_{name}": (flatten(d).cpu().numpy().astype(np.float32), meta)
        for name, d in zip("xy", dirs)
    }
    arrays["trajectory"] = (
        pca.path.astype(np.float32),
        {
            "dims": ["x", "y"],
            "checkpoints": [os.path.abspath(p) for p in traj.paths],
            "epochs": traj.epochs,
            "steps": traj.steps,
        },
    )
    return coords, extra, dirs, attrs, arrays


def _params_meta(model: Any) -> dict[str, Any]:
    from landscape.directions import named_params

    params = named_params(model)
    return {
        "param_names": [n for n, _ in params],
        "param_shapes": [list(p.shape) for _, p in params],
    }


def prepare_scan(request: Any, ctx: Context) -> PreparedScan:
    """Build the scan of ``request`` (already checked) in this process; see the module doc."""
    import torch

    from common.tensors import flatten
    from landscape import evaluators as E
    from landscape.directions import (
        batchnorm_buffer_path,
        get_params,
        interpolation_direction,
        random_direction,
    )
    from landscape.scan_losses import make_closure, select_samples
    from train.checkpoint import check_fits, load_model
    from train.config import run_domain
    from train.data import load_dataset

    kind, seed, device = request.kind, request.seed, request.device
    torch.manual_seed(seed)
    model, ckpt = load_model(request.checkpoint, device=device)
    cfg = dict(ckpt.get("config") or {})
    if (
        request.data is None
    ):  # before any work: the checkpoint's dataset code runs only when asked for
        from train.plugins import check_trusted

        check_trusted(
            cfg.get("dataset", "digits"),
            "dataset",
            f"checkpoint {request.checkpoint!r}",
            named=request.dataset,
            trust=request.trust_code,
        )
    model.eval()
    extra: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    arrays: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    if kind == "pca":
        coords, extra, pca_dirs, attrs, arrays = _pca(request, model, seed)
    else:
        coords = request.coords()
    if kind == "hessian":
        from landscape.spectrum import SpectrumOptions

        options = SpectrumOptions(
            **{k: v for k, v in request.spectrum_options().items() if v is not None}
        )
        options = options.resolved(
            sum(int(np.prod(s)) for s in _params_meta(model)["param_shapes"])
        )
        extra = {"spectrum": options.to_dict()}
        attrs = {f"hessian_{k}": v for k, v in options.to_dict().items()}
    model2 = (
        load_model(request.to_checkpoint, device=device)[0]
        if request.to_checkpoint is not None
        else None
    )
    if model2 is not None and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        extra = {**extra, "batchnorm_buffers": "interpolated"}
    dataset = cfg.get("dataset", "digits")
    data = request.data
    if data is None:
        data = load_dataset(
            dataset,
            data_dir=request.data_dir or cfg.get("data_dir"),
            download=request.download,
            train_size=cfg.get("train_size"),
            test_size=cfg.get("test_size"),
            seed=int(cfg.get("seed", 0)),
        )
    domain = run_domain(cfg, data.spec)  # the dataset's own range, a user dataset's too
    eps = float(cfg.get("eps", 0.0)) if request.eps is None else float(request.eps)
    specs = request.loss_specs(cfg, eps, domain)
    lr = float(cfg.get("lr", 1.0)) if request.lr is None else float(request.lr)
    labels = [s.label for s in specs]
    direction_from = request.direction_from
    if direction_from is not None and direction_from not in labels:
        raise ValueError(
            f"--direction-from: {direction_from!r} is not one of the scanned losses ({', '.join(labels)})"
        )
    if (
        kind == "gradient" and len(labels) > 1
    ):  # one loss: its own gradient either way (and files stay as before)
        extra = {
            **extra,
            "direction": "own" if direction_from is None else f"shared:{direction_from}",
        }
    if kind == "gradient":
        fields = [*E.GRADIENT_FIELDS, *(E.SIGN_FIELDS if request.metrics else ())]
    else:
        fields = ["loss", *(request.fields or ())]
    if request.fields:
        extra = {
            **extra,
            "fields": list(request.fields),
            "verify_methods": list(request.verify_methods),
            "pgd_steps": int(request.pgd_steps),
        }
    n_split = len(getattr(data, f"{request.split}_y"))
    if (
        request.samples != "all" and request.samples > n_split
    ):  # record what is used, not what was asked for
        request.samples = n_split
    args = scan_args(request, coords, specs, cfg, lr, extra)

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
    closures = [
        make_closure(model, x, y, s, batch_size=request.batch_size, compile=request.compile)
        for s in specs
    ]

    batch_points = request.batch_points
    if batch_points is None:
        batch_points = 16 if str(device).startswith("cuda") else 1
    meta = _params_meta(model)
    label_arrays: Sequence[str] = ()
    errors = None
    if request.fields:
        errors = E.error_metrics(
            x,
            y,
            eps,
            request.fields,
            request.verify_methods,
            pgd_steps=request.pgd_steps,
            domain=domain,
            seed=seed,
            batch_size=int(request.batch_size or 256),
        )
    if kind == "gradient":
        point_metrics = E.sign_change_metrics(closures, labels) if request.metrics else None
        own = direction_from is None
        evaluator: Any = E.GradientEvaluator(
            model,
            closures,
            coords["t"],
            lr,
            labels=labels,
            point_metrics=point_metrics,
            point_fields=E.SIGN_FIELDS if request.metrics else (),
            own_direction=own,
        )
        if not own:
            evaluator.set_direction(direction_from)
        first = labels[0] if own else direction_from
        arrays["gradient"] = (
            flatten(evaluator.directions[first]).cpu().numpy().astype(np.float32),
            {**meta, "label": first},
        )
        if own:
            for label in labels[1:]:
                arrays[f"gradient_{label}"] = (
                    flatten(evaluator.directions[label]).cpu().numpy().astype(np.float32),
                    {**meta, "label": label},
                )
    elif kind.startswith("random"):
        gen = torch.Generator().manual_seed(seed)
        ignore = None if request.moves_bias() else "biasbn"
        dirs = [random_direction(model, request.norm, ignore, generator=gen) for _ in coords]
        grid = np.stack(np.meshgrid(*coords.values(), indexing="ij"), axis=-1).reshape(
            -1, len(coords)
        )
        evaluator = E.DirectionEvaluator(
            model, closures, dirs, grid, labels, vmap_batch=batch_points, point_values=errors
        )
        for name, d in zip(coords, dirs):
            arrays[f"direction_{name}"] = (flatten(d).cpu().numpy().astype(np.float32), meta)
    elif kind == "pca":
        grid = np.stack(np.meshgrid(*coords.values(), indexing="ij"), axis=-1).reshape(-1, 2)
        evaluator = E.DirectionEvaluator(
            model, closures, pca_dirs, grid, labels, vmap_batch=batch_points, point_values=errors
        )
    elif kind == "hessian":
        from landscape.spectrum import LABEL_ARRAYS, SpectrumEvaluator, layer_arrays

        evaluator = SpectrumEvaluator(model, closures, labels, options, seed=seed)
        label_arrays = [*LABEL_ARRAYS, *(layer_arrays(model) if options.layers else ())]
    else:
        theta1, theta2 = get_params(model), get_params(model2)
        if [t.shape for t in theta1] != [t.shape for t in theta2]:
            raise ValueError(
                f"{request.to_checkpoint} has another architecture than {request.checkpoint}; "
                "cannot interpolate"
            )
        d = interpolation_direction(theta1, theta2)
        buffers = batchnorm_buffer_path(model, model2)  # BatchNorm statistics move with the weights
        evaluator = E.DirectionEvaluator(
            model,
            closures,
            [d],
            coords["alpha"][:, None],
            labels,
            base=theta1,
            vmap_batch=batch_points,
            buffer_path=buffers,
            point_values=errors,
        )

    def summaries(scan_file: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if request.hessian:
            from landscape.hessian import top_eigenvalues

            for label, fn in zip(labels, closures):
                top = top_eigenvalues(fn, model, k=1, seed=seed, which="magnitude")
                out[label] = {"hessian_top_eig": float(top[0])}
        if kind == "gradient":
            for label in labels:
                out.setdefault(label, {})["loss0"] = evaluator.loss0[label]
        return out

    attrs = {
        **attrs,
        "checkpoint": os.path.abspath(request.checkpoint),
        "checkpoint_sha256": args["checkpoint_sha256"],
        "to_checkpoint": os.path.abspath(request.to_checkpoint) if request.to_checkpoint else None,
        "dataset": dataset,
        "model": (ckpt.get("model") or {}).get("name"),
        "train_method": cfg.get("method"),
        "methods": labels,
        "eps": eps,
        "seed": seed,
        "samples": request.samples,
        "split": request.split,
        "lr": lr if kind == "gradient" else None,
        "norm": request.norm if kind.startswith("random") else None,
        **(
            {"direction_from": "own" if direction_from is None else direction_from}
            if kind == "gradient"
            else {}
        ),
    }
    return PreparedScan(
        coords, labels, fields, args, attrs, arrays, evaluator, summaries, label_arrays
    )

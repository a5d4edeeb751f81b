"""What a scan computes, built from a :class:`landscape.scan_request.ScanRequest`, the same way
for every kind: the model at the checkpoint, the kind's plan (:mod:`landscape.scan_kinds`), the
data, the losses over a fixed batch, the kind's evaluator, the arrays that repeat the scan
exactly and the arguments that identify it.

Every process of a torchrun group builds the same (all of it is seeded). The inputs (checkpoint,
data, the model fitting the data) are checked before rank 0 checks and creates the output's
place, and the output file itself is only created once the scan is ready to run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from landscape import distributed, store
from landscape.distributed import Context
from landscape.provenance import file_sha256
from landscape.scan_kinds.base import (
    Arrays,
    Built,
    KindInputs,
    KindPlan,
    KindRunner,
    params_meta,
    runner,
)

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["PreparedScan", "prepare_scan", "scan_args", "check_output"]


@dataclass
class PreparedScan:
    """A scan ready to run: grid ``coords`` (axis -> ``[n]``), ``labels`` and ``fields`` of the
    results, the identifying ``args``, root ``attrs``, stored ``arrays`` (name -> (value,
    attrs)), the ``evaluator`` of the points, the per-label ``summaries`` computed once
    complete, the names of the per-label arrays a point sets (``label_arrays``) and the
    ``kind`` that holds a resumed file to this scan (:meth:`KindRunner.resumes`)."""

    coords: dict[str, np.ndarray]
    labels: list[str]
    fields: list[str]
    args: dict[str, Any]
    attrs: dict[str, Any]
    arrays: Arrays
    evaluator: Callable[[Sequence[int]], list]
    summaries: Callable[[Any], Mapping[str, Mapping[str, Any]]]
    label_arrays: Sequence[str]
    kind: KindRunner


def scan_args(
    request: ScanRequest,
    kind: KindRunner,
    plan: KindPlan,
    specs: Sequence[Any],
    cfg: Mapping[str, Any],
    lr: float,
) -> dict[str, Any]:
    """The arguments that determine a scan's results (stored as ``args_json``; a resume with
    other ones is refused): the common ones, then the kind's (:meth:`KindRunner.args`, whose
    keys the older kinds' files keep as None) and its plan's, then the ``--fields`` options."""
    labels = [s.label for s in specs]
    fields = {
        "fields": list(request.fields or ()),
        "verify_methods": list(request.verify_methods),
        "pgd_steps": int(request.pgd_steps),
    }
    return {
        "kind": request.kind,
        "checkpoint_sha256": file_sha256(request.checkpoint),
        "to_sha256": file_sha256(request.to_checkpoint) if request.to_checkpoint else None,
        "losses": [s.to_dict() for s in specs],
        "samples": request.samples,
        "split": request.split,
        "seed": request.seed,
        "data": {k: cfg.get(k) for k in ("dataset", "train_size", "test_size", "seed")},
        "coords": {k: [float(v) for v in c] for k, c in plan.coords.items()},
        **kind.args(request, lr, labels),
        "hessian": "lanczos-magnitude" if request.hessian else False,
        **({"batch_size": int(request.batch_size)} if request.batch_size is not None else {}),
        **plan.args,
        **(fields if request.fields else {}),
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


def _claim_output(request: ScanRequest, args: Mapping[str, Any], ctx: Context) -> None:
    """Every input is checked: now rank 0 checks (and creates) the output's place, and every
    rank stops when it refuses."""
    error = None
    if ctx.is_main:
        try:
            check_output(request.out, request.kind, args)
        except (ValueError, OSError) as exc:
            error = exc
    status = distributed.broadcast(ctx, None if error is None else str(error))
    if error is not None:
        raise error
    if status is not None:  # rank 0 refused the output and says so
        raise SystemExit(1)


def _load_checkpoint(request: ScanRequest) -> tuple[torch.nn.Module, dict, dict[str, Any]]:
    """The model (in eval mode), the checkpoint and its config. The checkpoint's dataset code
    runs only when asked for, checked before any work."""
    from train.checkpoint import load_model

    model, ckpt = load_model(request.checkpoint, device=request.device)
    cfg = dict(ckpt.get("config") or {})
    if request.data is None:
        from train.plugins import check_trusted

        check_trusted(
            cfg.get("dataset", "digits"),
            "dataset",
            f"checkpoint {request.checkpoint!r}",
            named=request.dataset,
            trust=request.trust_code,
        )
    model.eval()
    return model, ckpt, cfg


def _load_data(request: ScanRequest, cfg: Mapping[str, Any]) -> Any:
    """The request's dataset, or the checkpoint's (its folder, subset sizes and seed)."""
    from train.data import load_dataset

    if request.data is not None:
        return request.data
    return load_dataset(
        cfg.get("dataset", "digits"),
        data_dir=request.data_dir or cfg.get("data_dir"),
        download=request.download,
        train_size=cfg.get("train_size"),
        test_size=cfg.get("test_size"),
        seed=int(cfg.get("seed", 0)),
    )


def _root_attrs(
    request: ScanRequest, ckpt: Mapping[str, Any], cfg: Mapping[str, Any], sha256: str
) -> dict[str, Any]:
    """The root attributes every kind writes (the kind adds its own)."""
    return {
        "checkpoint": os.path.abspath(request.checkpoint),
        "checkpoint_sha256": sha256,
        "to_checkpoint": os.path.abspath(request.to_checkpoint) if request.to_checkpoint else None,
        "dataset": cfg.get("dataset", "digits"),
        "model": (ckpt.get("model") or {}).get("name"),
        "train_method": cfg.get("method"),
    }


def _summaries(
    request: ScanRequest, kind: KindRunner, inputs: KindInputs, built: Built
) -> Callable[[Any], dict[str, dict[str, Any]]]:
    """The per-label summaries of a complete scan: ``--hessian``'s top eigenvalue, then the
    kind's own (computed once, when the file is complete)."""

    def summaries(scan_file: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if request.hessian:
            from landscape.hessian import top_eigenvalues

            for label, fn in zip(inputs.labels, inputs.closures):
                top = top_eigenvalues(fn, inputs.model, k=1, seed=request.seed, which="magnitude")
                out[label] = {"hessian_top_eig": float(top[0])}
        for label, values in kind.summaries(built, inputs.labels).items():
            out.setdefault(label, {}).update(values)
        return out

    return summaries


def prepare_scan(request: ScanRequest, ctx: Context) -> PreparedScan:
    """Build the scan of ``request`` (already checked) in this process; see the module doc."""
    import torch

    from landscape.evaluators import error_metrics
    from landscape.scan_losses import make_closure, select_samples
    from train.checkpoint import check_fits
    from train.config import run_domain

    kind, seed, device = runner(request.kind), request.seed, request.device
    torch.manual_seed(seed)
    model, ckpt, cfg = _load_checkpoint(request)
    plan = kind.plan(request, model)
    data = _load_data(request, cfg)
    domain = run_domain(cfg, data.spec)  # the dataset's own range, a user dataset's too
    eps = float(cfg.get("eps", 0.0)) if request.eps is None else float(request.eps)
    specs = request.loss_specs(cfg, eps, domain)
    lr = float(cfg.get("lr", 1.0)) if request.lr is None else float(request.lr)
    n_split = len(getattr(data, f"{request.split}_y"))
    if request.samples != "all" and request.samples > n_split:  # what is used, not asked for
        request.samples = n_split
    args = scan_args(request, kind, plan, specs, cfg, lr)
    check_fits(ckpt, data.spec, where=f"checkpoint {request.checkpoint!r}")
    _claim_output(request, args, ctx)

    x, y = select_samples(data, request.samples, request.split, seed)
    x, y = x.to(device), y.to(device)
    closures = [
        make_closure(model, x, y, s, batch_size=request.batch_size, compile=request.compile)
        for s in specs
    ]
    batch_points = request.batch_points
    if batch_points is None:
        batch_points = 16 if str(device).startswith("cuda") else 1
    errors = None
    if request.fields:
        errors = error_metrics(
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
    labels = [s.label for s in specs]
    inputs = KindInputs(
        request, plan, model, closures, labels, lr, errors, batch_points, params_meta(model)
    )
    built = kind.build(inputs)
    attrs = {
        **plan.attrs,
        **_root_attrs(request, ckpt, cfg, args["checkpoint_sha256"]),
        "methods": labels,
        "eps": eps,
        "seed": seed,
        "samples": request.samples,
        "split": request.split,
        **kind.attrs(request, lr, labels),
    }
    return PreparedScan(
        plan.coords,
        labels,
        kind.fields(request),
        args,
        attrs,
        {**plan.arrays, **built.arrays},
        built.evaluator,
        _summaries(request, kind, inputs, built),
        built.label_arrays,
        kind,
    )

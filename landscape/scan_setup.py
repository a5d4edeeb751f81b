"""What a scan computes, built from a :class:`landscape.scan_request.ScanRequest`, the same way
for every kind: the model at the checkpoint and its data, the losses over a fixed batch, the
kind's plan and evaluator (:mod:`landscape.scan_kinds`), the arrays that repeat the scan
exactly, the arguments that identify it and the attributes that record it.

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

from common import store
from landscape import distributed
from landscape.distributed import Context
from landscape.provenance import file_sha256
from landscape.scan_kinds.base import (
    Arrays,
    Built,
    KindInputs,
    KindPlan,
    KindRunner,
)

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["PreparedScan", "prepare_scan", "describe", "check_output"]


@dataclass
class PreparedScan:
    """A scan ready to run: ``labels`` and ``fields`` of the results, the identifying ``args``,
    root ``attrs``, stored ``arrays`` (name -> (value, attrs)), the ``kind`` that holds a
    resumed file to this scan (:meth:`KindRunner.resumes`), what its evaluator was built from
    (``inputs``, with the kind's plan) and the evaluator itself (``built``)."""

    labels: list[str]
    fields: list[str]
    args: dict[str, Any]
    attrs: dict[str, Any]
    arrays: Arrays
    kind: KindRunner
    inputs: KindInputs
    built: Built

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """The grid: axis name -> ``[n]`` values (none for a scan without a grid)."""
        return self.inputs.plan.coords

    @property
    def evaluator(self) -> Callable[[Sequence[int]], list]:
        """Point indices -> one ``{label: {field: value}}`` per index."""
        return self.built.evaluator

    @property
    def label_arrays(self) -> Sequence[str]:
        """The names of the per-label arrays a point sets."""
        return self.built.label_arrays

    def summaries(self, scan_file: Any) -> dict[str, dict[str, Any]]:
        """The per-label summaries of the complete scan (computed once): ``--hessian``'s top
        eigenvalue, then the kind's own."""
        request, inputs = self.inputs.request, self.inputs
        out: dict[str, dict[str, Any]] = {}
        if request.hessian:
            from landscape.hessian import top_eigenvalues

            for label, fn in zip(inputs.labels, inputs.closures):
                top = top_eigenvalues(fn, inputs.model, k=1, seed=request.seed, which="magnitude")
                out[label] = {"hessian_top_eig": float(top[0])}
        for label, values in self.kind.summaries(self.built, inputs.labels).items():
            out.setdefault(label, {}).update(values)
        return out


def describe(
    request: ScanRequest,
    plan: KindPlan,
    specs: Sequence[Any],
    cfg: Mapping[str, Any],
    ckpt: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What identifies the scan and what its file records about it: the arguments that
    determine its results (stored as ``args_json``; a resume with other ones is refused: the
    common ones, the kind's, from its ``plan``, and the ``--fields`` options), and the root
    attributes every kind writes about its inputs and making (the kind's own are its plan's)."""
    from landscape.provenance import provenance

    fields = {
        "fields": list(request.fields or ()),
        "verify_methods": list(request.verify_methods),
        "pgd_steps": int(request.pgd_steps),
    }
    args = {
        "kind": request.kind,
        "checkpoint_sha256": file_sha256(request.checkpoint),
        "to_sha256": file_sha256(request.to_checkpoint) if request.to_checkpoint else None,
        "losses": [s.to_dict() for s in specs],
        "samples": request.samples,
        "split": request.split,
        "seed": request.seed,
        "data": {k: cfg.get(k) for k in ("dataset", "train_size", "test_size", "seed")},
        "coords": {k: [float(v) for v in c] for k, c in plan.coords.items()},
        "hessian": "lanczos-magnitude" if request.hessian else False,
        **({"batch_size": int(request.batch_size)} if request.batch_size is not None else {}),
        **plan.args,
        **(fields if request.fields else {}),
    }
    attrs = {
        **provenance(request.command),
        "checkpoint": os.path.abspath(request.checkpoint),
        "checkpoint_sha256": args["checkpoint_sha256"],
        "to_checkpoint": os.path.abspath(request.to_checkpoint) if request.to_checkpoint else None,
        "dataset": cfg.get("dataset", "digits"),
        "model": (ckpt.get("model") or {}).get("name"),
        "train_method": cfg.get("method"),
        "methods": [s.label for s in specs],
        "samples": request.samples,
        "split": request.split,
        "seed": request.seed,
    }
    return args, attrs


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


def _load(request: ScanRequest) -> tuple[torch.nn.Module, dict, dict[str, Any], Any]:
    """The model at the checkpoint (in eval mode), the checkpoint, its config and the data:
    the request's, or the checkpoint's dataset (its folder, subset sizes and seed), whose code
    runs only when asked for, checked before any work."""
    from train.checkpoint import load_model
    from train.data import load_dataset
    from train.plugins import check_trusted

    model, ckpt = load_model(request.checkpoint, device=request.device)
    cfg = dict(ckpt.get("config") or {})
    model.eval()
    if request.data is not None:
        return model, ckpt, cfg, request.data
    check_trusted(
        cfg.get("dataset", "digits"),
        "dataset",
        f"checkpoint {request.checkpoint!r}",
        named=request.dataset,
        trust=request.trust_code,
    )
    data = load_dataset(
        cfg.get("dataset", "digits"),
        data_dir=request.data_dir or cfg.get("data_dir"),
        download=request.download,
        train_size=cfg.get("train_size"),
        test_size=cfg.get("test_size"),
        seed=int(cfg.get("seed", 0)),
    )
    return model, ckpt, cfg, data


def prepare_scan(request: ScanRequest, kind: KindRunner, ctx: Context) -> PreparedScan:
    """Build the scan of ``request`` (already checked; ``kind``: its kind's computing half) in
    this process; see the module doc."""
    import torch

    from landscape.directions import params_meta
    from landscape.evaluators import error_metrics
    from landscape.scan_losses import make_closure, select_samples
    from train.checkpoint import check_fits
    from train.config import run_domain

    seed, device = request.seed, request.device
    torch.manual_seed(seed)
    model, ckpt, cfg, data = _load(request)
    domain = run_domain(cfg, data.spec)  # the dataset's own range, a user dataset's too
    eps = float(cfg.get("eps", 0.0)) if request.eps is None else float(request.eps)
    specs = request.loss_specs(cfg, eps, domain)
    lr = float(cfg.get("lr", 1.0)) if request.lr is None else float(request.lr)
    labels = [s.label for s in specs]
    plan = kind.plan(request, model, lr, labels)
    n_split = len(getattr(data, f"{request.split}_y"))
    if request.samples != "all" and request.samples > n_split:  # what is used, not asked for
        request.samples = n_split
    args, attrs = describe(request, plan, specs, cfg, ckpt)
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
    inputs = KindInputs(
        request, plan, model, closures, labels, lr, errors, batch_points, params_meta(model)
    )
    built = kind.build(inputs)
    attrs = {**attrs, **plan.attrs, "eps": eps}
    arrays = {**plan.arrays, **built.arrays}
    return PreparedScan(labels, plan.fields, args, attrs, arrays, kind, inputs, built)

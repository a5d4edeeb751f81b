"""Training checkpoints: saved atomically, loaded without unpickling arbitrary objects.

A checkpoint is a dict that ``torch.load(path, weights_only=True)`` can read (tensors, dicts,
lists, strings, numbers, None only)::

    format            "cert-landscape-checkpoint"       (marks the file as ours)
    format_version    1
    state_dict        the model's parameters and buffers
    model             the model description, everything to rebuild the architecture: for a zoo model
                      train.models.model_description(...) (version 1: name, options, input_shape,
                      n_classes, mean, std); for any other model (a model function FILE.py:function,
                      or a model passed to train.loop.train) its layer list (version 2,
                      train.usermodels: each layer's kind, sizes, conv arguments, Normalize mean/std)
    config            the run's TrainConfig.to_dict() (JSON-able)
    epoch, step       epochs and optimiser steps completed
    optimizer         optimizer.state_dict() or None
    rng               {"torch": uint8 tensor[, "cuda": [uint8 tensors]]}
    metrics, history  last epoch's metrics and the list of all epochs' metrics
    wall_time         training seconds so far
    versions          {"toolkit", "torch", "python"}
    created           ISO-8601 time

Files are serialised in memory, written to a temporary file in the same directory and moved
into place with ``os.replace``, so a crash leaves the old checkpoint or the new one, never half
of one; a temporary left by a killed writer is removed by the next save of the same file, a
full disk is one :class:`CheckpointWriteError`, and a checkpoint gets the mode of any new file
(the umask), like the results files. Every failure to load is a :class:`CheckpointError` (a
``ValueError``) naming the file; :func:`load_checkpoint` also checks the stored config and model
description are what this toolkit writes.

A checkpoint holds no code: :func:`load_model` rebuilds a model function's network from its
layer list, without importing the function. A model handed to :func:`save_checkpoint` with a
description that records no architecture (``{"name": "custom"}``, what ``train.loop.train``
passes for ``model=``) is described from the module itself; its input shape is the config's
dataset's when known and fitting (otherwise left None, and :func:`check_fits` tries the model on
the dataset's shape instead). The data are never stored: the config names the dataset, a dataset
function by its absolute path (see ``train.userdata``).
"""

from __future__ import annotations

import datetime as _dt
import errno
import io
import json
import os
import pickle
import platform
import secrets
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import names

FORMAT = "cert-landscape-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the disk is full); the old file is untouched."""

    def __str__(self) -> str:
        return str(self.strerror)


_STALE_SECONDS = 600.0


def versions() -> dict[str, str]:
    """``{"toolkit", "torch", "python"}`` version strings."""
    return {
        "toolkit": names.VERSION,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


def capture_rng() -> dict[str, Any]:
    """The global torch RNG states as tensors (CPU, and every CUDA device when available)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any] | None) -> None:
    """Restore states captured by :func:`capture_rng` (missing parts are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _plain(value: Any) -> Any:
    """JSON round trip: tuples -> lists, only plain types left."""
    return json.loads(json.dumps(value))


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_desc: Mapping[str, Any],
    config: Mapping[str, Any],
    epoch: int,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    rng: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    history: list[Mapping[str, float]] | None = None,
    wall_time: float = 0.0,
) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "input_shape" not in model_desc and "layers" not in model_desc:
        model_desc = describe_module(model, config.get("dataset"))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model": _plain(dict(model_desc)),
        "config": _plain(dict(config)),
        "epoch": int(epoch),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": dict(rng) if rng is not None else capture_rng(),
        "metrics": _plain(dict(metrics or {})),
        "history": _plain(list(history or [])),
        "wall_time": float(wall_time),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    buffer = io.BytesIO()
    torch.save(
        payload, buffer
    )  # in memory first: torch's writer hides a full disk in its own errors
    given, path = (
        path,
        Path(os.path.realpath(path)) if path.is_symlink() else path,
    )  # a link is written through
    _remove_stale(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CheckpointWriteError(
                errno.ENOSPC,
                f"cannot write {path}: the disk is full (no space left on "
                "device); free some space and run the command again",
            ) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return given


def describe_module(model: nn.Module, dataset: Any = None) -> dict[str, Any]:
    """The layer-list description of ``model`` (``train.usermodels.describe``), with the input
    shape of dataset ``dataset`` when this process knows it and the model takes it;
    ``{"name": "custom", "unrecorded": reason}`` for a model the bound engine cannot take."""
    from train.data import dataset_spec
    from train.usermodels import describe

    spec = dataset_spec(dataset) if isinstance(dataset, str) else None
    try:
        if spec is not None:
            try:
                return describe(model, spec.input_shape)
            except ValueError:
                pass  # trained on other data than the config names: check_fits will say so
        return describe(model)
    except ValueError as exc:
        return {"name": "custom", "unrecorded": str(exc)}


def _remove_stale(path: Path) -> None:
    """Delete temporaries ``.NAME.<pid>.<random>.tmp`` of ``path`` left by a process that is gone
    (killed mid-write); ones without a process id once older than ten minutes."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - tmp.stat().st_mtime <= _STALE_SECONDS:
            continue
        tmp.unlink(missing_ok=True)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory, not a file")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupt or not a PyTorch checkpoint file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{str(p)!r} is not a cert-landscape checkpoint: it holds objects that cannot be loaded safely "
            f"({_unsafe_reason(exc)})"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
    ) as exc:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or not a PyTorch file ({type(exc).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a cert-landscape checkpoint (it was written by another program)"
        )
    fv = ckpt.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int):
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt: its 'format_version' entry is {fv!r}, not a number"
        )
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(p)!r} has format version {ckpt.get('format_version')}, newer than "
            f"this toolkit reads ({FORMAT_VERSION})"
        )
    for key in ("state_dict", "model", "config", "epoch", "step"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(p)!r} is incomplete: it has no {key!r} entry")
    for key, kind in (
        ("state_dict", Mapping),
        ("model", Mapping),
        ("config", Mapping),
        ("epoch", int),
        ("step", int),
    ):
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise CheckpointError(
                f"checkpoint {str(p)!r} is corrupt: its {key!r} entry is a "
                f"{type(ckpt[key]).__name__}, not a {'dict' if kind is Mapping else 'number'}"
            )
    for key in ("dataset", "method", "model"):
        if not isinstance(ckpt["config"].get(key), str):
            raise CheckpointError(
                f"checkpoint {str(p)!r} is corrupt: its config has no {key!r} name"
            )
    bad = [k for k, v in ckpt["state_dict"].items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt: its state_dict entry {bad[0]!r} is a "
            f"{type(ckpt['state_dict'][bad[0]]).__name__}, not a tensor"
        )
    for key in ("eps", "lr", "beta_end", "kappa_end"):
        value = ckpt["config"].get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(
                f"checkpoint {str(p)!r} is corrupt: its config's {key!r} is {value!r}, not a number"
            )
    return ckpt


def _unsafe_reason(exc: BaseException) -> str:
    """The reason torch gives for refusing to unpickle, whole (e.g. ``Unsupported global: GLOBAL
    mod.Class was not an allowed global by default``), without its advice to allow-list it."""
    text = " ".join(str(exc).split())
    for marker in ("WeightsUnpickler error:", "Trying to load unsupported", "Unsupported"):
        if marker in text:
            reason = text[text.index(marker) :].removeprefix("WeightsUnpickler error:").strip()
            return reason.split(". Please use")[0].split(". Check the documentation")[0].rstrip(".")
    return text.split(". ")[0] or type(exc).__name__


def check_finite(state_dict: Mapping[str, torch.Tensor], where: str = "model") -> None:
    """Raise :class:`CheckpointError` naming the first tensor holding NaN or Inf."""
    for name, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where} has NaN or Inf values in {name!r}")


def load_state(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint"
) -> None:
    """``model.load_state_dict(strict=True)`` with a one-line error for a mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{k!r} has shape {tuple(state_dict[k].shape)}, the model wants {tuple(own[k].shape)}"
            )
        raise CheckpointError(f"{where} does not fit the model architecture: " + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)


def build_from_description(desc: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from a ``train.models.model_description`` dict."""
    from train import models

    try:
        return models.build_from_description(dict(desc))
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint model description is invalid ({exc})") from None


def check_fits(ckpt: Mapping[str, Any], spec: Any, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's model takes the dataset's inputs and
    gives its number of classes (``spec``: a :class:`train.data.DatasetSpec`)."""
    desc = ckpt.get("model") or {}
    shape, n = desc.get("input_shape"), desc.get("n_classes")
    if shape is None and desc.get("layers"):  # a layer list recorded without its input shape
        from train.usermodels import check_input

        try:
            check_input(build_from_description(desc), spec.input_shape, None, "model")
        except ValueError as exc:
            raise CheckpointError(
                f"{where} holds a model that does not take dataset {spec.name!r}'s inputs "
                f"{tuple(spec.input_shape)}: {exc}"
            ) from None
    if shape is not None and tuple(shape) != tuple(spec.input_shape):
        raise CheckpointError(
            f"{where} holds a model for inputs {tuple(shape)}, but dataset {spec.name!r} has "
            f"inputs {tuple(spec.input_shape)}"
        )
    if n is not None and int(n) != int(spec.n_classes):
        raise CheckpointError(
            f"{where} holds a model with {n} classes, but dataset {spec.name!r} has {spec.n_classes}"
        )


def load_model(
    source: str | os.PathLike | Mapping[str, Any], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (path or loaded dict) and load its weights.

    Returns ``(model, checkpoint)``. Raises :class:`CheckpointError` for an architecture
    mismatch or NaN/Inf weights.
    """
    ckpt = dict(source) if isinstance(source, Mapping) else load_checkpoint(source)
    where = f"checkpoint {str(source)!r}" if not isinstance(source, Mapping) else "checkpoint"
    check_finite(ckpt["state_dict"], where=where)
    model = build_from_description(ckpt["model"])
    load_state(model, ckpt["state_dict"], where=where)
    return model.to(device), ckpt

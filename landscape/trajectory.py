"""PCA directions of a training trajectory (Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets", section 7): the plane that best shows the path the optimiser took.

Given the parameters theta_1 .. theta_n of n checkpoints and the final ones theta_f, each
flattened to a vector of P entries (``model.named_parameters()`` order, as
:func:`common.tensors.flatten`), form the matrix::

    M = [theta_1 - theta_f; ...; theta_n - theta_f]          [n, P]

Like the paper's text, M is not centred further by default (``center=False``): the directions
are the top two right singular vectors of M itself, ``M = U diag(s) V^T``, ``d_k = V[:, k]``.
(The paper's reference code passes M to scikit-learn's PCA, which subtracts the row mean
first; ``center=True`` does that.) Then

- ``d_1``, ``d_2`` are orthonormal in the flattened space (unit L2 norm over all parameters,
  not filter-normalised);
- explained variance ratio ``r_k = s_k^2 / sum_j s_j^2 = s_k^2 / ||M||_F^2`` (of the matrix
  used, centred or not);
- the path: checkpoint i sits at ``(x_i, y_i) = (<m_i, d_1>, <m_i, d_2>)`` with
  ``m_i = theta_i - theta_f`` (never centred), i.e. at theta_f + x d_1 + y d_2 in the plane of
  the scan, and theta_f at (0, 0);
- each ``d_k`` is signed so that the path's coordinates along it sum to <= 0: the path runs
  towards +x and +y as it reaches theta_f.

If M has rank 1 (e.g. one checkpoint besides the final one), ``d_2`` is a seeded Gaussian
vector made orthogonal to ``d_1`` (and zero where ``ignore`` zeroes), with ratio 0.

The SVD goes through the n x n Gram matrix ``G = M M^T`` (float64, accumulated over blocks of
columns), so memory is that of M in the parameters' dtype plus O(n^2 + P).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.tensors import unflatten
from landscape.directions import named_params
from train.checkpoint import check_finite, load_checkpoint, load_model

__all__ = [
    "Trajectory",
    "TrajectoryPCA",
    "TRAJECTORY_PATTERNS",
    "run_checkpoints",
    "find_checkpoints",
    "load_trajectory",
    "pca_directions",
    "project",
    "default_range",
]

_BLOCK = 1 << 20  # columns per block of the Gram accumulation


@dataclass
class Trajectory:
    """Checkpoints of one run, sorted by (epoch, step); the final one is the last.

    ``params[i]``: theta_i as a list of tensors (``named_parameters()`` order, CPU);
    ``final``: theta_f (the same as ``params[-1]``); ``model``: the final checkpoint's model, on
    the CPU, holding theta_f; ``checkpoint``: the final checkpoint's dict."""

    paths: list[Path]
    epochs: list[int]
    steps: list[int]
    params: list[list[Tensor]]
    final: list[Tensor]
    model: nn.Module
    checkpoint: dict[str, Any]


@dataclass
class TrajectoryPCA:
    """``directions``: ``[d_1, d_2]``, each a list of tensors shaped like the parameters;
    ``explained_variance_ratio`` [2]; ``singular_values`` [2]; ``path`` [n, 2] (float64): the
    checkpoints' coordinates in the plane theta_f + x d_1 + y d_2; ``center``: whether M was
    centred."""

    directions: list[list[Tensor]]
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    path: np.ndarray
    center: bool


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


TRAJECTORY_PATTERNS: tuple[str, ...] = ("checkpoint_epoch*.pt", "checkpoint_step*.pt")
"""The checkpoints of a run that make its trajectory: one after every epoch, and those of
``train --checkpoint-every-steps`` (ordered by the (epoch, step) each records, not by name)."""


def run_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The :data:`TRAJECTORY_PATTERNS` files in ``folder``, sorted by name."""
    return sorted({p for pattern in TRAJECTORY_PATTERNS for p in Path(folder).glob(pattern)})


def find_checkpoints(
    source: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[list[Path], Path | None]:
    """The checkpoint files of a trajectory and its final checkpoint (None: the last by epoch).

    - a checkpoint file: the ``checkpoint_epoch*.pt`` and ``checkpoint_step*.pt`` beside it, and
      the file itself as final;
    - a run directory: those files in it; final: its ``checkpoint.pt`` if present;
    - a glob pattern (``runs/a/checkpoint_epoch*.pt``) or a list of files: those files.
    """
    if not isinstance(source, (str, os.PathLike)):
        files = [Path(p) for p in source]
        return files, None
    text = os.fspath(source)
    if _is_glob(text) and not os.path.exists(text):
        files = [Path(p) for p in sorted(glob.glob(text))]
        if not files:
            raise FileNotFoundError(f"no checkpoint matches {text!r}")
        return files, None
    path = Path(text)
    if path.is_dir():
        files = run_checkpoints(path)
        final = path / "checkpoint.pt"
        if not files and not final.exists():
            raise FileNotFoundError(
                f"{text} holds no checkpoint_epoch*.pt, checkpoint_step*.pt or checkpoint.pt"
            )
        return files, final if final.exists() else None
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {text!r} does not exist")
    return run_checkpoints(path.parent), path


def _describe(desc: dict[str, Any]) -> str:
    opts = desc.get("options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return f"{desc.get('name')!r} ({shown}; input {desc.get('input_shape')}, {desc.get('n_classes')} classes)"


def _order(ckpt: dict[str, Any]) -> tuple[int, int]:
    return int(ckpt["epoch"]), int(ckpt["step"])


def _check_architecture(
    path: Path, desc: dict[str, Any], final_path: Path, final_desc: dict[str, Any]
) -> None:
    if desc == final_desc:
        return
    keys = sorted(k for k in set(desc) | set(final_desc) if desc.get(k) != final_desc.get(k))
    raise ValueError(
        f"checkpoint {str(path)!r} holds a {_describe(desc)} model, but the final checkpoint {str(final_path)!r} "
        f"a {_describe(final_desc)} model (the descriptions differ in: {', '.join(keys)}); "
        "a trajectory needs one architecture"
    )


def _check_same_run(
    path: Path, cfg: dict[str, Any], final_path: Path, final_cfg: dict[str, Any]
) -> None:
    """Refuse a checkpoint of another run than the final one's: their configs differ in a field
    that decides what the run computes (``epochs`` and bookkeeping fields aside, so a resumed,
    extended run is still one run)."""
    from train.config import NON_IDENTITY_FIELDS

    keys = sorted(
        k
        for k in set(cfg) | set(final_cfg)
        if k not in NON_IDENTITY_FIELDS
        and k not in ("eps_start_epoch", "eps_ramp_epochs")
        and cfg.get(k) != final_cfg.get(k)
    )
    if keys:
        raise ValueError(
            f"checkpoint {str(path)!r} is from another run than the final checkpoint {str(final_path)!r} "
            f"(their configs differ in: {', '.join(keys)}); a PCA trajectory is one run's path"
        )


def load_trajectory(
    source: str | os.PathLike | Sequence[str | os.PathLike], final: str | os.PathLike | None = None
) -> Trajectory:
    """Load the checkpoints :func:`find_checkpoints` names (with ``train.checkpoint``), keep
    those up to the final one's (epoch, step), and sort them by (epoch, step), the final last.

    ``final``: the checkpoint that ends the trajectory (theta_f), e.g. the one a scan looks at;
    default: the one :func:`find_checkpoints` gives, else the last by (epoch, step).

    Refuses (``ValueError``) a checkpoint of another architecture or another run than the final
    one, and a trajectory without a checkpoint besides the final one.
    """
    files, final_path = find_checkpoints(source)
    if final is not None:
        final_path = Path(final)
        if not final_path.is_file():
            raise FileNotFoundError(f"final checkpoint {os.fspath(final)!r} does not exist")
    loaded = {}
    for p in [*files, *([final_path] if final_path is not None else [])]:
        key = p.resolve()
        if key not in loaded:
            ckpt = load_checkpoint(p)
            check_finite(ckpt["state_dict"], where=f"checkpoint {str(p)!r}")
            loaded[key] = (p, ckpt)
    if not loaded:
        raise FileNotFoundError("no checkpoint given")
    if final_path is None:
        final_key = max(loaded, key=lambda k: (_order(loaded[k][1]), str(k)))
    else:
        final_key = final_path.resolve()
    final_file, final_ckpt = loaded[final_key]
    model, _ = load_model(final_ckpt)
    names = [n for n, _ in named_params(model)]
    points = []
    for key, (p, ckpt) in loaded.items():
        _check_architecture(p, ckpt["model"], final_file, final_ckpt["model"])
        _check_same_run(p, ckpt["config"], final_file, final_ckpt["config"])
        if key != final_key and _order(ckpt) > _order(final_ckpt):
            continue  # after the final checkpoint
        points.append((_order(ckpt), key == final_key, str(p), p, ckpt))
    points.sort(key=lambda t: t[:3])
    if len(points) < 2:
        raise ValueError(
            f"a trajectory needs at least one checkpoint besides the final one {str(final_file)!r}"
        )
    params = []
    for *_, p, ckpt in points:
        sd = ckpt["state_dict"]
        missing = [n for n in names if n not in sd]
        if missing:
            raise ValueError(f"checkpoint {str(p)!r} has no parameter {missing[0]!r}")
        params.append(
            [
                sd[n].detach().to(dtype=q.dtype, device="cpu")
                for n, (_, q) in zip(names, named_params(model))
            ]
        )
    return Trajectory(
        paths=[t[3] for t in points],
        epochs=[int(t[4]["epoch"]) for t in points],
        steps=[int(t[4]["step"]) for t in points],
        params=params,
        final=[p.detach().clone() for _, p in named_params(model)],
        model=model,
        checkpoint=final_ckpt,
    )


def _as_list(theta: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [theta] if isinstance(theta, Tensor) else list(theta)


def _difference_matrix(
    thetas: Sequence[Tensor | Sequence[Tensor]], final: list[Tensor], ignore: str | None
) -> Tensor:
    """M [n, P] in the final parameters' dtype; 1-D parameters' columns zero for ``biasbn``."""
    if ignore not in (None, "none", "biasbn"):
        raise ValueError(f"unknown ignore option {ignore!r}; expected 'biasbn' or None")
    dtype = final[0].dtype
    rows = []
    for i, theta in enumerate(thetas):
        theta = _as_list(theta)
        if len(theta) != len(final) or any(a.shape != b.shape for a, b in zip(theta, final)):
            raise ValueError(
                f"checkpoint {i} of the trajectory has other parameter shapes than the final one"
            )
        parts = []
        for a, b in zip(theta, final):
            d = a.detach().to(device="cpu", dtype=dtype) - b.detach().to(device="cpu", dtype=dtype)
            parts.append(
                torch.zeros_like(d).reshape(-1)
                if ignore == "biasbn" and b.dim() <= 1
                else d.reshape(-1)
            )
        rows.append(torch.cat(parts))
    if not rows:
        raise ValueError("a trajectory needs at least one checkpoint")
    return torch.stack(rows)


def _gram(m: Tensor) -> np.ndarray:
    g = torch.zeros(m.shape[0], m.shape[0], dtype=torch.float64)
    for s in range(0, m.shape[1], _BLOCK):
        block = m[:, s : s + _BLOCK].to(torch.float64)
        g += block @ block.T
    return g.numpy()


def _times(m: Tensor, coeffs: np.ndarray) -> Tensor:
    """M^T c [P] in float64 for a coefficient vector c [n]."""
    c = torch.from_numpy(np.ascontiguousarray(coeffs, dtype=np.float64))
    return torch.cat(
        [m[:, s : s + _BLOCK].to(torch.float64).T @ c for s in range(0, m.shape[1], _BLOCK)]
    )


def _rows_dot(m: Tensor, d: Tensor) -> np.ndarray:
    """M d [n] in float64 for a float64 vector d [P]."""
    out = torch.zeros(m.shape[0], dtype=torch.float64)
    for s in range(0, m.shape[1], _BLOCK):
        out += m[:, s : s + _BLOCK].to(torch.float64) @ d[s : s + _BLOCK]
    return out.numpy()


def _moving(final: list[Tensor], ignore: str | None) -> Tensor:
    """1.0 where a parameter entry may move, 0.0 where ``ignore`` zeroes it ([P], float64)."""
    return torch.cat(
        [
            torch.full(
                (t.numel(),),
                0.0 if ignore == "biasbn" and t.dim() <= 1 else 1.0,
                dtype=torch.float64,
            )
            for t in final
        ]
    )


def pca_directions(
    thetas: Sequence[Tensor | Sequence[Tensor]],
    final: Tensor | Sequence[Tensor],
    center: bool = False,
    ignore: str | None = None,
    seed: int = 0,
) -> TrajectoryPCA:
    """The two PCA directions of a trajectory (module docstring).

    Args:
        thetas: n checkpoints, each a list of tensors like ``final`` (or one flat tensor).
        final: theta_f, a list of tensors (``named_parameters()`` order) or one flat tensor.
        center: subtract the mean row of M before the SVD (scikit-learn's PCA), not the paper's text.
        ignore: ``"biasbn"`` zeroes the 1-D parameters (biases) in M, so the directions move
            only weights (Li et al.'s option); None keeps every parameter.
        seed: seeds ``d_2`` when M has rank 1.
    """
    final = _as_list(final)
    m = _difference_matrix(thetas, final, ignore)
    n = m.shape[0]
    g = _gram(m)
    if center:
        j = np.eye(n) - np.full((n, n), 1.0 / n)
        g = j @ g @ j
    total = float(np.trace(g))
    if not total > 0:
        raise ValueError("the checkpoints do not move: every theta_i equals theta_final")
    evals, evecs = np.linalg.eigh(g)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    sv = np.sqrt(np.clip(evals[:2] if n > 1 else np.array([evals[0], 0.0]), 0.0, None))
    coeffs = (
        j if center else np.eye(n)
    )  # the matrix of the SVD: J M (centred) or M; d_k = M'^T u_k / s_k
    d1 = _times(m, coeffs @ evecs[:, 0])
    d1 = d1 / torch.linalg.vector_norm(d1)
    if n > 1 and sv[1] > 1e-10 * sv[0]:
        d2 = _times(m, coeffs @ evecs[:, 1])
    else:  # rank 1: any unit vector orthogonal to d1 spans the plane
        sv[1] = 0.0
        d2 = torch.randn(
            m.shape[1], generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64
        )
        d2 = d2 * _moving(final, ignore)
    d2 = d2 - (d2 @ d1) * d1
    d2 = d2 / torch.linalg.vector_norm(d2)
    path = np.stack([_rows_dot(m, d1), _rows_dot(m, d2)], axis=1)
    for k, d in enumerate((d1, d2)):
        if path[:, k].sum() > 0:
            path[:, k] *= -1.0
            d.neg_()
    return TrajectoryPCA(
        directions=[unflatten(d1, final), unflatten(d2, final)],
        explained_variance_ratio=sv**2 / total,
        singular_values=sv,
        path=path,
        center=bool(center),
    )


def project(
    thetas: Sequence[Tensor | Sequence[Tensor]],
    final: Tensor | Sequence[Tensor],
    directions: Sequence[Tensor | Sequence[Tensor]],
) -> np.ndarray:
    """Coordinates [n, K] of each theta_i in the plane (or space) theta_f + sum_k c_k d_k.

    The coefficients are the least-squares solution ``c = (D D^T)^{-1} D (theta_i - theta_f)``
    (D: the K flattened directions as rows), which is ``<theta_i - theta_f, d_k>`` when the
    directions are orthonormal (PCA directions) and also serves random, non-orthogonal ones.
    """
    final = _as_list(final)
    m = _difference_matrix(thetas, final, None)
    d = _difference_matrix(directions, [torch.zeros_like(t) for t in final], None)
    gram = torch.from_numpy(_gram(d))
    dm = torch.zeros(d.shape[0], m.shape[0], dtype=torch.float64)
    for s in range(0, m.shape[1], _BLOCK):
        dm += d[:, s : s + _BLOCK].to(torch.float64) @ m[:, s : s + _BLOCK].to(torch.float64).T
    return torch.linalg.solve(gram, dm).T.numpy()


def default_range(
    path: np.ndarray, margin: float = 0.1
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scan ranges ``((x_lo, x_hi), (y_lo, y_hi))`` that cover the path [n, 2] and the origin
    (theta_f), widened on each side by ``margin`` times the axis' span (an axis without span
    borrows the other's, or 1)."""
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] != 2 or not np.isfinite(path).all():
        raise ValueError(f"the path must be a finite [n, 2] array, got shape {path.shape}")
    lo = np.minimum(path.min(axis=0), 0.0)
    hi = np.maximum(path.max(axis=0), 0.0)
    span = hi - lo
    fallback = float(span.max()) if span.max() > 0 else 1.0
    span = np.where(span > 0, span, fallback)
    pad = float(margin) * span
    return (
        (float(lo[0] - pad[0]), float(hi[0] + pad[0])),
        (float(lo[1] - pad[1]), float(hi[1] + pad[1])),
    )

"""Certification files: clean, PGD and verified error of a model at several eps, and how tight
its own bound is, written as one ``kind = "certify"`` file (layout in ``docs/schema.md``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from landscape import store
from landscape.provenance import provenance

__all__ = ["certify_rows", "write_certify_file"]


def certify_rows(model: Any, x: Any, y: Any, eps_list: Sequence[float], methods: Sequence[str], label: str,
                 **evaluate_kw: Any) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """One row per eps of :func:`train.evaluate.evaluate` (clean / PGD / verified error, per bound
    method and their union), as columns (``method`` holds ``label`` on every row), and the
    evaluations themselves. ``evaluate_kw``: ``pgd_steps``, ``domain``, ``batch_size``, ...
    The model is put in evaluation mode (BatchNorm certifies with its running statistics)."""
    from train.evaluate import evaluate, metric_key

    model.eval()

    rows: dict[str, list] = {"method": [], "eps": [], "clean_err": [], "pgd_err": [], "verified_err": []}
    for m in methods:
        rows[metric_key(m)] = []
    results = []
    for eps in eps_list:
        res = evaluate(model, x, y, eps, methods=methods, **{"progress": False, **evaluate_kw})
        results.append(res)
        rows["method"].append(label)
        rows["eps"].append(float(eps))
        for k in rows:
            if k not in ("method", "eps"):
                rows[k].append(float(res[k]))
    return rows, results


def check_certify_out(path: str | Path) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written: a folder, an existing file
    that is not HDF5, or a place whose nearest existing folder is missing or not writable
    (missing folders below it are made only when the file is written)."""
    out = Path(store.files.written_path(path)).absolute()
    if out.is_dir():
        raise ValueError(f"--out: {path} is a directory")
    if out.exists():
        store.files.check_hdf5(str(out))
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--out: cannot write {path}: {folder} is not a writable folder")


def write_certify_file(path: str | Path, rows: Mapping[str, Sequence[Any]], attrs: Mapping[str, Any]) -> Path:
    """Write ``rows`` (columns of equal length; ``method`` as strings, the rest float32) and the
    root ``attrs`` to ``path`` as a complete certify file. It is built beside ``path`` and moved
    into place at the end, so ``path`` is either absent, the old file, or the whole new one."""
    out = Path(store.files.written_path(path))  # a link is written through
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.h5")
    tmp.unlink(missing_ok=True)
    cols = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items() if k != "method"}
    if "method" in rows:
        cols["method"] = np.asarray(rows["method"], dtype=object)
    store.write_attrs(str(tmp), {"kind": "certify", **provenance(), **dict(attrs), "complete": False})
    store.append_rows(str(tmp), "results", cols)
    store.write_attrs(str(tmp), {"complete": True})
    tmp.replace(out)
    return out

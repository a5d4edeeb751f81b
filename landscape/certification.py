"""Certification files: clean, PGD and verified error of a model at several eps, and how tight
its own bound is, written as one ``kind = "certify"`` file (layout in ``docs/schema.md``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import store
from landscape.provenance import provenance

__all__ = ["certify_rows", "write_certify_file"]


def certify_rows(
    model: Any,
    x: Any,
    y: Any,
    eps_list: Sequence[float],
    methods: Sequence[str],
    label: str,
    **evaluate_kw: Any,
) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """One row per eps of :func:`train.evaluate.evaluate` (clean / PGD / verified error, per bound
    method and their union), as columns (``method`` holds ``label`` on every row), and the
    evaluations themselves. ``evaluate_kw``: ``pgd_steps``, ``domain``, ``batch_size``, ...
    The model is put in evaluation mode (BatchNorm certifies with its running statistics)."""
    from train.evaluate import evaluate, metric_key

    model.eval()

    rows: dict[str, list] = {
        "method": [],
        "eps": [],
        "clean_err": [],
        "pgd_err": [],
        "verified_err": [],
    }
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


def write_certify_file(
    path: str | Path, rows: Mapping[str, Sequence[Any]], attrs: Mapping[str, Any]
) -> Path:
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
    store.write_attrs(
        str(tmp), {"kind": "certify", **provenance(), **dict(attrs), "complete": False}
    )
    store.append_rows(str(tmp), "results", cols)
    store.write_attrs(str(tmp), {"complete": True})
    tmp.replace(out)
    return out


def write_complete_file(path: str | Path, result: Any, attrs: Mapping[str, Any]) -> Path:
    """A certify file with the totals of :func:`landscape.complete.run_complete` as its one
    ``results`` row, the per-sample columns in ``samples`` and the per-bound tightness in
    ``tightness`` (``docs/schema.md``); built beside ``path`` and moved into place at the end."""
    out = Path(path)
    tmp = out.with_suffix(".partial.h5")
    tmp.unlink(missing_ok=True)
    t = result.totals
    row = {
        k: np.asarray([v], dtype=np.float32) for k, v in t.items() if isinstance(v, (int, float))
    }
    row["method"] = np.asarray([attrs.get("method")], dtype=object)
    store.write_attrs(
        str(tmp),
        {
            "kind": "certify",
            **provenance(),
            **dict(attrs),
            "attack": t["attack"],
            "bounds": result.bounds,
            "complete": False,
        },
    )
    store.append_rows(str(tmp), "results", row)
    store.append_rows(str(tmp), "samples", result.samples)
    if result.tightness:
        tight = {
            k: (np.asarray(v, dtype=object) if k == "bound" else np.asarray(v, dtype=np.float64))
            for k, v in result.tightness.items()
        }
        store.append_rows(str(tmp), "tightness", tight)
    store.write_attrs(str(tmp), {"complete": True})
    tmp.replace(out)
    return out


def complete_lines(result: Any, exact: bool) -> list[tuple[str, str]]:
    """The printed table of a complete (or attack-only) certification: (name, value) pairs."""
    t = result.totals
    pct = lambda v: f"{100 * v:6.2f} %"  # noqa: E731
    rows = [("clean error", pct(t["clean_err"])), ("PGD error", pct(t["pgd_err"]))]
    if t["attack"] != "pgd":
        rows.append((f"{t['attack']} error", pct(t["attack_err"])))
    if exact:
        rows.append(("exact robust error (falsified)", pct(t["exact_err"])))
        rows.append(("timeouts (undecided)", f"{t['timeouts']:6d}"))
    for m in result.bounds:
        rows.append(
            (
                f"verified error, {m}",
                pct(t["verified_err_" + m.replace("-", "_").replace(":", "_")]),
            )
        )
    rows.append(("verified error (union of bounds)", pct(t["verified_err"])))
    if exact:
        for m, gap, share in zip(
            result.tightness["bound"], result.tightness["gap_mean"], result.tightness["fault_share"]
        ):
            rows.append(
                (
                    f"gap to exact margin, {m}",
                    f"{gap:8.4f}  (bound's share of the error gap {share:.2f})",
                )
            )
        rows.append(("seconds", f"{t['seconds']:8.1f}"))
    return rows


def _complete_file_attrs(
    cfg: Mapping[str, Any], settings: Mapping[str, Any], methods: Sequence[str], complete: bool
) -> dict[str, Any]:
    """The attributes of a ``certify --complete`` / ``--attack`` file: the run certified and the
    settings the samples were decided with."""
    return {
        "method": cfg.get("method"),
        "dataset": cfg["dataset"],
        "model": cfg.get("model"),
        "eps": float(cfg.get("eps", 0.0)),
        "checkpoint": settings["checkpoint"],
        "n_test": settings["n"],
        "dtype": "float64" if settings["double"] else "float32",
        "methods": list(methods),
        "pgd_steps": settings["pgd_steps"],
        "pgd_restarts": settings["pgd_restarts"],
        "complete_verification": bool(complete),
        "time_limit": settings["time_limit"],
        "margins": settings["margins"],
        "seed": settings["seed"],
    }


def _print_complete(
    result: Any,
    cfg: Mapping[str, Any],
    checkpoint: str,
    eps: float,
    time_limit: float,
    complete: bool,
    double: bool,
    as_json: bool,
    out: str | None,
) -> None:
    """Print the totals of a ``certify --complete`` / ``--attack`` run: one JSON object (with the
    tightness of each bound when the program ran), or a table."""
    import json

    import click

    t = result.totals
    if as_json:
        keys = {k: v for k, v in t.items()}
        keys.update(
            checkpoint=str(checkpoint),
            dtype="float64" if double else "float32",
            union=sorted(result.bounds),
        )
        if complete:
            keys["tightness"] = {
                b: {"gap_mean": g, "fault_share": f}
                for b, g, f in zip(
                    result.tightness["bound"],
                    result.tightness["gap_mean"],
                    result.tightness["fault_share"],
                )
            }
        click.echo(json.dumps(keys, sort_keys=True, default=float))
        return
    click.echo(
        f"{checkpoint}: {cfg.get('method')} {cfg.get('model')} on {cfg['dataset']}, {t['n']} test samples, "
        f"eps = {eps:g}" + (f", exact within {time_limit:g} s per sample" if complete else "")
    )
    rows = complete_lines(result, complete)
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if out is not None:
        click.echo(f"wrote {out}", err=True)


def certify_complete(
    model: Any,
    x: Any,
    y: Any,
    eps: float | None,
    cfg: Mapping[str, Any],
    *,
    checkpoint: str,
    methods: Sequence[str],
    domain: Sequence[float],
    attack_name: str,
    pgd_steps: int,
    pgd_restarts: int,
    seed: int,
    complete: bool,
    time_limit: float,
    jobs: int,
    margins: bool,
    batch_size: int,
    out: str | None,
    as_json: bool,
    double: bool,
    test_size: int | None,
) -> None:
    """``landscape certify --complete`` / ``--attack``: run, print (a table or one JSON object) and
    write ``out``; the exact program's per-sample results are kept in ``<out>.progress.h5`` until
    the file is complete (a rerun with the same settings continues). ValueError / ImportError for
    a bad input (the caller prints it as one ``Error:`` line)."""
    from landscape.complete import progress_path, run_complete
    from landscape.standard_attacks import make_attack

    eps = float(cfg.get("eps", 0.0)) if eps is None else float(eps)
    attack = (
        None
        if attack_name == "pgd"
        else make_attack(attack_name, eps, domain, seed=seed, batch_size=batch_size)
    )
    settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "eps": eps,
        "seed": seed,
        "test_size": test_size,
        "n": len(x),
        "time_limit": float(time_limit),
        "margins": bool(margins),
        "attack": attack_name,
        "pgd_steps": pgd_steps,
        "pgd_restarts": pgd_restarts,
        "double": bool(double),
    }
    resume = progress_path(out) if (out is not None and complete) else None
    result = run_complete(
        model,
        x,
        y,
        eps,
        methods,
        domain=domain,
        attack=attack,
        attack_name=attack_name,
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        seed=seed,
        time_limit=time_limit,
        jobs=jobs,
        batch_size=batch_size,
        margins=margins,
        progress=not as_json,
        resume=resume,
        settings=settings,
        exact=complete,
    )
    if out is not None:
        write_complete_file(out, result, _complete_file_attrs(cfg, settings, methods, complete))
        if resume is not None:
            resume.unlink(missing_ok=True)
    _print_complete(result, cfg, checkpoint, eps, time_limit, complete, double, as_json, out)

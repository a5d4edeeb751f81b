"""A training run's directory, as ``landscape train`` and ``landscape reproduce`` both use it.

:func:`train_in_dir` is the one training sequence of both: write ``config.json``, open
``train.h5`` (fresh, or cut back to the checkpoint a resume starts from), add the training
probes that write into it, and train, writing ``checkpoint_epoch{N}.pt`` and ``checkpoint.pt``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import store
from common.types import Sink
from landscape.provenance import provenance


def latest_epoch_checkpoint(run_dir: Path) -> Path | None:
    """The ``checkpoint_epoch{N}.pt`` of ``run_dir`` with the largest ``N`` (None if none)."""
    found = []
    for p in Path(run_dir).glob("checkpoint_epoch*.pt"):
        tail = p.stem[len("checkpoint_epoch") :]
        if tail.isdigit():
            found.append((int(tail), p))
    return max(found)[1] if found else None


def write_config_json(path: Path, config: Mapping[str, Any]) -> None:
    """Write a run's ``config.json`` atomically (a temporary beside it, then ``os.replace``): a
    full disk or a crash leaves the old file (or none), never an empty or half-written one."""
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    with store.atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def open_train_record(
    h5: Path, config: Any, resume_from: Path | None, extra_attrs: Mapping[str, Any] | None = None
) -> Sink:
    """Prepare the run's HDF5 file and return the sink the training loop writes rows through.

    A fresh run (``resume_from`` None, or no file yet) starts a new file whose root attributes
    say what made it (``docs/schema.md``). A resumed run keeps the file but drops the rows an
    interrupted attempt wrote after the checkpoint (``store.truncate_run``), so no step appears
    twice.
    """
    from train.checkpoint import load_checkpoint

    path = str(h5)
    if resume_from is None or not Path(h5).exists():
        Path(h5).unlink(missing_ok=True)  # rows of an earlier attempt that never finished an epoch
        store.write_attrs(
            path,
            {
                "kind": "train",
                "method": config.method,
                "dataset": config.dataset,
                "model": config.model,
                "eps": float(config.eps),
                "seed": int(config.seed),
                "slope": config.resolved_slope,
                **provenance(),
                "config": config.to_dict(),
                **dict(extra_attrs or {}),
            },
        )
    else:
        ckpt = load_checkpoint(resume_from)
        try:
            store.read(path)  # the whole record must read before any of it is cut
            store.truncate_run(path, int(ckpt["step"]), int(ckpt["epoch"]))
        except (OSError, KeyError, ValueError) as exc:
            raise store.StoreError(
                f"--resume: cannot continue the run's record {path} ({exc}); nothing was changed. "
                "Move it away to resume without it, or use --overwrite to start again"
            ) from None
        store.write_attrs(path, {"resumed_from": str(resume_from)})

    def sink(group: str, rows: dict) -> None:
        store.append_rows(path, group, rows)

    return sink


def probe_callbacks(config: Any, sink: Sink, t_values: Sequence[float] | None = None) -> list:
    """A gradient-direction probe (:class:`landscape.probes.GradientProbe`) every
    ``config.probe_every`` steps (on ``config.probe_batches`` batches, with fresh slopes when
    ``config.probe_fresh_slopes``) writing through ``sink``; no callback when the period is 0."""
    if not config.probe_every:
        return []
    from landscape import probes

    kw: dict[str, Any] = {} if t_values is None else {"t_values": list(t_values)}
    return [
        probes.GradientProbe(
            every=config.probe_every,
            sink=sink,
            batches=config.probe_batches,
            fresh_slopes=config.probe_fresh_slopes,
            **kw,
        )
    ]


def train_in_dir(
    run_dir: Path,
    config: Any,
    data: Any,
    resume_from: Path | None = None,
    probe_t: Sequence[float] | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
    parallel: Any = None,
) -> Any:
    """Train ``config`` (a :class:`train.config.TrainConfig`) on ``data`` into ``run_dir``:
    ``config.json``, ``train.h5`` with a probe every ``config.probe_every`` steps (at step
    multiples ``probe_t``), the epoch checkpoints and ``checkpoint.pt``; continue from
    ``resume_from`` when given (checked before anything is written). Warnings of the run (a
    collapse) are stored as the root attribute ``warnings``, the number of processes of the
    latest training call as ``world_size``. ``parallel``: this process's
    :class:`train.parallel.Context` under torchrun, where rank 0 alone writes and the other
    ranks only train their shares. Returns the :class:`train.loop.TrainResult`."""
    from train.loop import check_resume, train

    if resume_from is not None:
        check_resume(config, resume_from)
    if parallel is not None and not parallel.is_main:
        return train(config, resume_from=resume_from, progress=False, data=data, parallel=parallel)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = open_train_record(run_dir / "train.h5", config, resume_from, extra_attrs)
    write_config_json(
        run_dir / "config.json", config.to_dict()
    )  # after the record: a failed resume keeps it
    store.write_attrs(
        str(run_dir / "train.h5"), {"world_size": parallel.world if parallel is not None else 1}
    )
    callbacks = probe_callbacks(config, sink, probe_t)
    result = train(
        config,
        callbacks=callbacks,
        sink=sink,
        resume_from=resume_from,
        progress=progress,
        out_dir=run_dir,
        data=data,
        parallel=parallel,
    )
    store.write_attrs(str(run_dir / "train.h5"), {"warnings": list(result.warnings)})
    return result

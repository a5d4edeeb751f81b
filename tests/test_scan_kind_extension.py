"""Adding a scan kind takes the steps ``docs/design.md`` names: one module (its computing half
and its figure) and one entry in ``common.names.SCAN_KINDS``. A kind that is not in the toolkit,
``tests/scan_kind_example.py``, is registered at test time and runs end to end: checked,
scanned, resumed and refused like the others, read and drawn by ``figures``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scan_kind_example

from common import names, store
from landscape.scan_checks import check_request
from landscape.scan_runner import ScanRequest, run_scan


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny CROWN-IBP run on 100 digits."""
    from train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": [16]},
        method="crown-ibp",
        eps=0.1,
        epochs=1,
        batch_size=50,
        train_size=100,
        test_size=20,
        eval_size=0,
    )
    train(cfg, out_dir=out, progress=False)
    return out / "checkpoint.pt"


def test_a_new_kind_needs_one_module_and_one_table_entry(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(names.SCAN_KINDS, "scale", scan_kind_example.ENTRY)
    out = tmp_path / "scale.h5"
    request = dict(checkpoint=str(checkpoint), kind="scale", samples=16, methods=["ibp", "clean"])

    done = run_scan(ScanRequest(out=str(out), **request), progress=False)
    assert (done.n_points, done.computed) == (5, 5)
    d = store.read(out)
    assert d["attrs"]["kind"] == "scale" and d["attrs"]["complete"] is True
    np.testing.assert_allclose(d["coords"]["x"], [-1.0, -0.5, 0.0, 0.5, 1.0])
    for label in ("ibp", "clean"):
        loss = d["results"][label]["loss"]
        assert np.isfinite(loss).all()
        # all parameters zero: every logit is 0 on the whole ball, so both losses are ln 10
        assert loss[0] == pytest.approx(math.log(10), rel=1e-6)
        assert "loss_variation" in d["results"][label]["attrs"]
    from train.checkpoint import load_model

    n_params = sum(p.numel() for p in load_model(str(checkpoint))[0].parameters())
    assert d["arrays"]["direction_x"].shape == (n_params,)

    # resumed like every kind: nothing left to compute; other arguments are refused
    assert run_scan(ScanRequest(out=str(out), **request), progress=False).computed == 0
    with pytest.raises(ValueError, match="different arguments"):
        run_scan(ScanRequest(out=str(out), **{**request, "seed": 1}), progress=False)
    # the common checks hold for it: another kind's option is refused, its grid is checked
    with pytest.raises(ValueError, match="--to is only used with --kind interpolate"):
        check_request(
            ScanRequest(out=str(tmp_path / "x.h5"), to_checkpoint=str(checkpoint), **request)
        )
    with pytest.raises(ValueError, match="--range"):
        check_request(ScanRequest(out=str(tmp_path / "x.h5"), range="1,0", **request))

    # its figure, found by the kind's name
    from figures import data
    from figures.dispatch import plot_file

    record = data.load(out)
    assert record.coord_label == scan_kind_example.ENTRY.axis
    written = plot_file(out, tmp_path / "fig", formats=("png",))
    assert scan_kind_example.DRAWN == ["scale"]
    assert [p.name for p in written] == ["scale.png"]


def test_every_kind_points_into_its_layers() -> None:
    """The table names modules only: each kind's computing half is a KindRunner of
    landscape.scan_kinds, its figure (if any) a function of figures."""
    import importlib

    from landscape.scan_kinds.base import KindRunner, runner

    for kind, entry in names.SCAN_KINDS.items():
        assert entry.runner.startswith("landscape.scan_kinds."), kind
        assert isinstance(runner(kind), KindRunner), kind
        if entry.figure:
            module, _, name = entry.figure.partition(":")
            assert module.startswith("figures.") and callable(
                getattr(importlib.import_module(module), name)
            ), kind

"""``landscape scan --kind slopes`` end to end on a tiny trained digits model: the relaxation's own
landscape at fixed weights (``docs/scans.md``).

The points at the policies themselves equal the plain certified losses of those policies (one
batch and mini-batches), the gradient cosine is 1 at the start, a killed scan resumes to the
uninterrupted file, other arguments are refused, ``plot`` draws it, and the command line refuses
IBP and an unknown policy with one line each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from run_helpers import train_tiny_run

from common import store
from landscape.cli import main
from landscape.scan_checks import check_request
from landscape.scan_runner import ScanRequest, run_scan

PATH = "zero,adaptive,tightest,uniform"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny CROWN-IBP run on 100 digits (2 epochs, eps ramped over the first)."""
    out = train_tiny_run(tmp_path_factory.mktemp("run"))
    return out / "checkpoint.pt"


def _request(checkpoint: Path, out: Path, **kw) -> ScanRequest:
    base = dict(kind="slopes", samples=24, methods=["crown-ibp"], slope_path=PATH, points=7)
    return ScanRequest(checkpoint=str(checkpoint), out=str(out), **{**base, **kw})


def _plain_losses(checkpoint: Path, tmp_path: Path, batch_size: int | None) -> list[float]:
    """The certified loss of each policy of :data:`PATH`, as a plain scan loss computes it."""
    from landscape.distributed import Context
    from landscape.scan_kinds.base import runner
    from landscape.scan_losses import BatchedLoss, LossClosure
    from landscape.scan_setup import prepare_scan

    req = _request(checkpoint, tmp_path / "unused.h5", batch_size=batch_size)
    check_request(req)
    prepared = prepare_scan(req, runner("slopes"), Context())
    (closure,) = prepared.inputs.closures
    parts = closure.closures if isinstance(closure, BatchedLoss) else [closure]
    out = []
    for policy in PATH.split(","):
        losses = [
            LossClosure(c.model, c.x, c.y, dataclasses.replace(c.spec, slope=policy)) for c in parts
        ]
        fn = BatchedLoss(losses) if len(losses) > 1 else losses[0]
        out.append(float(fn().detach()))
    return out


@pytest.mark.parametrize("batch_size", [None, 10])
def test_the_policies_points_are_their_plain_losses(checkpoint, tmp_path, batch_size):
    out = tmp_path / "slopes.h5"
    done = run_scan(_request(checkpoint, out, batch_size=batch_size), progress=False)
    assert (done.n_points, done.computed) == (7, 7)
    d = store.read(out)
    assert d["attrs"]["kind"] == "slopes" and d["attrs"]["complete"] is True
    assert d["attrs"]["slope_path"] == PATH.split(",")
    assert d["attrs"]["slope_seeds"] == [0, 0, 0, 0]
    s = d["coords"]["s"]
    np.testing.assert_allclose(s, [0, 0.5, 1, 1.5, 2, 2.5, 3])
    r = d["results"]["crown-ibp"]
    plain = _plain_losses(checkpoint, tmp_path, batch_size)
    np.testing.assert_allclose(r["loss"][::2], plain, rtol=1e-6)
    assert r["cosine"][0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.abs(r["cosine"]) <= 1 + 1e-6) and np.all(r["grad_norm"] > 0)
    assert np.isfinite(r["loss"]).all() and r["loss"].std() > 0  # the slopes change the loss


def test_a_killed_slopes_scan_resumes_and_plots(checkpoint, tmp_path, monkeypatch):
    from landscape import scan_runner
    from landscape.scan_kinds import slopes

    full = tmp_path / "full.h5"
    run_scan(_request(checkpoint, full), progress=False)
    real = slopes.SlopesEvaluator.__call__
    calls: list[int] = []

    def dying(self, indices):
        if len(calls) >= 3:
            raise KeyboardInterrupt  # the "kill"
        calls.extend(indices)
        return real(self, indices)

    part = tmp_path / "part.h5"
    monkeypatch.setattr(scan_runner.Chunker, "update", lambda self, n, seconds: None)
    monkeypatch.setattr(slopes.SlopesEvaluator, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        run_scan(_request(checkpoint, part), progress=False)
    assert store.read(part)["attrs"]["complete"] is False
    monkeypatch.setattr(slopes.SlopesEvaluator, "__call__", real)
    assert run_scan(_request(checkpoint, part), progress=False).computed == 7 - 3
    d, ref = store.read(part), store.read(full)
    assert d["attrs"]["complete"] is True
    for field in ("loss", "cosine", "grad_norm"):
        np.testing.assert_array_equal(
            d["results"]["crown-ibp"][field], ref["results"]["crown-ibp"][field]
        )
    assert run_scan(_request(checkpoint, part), progress=False).computed == 0
    with pytest.raises(ValueError, match="different arguments"):
        run_scan(_request(checkpoint, part, slope_path="zero,tightest"), progress=False)

    from figures.dispatch import plot_file

    written = plot_file(part, tmp_path / "fig", formats=("png",))
    assert [p.name for p in written] == ["part_slopes.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_the_command_refuses_ibp_and_unknown_policies(checkpoint, tmp_path, capsys):
    out = tmp_path / "o.h5"
    base = ["scan", str(checkpoint), "--kind", "slopes", "--out", str(out), "--samples", "8"]
    cases = [
        (["--methods", "ibp"], "ibp has no lower ReLU slopes to move"),
        (["--methods", "crown-ibp,clean"], "clean has no lower ReLU slopes"),
        (["--slope-path", "zero,bogus"], "--slope-path: unknown slope 'bogus'"),
        (["--slope-path", "zero"], "--slope-path: give at least two policies"),
        (["--slope", "zero"], "--slope-path"),
        (["--range", "0,1"], "--range"),
    ]
    for extra, needle in cases:
        assert main([*base, *extra, "--quiet"]) != 0, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    other = ["scan", str(checkpoint), "--kind", "random-1d", "--out", str(out)]
    assert main([*other, "--slope-path", "zero,one", "--quiet"]) != 0
    assert "--slope-path is only used with --kind slopes" in capsys.readouterr().err

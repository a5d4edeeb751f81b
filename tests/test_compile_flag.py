"""``--compile`` of ``train``, ``scan``, ``certify`` and ``reproduce`` reaches the bound engine.

Compiling takes many seconds on a CPU even with a warm disk cache, so these tests replace
:func:`bounds.compiled.kernels` by a recorder that returns no kernels (the eager steps) and check
what the engine was asked for; ``tests/test_compile.py`` checks that the compiled kernels give
the eager values.
"""

from __future__ import annotations

import json

import pytest

from bounds import compiled
from landscape.cli import main

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[16]",
    "--method",
    "crown-ibp",
    "--eps",
    "0.02",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--eps-ramp-epochs",
    "0",
    "--eval-size",
    "16",
    "--quiet",
]


@pytest.fixture
def asked(monkeypatch) -> list[bool]:
    """The ``enabled`` argument of every call of the engine's ``compiled.kernels``."""
    calls: list[bool] = []

    def record(enabled: bool):
        calls.append(bool(enabled))
        return None

    monkeypatch.setattr(compiled, "kernels", record)
    return calls


def test_train_compile_reaches_the_engine_and_a_resume_keeps_it(tmp_path, asked) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--compile", "--out", str(out)]) == 0
    assert asked and all(asked)  # the training steps and the end-of-epoch evaluation
    assert json.loads((out / "config.json").read_text())["compile"] is True
    asked.clear()
    assert (
        main(
            ["train", "--resume", "--epochs", "2", "--eval-size", "0", "--quiet", "--out", str(out)]
        )
        == 0
    )
    assert asked and all(asked)
    asked.clear()
    assert main(["train", *TINY, "--out", str(tmp_path / "eager")]) == 0
    assert asked and not any(asked)


def test_scan_and_certify_compile_reach_the_engine(tmp_path, asked) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    ckpt = str(run / "checkpoint.pt")
    asked.clear()
    assert (
        main(
            [
                "scan",
                ckpt,
                "--kind",
                "random-1d",
                "--points",
                "3",
                "--samples",
                "8",
                "--compile",
                "--quiet",
                "--out",
                str(tmp_path / "s.h5"),
            ]
        )
        == 0
    )
    assert asked and all(asked)
    asked.clear()
    assert (
        main(
            [
                "certify",
                ckpt,
                "--methods",
                "ibp,crown-ibp",
                "--pgd-steps",
                "0",
                "--test-size",
                "16",
                "--compile",
                "--json",
            ]
        )
        == 0
    )
    assert asked and all(asked)


def test_reproduce_compile_goes_into_every_run_config(tmp_path, monkeypatch) -> None:
    from landscape import reproduce

    seen = {}

    def fake_run(plan, out_dir, **kw):
        seen["plan"] = plan
        raise SystemExit(0)

    monkeypatch.setattr(reproduce, "run", fake_run)
    with pytest.raises(SystemExit):
        main(["reproduce", "--profile", "tiny", "--out", str(tmp_path / "r"), "--compile"])
    runs = seen["plan"].runs
    assert runs and all(r.config["compile"] is True for r in runs)

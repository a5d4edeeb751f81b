"""``landscape train`` / ``landscape certify`` end to end on digits, and their error messages."""

from __future__ import annotations

import json

import pytest
import torch

from common import store
from landscape.cli import main

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[16,16]",
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
    "--quiet",
]


def run(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, words: str) -> None:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    assert words in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("method", ["natural", "ibp", "crown-ibp", "crown", "cap", "tightest"])
def test_train_and_certify_every_method(tmp_path, capsys, method: str) -> None:
    out = tmp_path / method
    extra = ["--probe-every", "1"] if method == "crown-ibp" else []
    code, stdout, err = run(capsys, ["train", *TINY, "--method", method, "--out", str(out), *extra])
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {
        "checkpoint.pt",
        "checkpoint_epoch1.pt",
        "train.h5",
        "config.json",
    }
    h5 = store.read(str(out / "train.h5"))
    assert h5["attrs"]["kind"] == "train" and h5["attrs"]["method"] == method
    assert h5["steps"]["step"].tolist() == [0, 1] and len(h5["epochs"]["epoch"]) == 1
    if extra:
        assert sorted(set(h5["probes"]["step"].tolist())) == [0, 1]
    assert json.loads((out / "config.json").read_text())["method"] == method
    code, stdout, err = run(
        capsys,
        [
            "certify",
            str(out / "checkpoint.pt"),
            "--eps",
            "0.02",
            "--methods",
            "ibp,crown-ibp,crown",
            "--pgd-steps",
            "5",
            "--test-size",
            "32",
            "--json",
        ],
    )
    assert code == 0, err
    res = json.loads(stdout)
    for key in (
        "clean_err",
        "pgd_err",
        "verified_err",
        "verified_err_ibp",
        "verified_err_crown_ibp",
        "verified_err_crown",
    ):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["clean_err"] <= res["pgd_err"] <= res["verified_err"] <= res["verified_err_ibp"]


def test_certify_in_float64_agrees_with_float32(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run(capsys, ["train", *TINY, "--method", "ibp", "--out", str(out)])[0] == 0
    args = [
        "certify",
        str(out / "checkpoint.pt"),
        "--eps",
        "0.01",
        "--methods",
        "ibp,crown-ibp",
        "--pgd-steps",
        "3",
        "--test-size",
        "32",
        "--json",
    ]
    code, single, err = run(capsys, args)
    assert code == 0, err
    code, double, err = run(capsys, [*args, "--float64"])
    assert code == 0, err
    single, double = json.loads(single), json.loads(double)
    assert (single["dtype"], double["dtype"]) == ("float32", "float64")
    assert double["clean_err"] == single["clean_err"]
    assert abs(double["verified_err"] - single["verified_err"]) <= 1 / 32


def test_config_file_resume_and_table(tmp_path, capsys) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: crown-ibp\nbeta-end: 0.0\neps: 0.5\nlr: 0.002\n")
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(cfg),
        *TINY,
        "--out",
        str(out),
    ]  # --eps 0.02 overrides the file
    assert run(capsys, args)[0] == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["eps"] == 0.02 and saved["beta_end"] == 0.0 and saved["lr"] == 0.002
    code, _, err = run(capsys, args)
    assert_one_line_error(code, err, "already holds this run")
    code, _, err = run(capsys, [*args, "--epochs", "2", "--resume"])
    assert code == 0, err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["step"] == 4
    assert store.read(str(out / "train.h5"))["steps"]["step"].tolist() == [0, 1, 2, 3]
    code, _, err = run(capsys, ["train", *TINY, "--method", "ibp", "--out", str(out)])
    assert_one_line_error(code, err, "holds another run")
    assert (
        run(capsys, ["train", *TINY, "--method", "ibp", "--out", str(out), "--overwrite"])[0] == 0
    )
    assert not (out / "checkpoint_epoch2.pt").exists()
    code, stdout, err = run(
        capsys,
        [
            "certify",
            str(out / "checkpoint.pt"),
            "--methods",
            "ibp",
            "--pgd-steps",
            "3",
            "--test-size",
            "20",
        ],
    )
    assert code == 0, err
    assert "verified error (union of ibp)" in stdout and "PGD error" in stdout


def test_resume_after_a_crash_mid_epoch_keeps_each_step_once(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "ibp", "--out", str(out)]
    assert run(capsys, args)[0] == 0
    h5 = str(out / "train.h5")
    # what an attempt at epoch 2 that died after its first step leaves behind
    store.append_rows(h5, "steps", {"step": [2], "epoch": [1], "loss": [9.0]})
    store.append_rows(h5, "epochs", {"epoch": [1], "train_loss": [9.0]})
    code, _, err = run(capsys, [*args, "--epochs", "2", "--resume"])
    assert code == 0, err
    rec = store.read(h5)
    assert rec["steps"]["step"].tolist() == [0, 1, 2, 3]
    assert 9.0 not in rec["steps"]["loss"].tolist()
    assert rec["epochs"]["epoch"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--method", "ibp", "--eps", "-0.1"], "eps must be >= 0"),
        (["--method", "fgsm"], "unknown method 'fgsm'"),
        (["--method", "ibp", "--model", "dm-small"], "dm-small"),
        (["--method", "ibp", "--dataset", "nodata"], "nodata"),
        (["--method", "ibp", "--lr", "-1"], "lr must be > 0"),
        (["--method", "ibp", "--model-option", "depth=3"], "depth"),
    ],
)
def test_bad_train_inputs_fail_before_work(tmp_path, capsys, args: list[str], words: str) -> None:
    out = tmp_path / "bad"
    code, _, err = run(capsys, ["train", *TINY, *args, "--out", str(out)])
    assert_one_line_error(code, err, words)
    assert not out.exists()


def test_bad_certify_inputs(tmp_path, capsys) -> None:
    code, _, err = run(capsys, ["certify", str(tmp_path / "missing.pt")])
    assert_one_line_error(code, err, "does not exist")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    code, _, err = run(capsys, ["certify", str(foreign)])
    assert_one_line_error(code, err, "not a cert-landscape checkpoint")
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    code, _, err = run(capsys, ["certify", str(junk), "--json"])
    assert_one_line_error(code, err, "corrupt")
    code, _, err = run(capsys, ["certify", str(junk), "--methods", "ibp,zonotope"])
    assert_one_line_error(code, err, "zonotope")

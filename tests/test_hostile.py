"""Defects a hostile-input trial found (issue 25), one test each: every bad input is one clear
`Error:` line, checked before any work, and nothing written before is lost or mixed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from landscape.cli import main

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "widths=[16]",
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


def run(capsys, args: list) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *words: str) -> str:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 1-epoch digits run (the `r2` of the issue, smaller)."""
    out = tmp_path_factory.mktemp("r") / "r2"
    assert main(["train", *TINY, "--method", "ibp", "--out", str(out)]) == 0
    return out


@pytest.fixture()
def run_copy(run_dir, tmp_path) -> Path:
    dst = tmp_path / "x"
    shutil.copytree(run_dir, dst)
    return dst


# ----------------------------------------------------------------------------- resume never destroys
def test_resume_without_an_epoch_checkpoint_refuses_and_changes_nothing(run_copy, capsys):
    for p in run_copy.glob("checkpoint_epoch*.pt"):
        p.unlink()
    before = snapshot(run_copy)
    code, _, err = run(
        capsys,
        ["train", "--out", run_copy, "--resume", "--lr", "0.5", "--method", "crown-ibp", "--quiet"],
    )
    one_error(code, err, "--resume", str(run_copy), "checkpoint_epoch")
    assert snapshot(run_copy) == before


def test_resume_failing_on_a_broken_train_h5_keeps_config_json(run_copy, capsys):
    (run_copy / "train.h5").write_text("garbage\n")
    before = snapshot(run_copy)
    code, _, err = run(capsys, ["train", "--out", run_copy, "--resume", "--epochs", "3", "--quiet"])
    one_error(code, err, "train.h5")
    assert snapshot(run_copy) == before
    assert json.loads((run_copy / "config.json").read_text())["epochs"] == 1


# ----------------------------------------------------------------------------- loading never runs code
@pytest.mark.parametrize("name", ["this:s", "os:getcwd", "evil.py:run"])
def test_a_checkpoint_naming_code_as_its_model_is_refused_without_importing(
    run_dir, tmp_path, capsys, name
):
    import subprocess
    import sys

    import torch

    c = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    c["model"]["name"] = name
    (tmp_path / "evil.py").write_text(
        "open('RAN', 'w').write('x')\ndef run(*a, **k):\n    open('RAN', 'w')\n"
    )
    bad = tmp_path / "e.pt"
    torch.save(c, bad)
    code = (
        "import sys\nfrom landscape.cli import main\nrc = main(sys.argv[1:])\n"
        "print('IMPORTED' if 'this' in sys.modules else 'clean')\nsys.exit(rc)"
    )
    for args in (
        ["certify", bad],
        ["scan", bad, "--kind", "random-1d", "--points", "3", "--out", tmp_path / "s.h5"],
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "interpolate",
            "--to",
            bad,
            "--points",
            "3",
            "--out",
            tmp_path / "i.h5",
        ],
    ):
        p = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        one_error(
            p.returncode, p.stderr, name, "not a model of the zoo", "never imports or runs code"
        )
        assert "Zen of Python" not in p.stdout and p.stdout.strip() == "clean", p.stdout
        assert not (tmp_path / "RAN").exists()
        assert not (tmp_path / "s.h5").exists() and not (tmp_path / "i.h5").exists()


# ----------------------------------------------------------------------------- symlinks written through
def test_symlinked_outputs_are_written_through(run_dir, tmp_path, capsys):
    import os

    from common import store

    (tmp_path / "target").mkdir()
    link = tmp_path / "link.h5"
    os.symlink("target/real.h5", link)
    code, _, err = run(
        capsys,
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "random-2d",
            "--points",
            "3",
            "--samples",
            "8",
            "--quiet",
            "--out",
            link,
        ],
    )
    assert code == 0, err
    assert link.is_symlink() and (tmp_path / "target" / "real.h5").is_file()
    assert store.read(link)["attrs"]["complete"] is True
    vtk = tmp_path / "vtk"
    vtk.mkdir()
    (tmp_path / "target" / "real.vtu").write_text("old")
    os.symlink(tmp_path / "target" / "real.vtu", vtk / "link_ibp.vtu")
    code, _, err = run(capsys, ["export", link, "--format", "vtk", "--out", vtk])
    assert code == 0, err
    assert (vtk / "link_ibp.vtu").is_symlink() and (
        tmp_path / "target" / "real.vtu"
    ).read_bytes() != b"old"
    (tmp_path / "t2").mkdir()
    os.symlink(tmp_path / "t2" / "c.json", tmp_path / "cfg.json")
    from landscape.runs import write_config_json

    write_config_json(tmp_path / "cfg.json", {"a": 1})
    assert (tmp_path / "cfg.json").is_symlink() and json.loads(
        (tmp_path / "t2" / "c.json").read_text()
    ) == {"a": 1}
    import torch

    from train.checkpoint import load_checkpoint, save_checkpoint

    os.symlink(tmp_path / "t2" / "m.pt", tmp_path / "m.pt")
    c = load_checkpoint(run_dir / "checkpoint.pt")
    model = torch.nn.Linear(2, 2)
    assert (
        save_checkpoint(
            tmp_path / "m.pt",
            model,
            model_desc={"name": "custom"},
            config=c["config"],
            epoch=1,
            step=1,
        )
        == tmp_path / "m.pt"
    )
    assert (tmp_path / "m.pt").is_symlink() and (tmp_path / "t2" / "m.pt").is_file()


# ----------------------------------------------------------------------------- malformed and newer files
def _crafted(run_dir, tmp_path, change) -> Path:
    import torch

    c = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(c)
    p = tmp_path / "crafted.pt"
    torch.save(c, p)
    return p


@pytest.mark.parametrize(
    "change,words",
    [
        (
            lambda c: c["state_dict"].__setitem__(next(iter(c["state_dict"])), "abc"),
            ["state_dict entry", "not a tensor"],
        ),
        (lambda c: c.__setitem__("format_version", [1]), ["format_version", "not a number"]),
        (lambda c: c.__setitem__("format_version", None), ["format_version", "not a number"]),
        (lambda c: c.__setitem__("format_version", "abc"), ["format_version", "not a number"]),
        (lambda c: c["config"].__setitem__("eps", "abc"), ["'eps'", "not a number"]),
        (lambda c: c["model"].__setitem__("version", 3), ["model description version 3", "newer"]),
    ],
)
def test_malformed_checkpoints_are_one_line_naming_file_and_key(
    run_dir, tmp_path, capsys, change, words
):
    p = _crafted(run_dir, tmp_path, change)
    code, _, err = run(capsys, ["certify", p, "--pgd-steps", "1", "--test-size", "8"])
    one_error(code, err, *words)
    if "version 3" not in words[0]:
        assert "crafted.pt" in err


def test_an_unsafe_pickle_names_what_it_would_have_run(tmp_path, capsys):
    import os as _os

    import torch

    class Evil:
        def __reduce__(self):
            return (_os.system, ("true",))

    p = tmp_path / "evil.pt"
    torch.save({"a": Evil()}, p)
    code, _, err = run(capsys, ["certify", p])
    one_error(code, err, "posix.system", "blocked")
    assert not err.rstrip().endswith("(Weights only load failed)")


def test_files_of_a_newer_schema_are_refused_not_relabelled(run_dir, tmp_path, capsys):
    import h5py

    from common import store

    scan = tmp_path / "s.h5"
    args = [
        "scan",
        run_dir / "checkpoint.pt",
        "--kind",
        "random-1d",
        "--points",
        "3",
        "--samples",
        "8",
        "--quiet",
        "--out",
        scan,
    ]
    assert run(capsys, args)[0] == 0
    with h5py.File(scan, "r+") as f:
        f.attrs["schema_version"] = 4
        f.attrs["complete"] = False
    before = scan.read_bytes()
    code, _, err = run(capsys, args)
    one_error(code, err, "schema_version 4", "s.h5")
    assert scan.read_bytes() == before
    code, _, err = run(capsys, ["export", scan, "--out", tmp_path / "vtk"])
    one_error(code, err, "schema_version 4")
    h5 = tmp_path / "t.h5"
    store.append_rows(h5, "steps", {"a": [1.0]})
    with h5py.File(h5, "r+") as f:
        f.attrs["schema_version"] = 9
    before = h5.read_bytes()
    with pytest.raises(store.StoreError, match="schema_version 9"):
        store.append_rows(h5, "steps", {"a": [2.0]})
    assert h5.read_bytes() == before


# ----------------------------------------------------------------------------- certify --out checked first
def test_certify_out_is_checked_before_the_certification(run_dir, tmp_path, capsys, monkeypatch):
    import landscape.certification as certification

    ran = []
    real = certification.certify_rows
    monkeypatch.setattr(
        certification, "certify_rows", lambda *a, **k: ran.append(1) or real(*a, **k)
    )
    base = [
        "certify",
        run_dir / "checkpoint.pt",
        "--eps",
        "0.05",
        "--pgd-steps",
        "1",
        "--test-size",
        "8",
    ]
    (tmp_path / "afile").write_text("x")
    code, out, err = run(capsys, [*base, "--out", tmp_path / "afile" / "sub" / "cert.h5"])
    one_error(code, err, "--out", "afile", "not a writable folder")
    assert not ran and not out
    real_access = certification.os.access
    monkeypatch.setattr(
        certification.os,
        "access",
        lambda p, m: False if str(p).endswith("readonly_dir") else real_access(p, m),
    )
    (tmp_path / "readonly_dir").mkdir()
    code, out, err = run(capsys, [*base, "--out", tmp_path / "readonly_dir" / "cert.h5"])
    one_error(code, err, "--out", "not a writable folder")
    assert not ran and not list((tmp_path / "readonly_dir").iterdir())
    code, out, err = run(capsys, [*base, "--out", tmp_path / "nodir" / "sub" / "cert.h5"])
    assert code == 0, err
    assert ran and (tmp_path / "nodir" / "sub" / "cert.h5").is_file()


# ----------------------------------------------------------------------------- float32 overflow of the grid
@pytest.mark.parametrize(
    "extra,words",
    [
        (["--kind", "random-1d", "--range=1e308,1.7e308", "--points", "3"], ["--range", "float32"]),
        (["--kind", "random-1d", "--range=0,1e39", "--points", "3"], ["--range", "float32"]),
        (["--kind", "gradient", "--t-min", "1e-300", "--t-max", "1e300"], ["--t-min", "float32"]),
        (["--kind", "gradient", "--t-min", "1", "--t-max", "1.00000001"], ["--t-min", "float32"]),
    ],
)
def test_a_grid_that_overflows_float32_is_refused_first(run_dir, tmp_path, capsys, extra, words):
    out = tmp_path / "t.h5"
    code, _, err = run(
        capsys,
        ["scan", run_dir / "checkpoint.pt", *extra, "--samples", "8", "--quiet", "--out", out],
    )
    one_error(code, err, *words)
    assert not out.exists()


# ----------------------------------------------------------------------------- user code that misbehaves
USER = """
import sys
import numpy as np
import torch
from torch import nn


def data(big=False):
    g = np.random.default_rng(0)
    x = g.random((40, 1, 4, 4)).astype("float32")
    y = np.arange(40) % 2
    return x, y, x[:10], y[:10]


def huge():
    x, y, vx, vy = data()
    y = y.copy()
    y[3] = 1_000_000
    return x, y, vx, vy


def leaves():
    sys.exit(0)


def net(shape, n):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, n))


def nan_net(shape, n):
    m = net(shape, n)
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    return m


def exit_net(shape, n):
    sys.exit(0)
"""


@pytest.mark.parametrize(
    "args,words",
    [
        (
            ["--dataset", "user.py:huge", "--model", "user.py:net"],
            ["train_y[3]", "1000000", "classes"],
        ),
        (
            ["--dataset", "user.py:leaves", "--model", "user.py:net"],
            ["user.py:leaves", "sys.exit(0)"],
        ),
        (
            ["--dataset", "user.py:data", "--model", "user.py:exit_net"],
            ["user.py:exit_net", "sys.exit(0)"],
        ),
        (
            ["--dataset", "user.py:data", "--model", "user.py:nan_net"],
            ["user.py:nan_net", "NaN", "'1.weight'"],
        ),
    ],
)
def test_user_code_that_misbehaves_is_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, args, words
):
    (tmp_path / "user.py").write_text(USER)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        capsys,
        [
            "train",
            *args,
            "--method",
            "ibp",
            "--epochs",
            "1",
            "--batch-size",
            "20",
            "--quiet",
            "--out",
            "x",
        ],
    )
    one_error(code, err, *words)
    assert not (tmp_path / "x").exists()


def test_an_unwritable_compile_cache_fails_before_any_work(run_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "cache"
    monkeypatch.setenv("LANDSCAPE_COMPILE_CACHE", str(bad))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    code, _, err = run(
        capsys, ["train", *TINY, "--method", "crown-ibp", "--compile", "--out", tmp_path / "x"]
    )
    one_error(code, err, "--compile", str(bad), "LANDSCAPE_COMPILE_CACHE")
    assert not (tmp_path / "x").exists()
    code, _, err = run(
        capsys,
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "random-1d",
            "--points",
            "3",
            "--compile",
            "--quiet",
            "--out",
            tmp_path / "s.h5",
        ],
    )
    one_error(code, err, "--compile", str(bad))
    assert not (tmp_path / "s.h5").exists()
    code, _, err = run(capsys, ["certify", run_dir / "checkpoint.pt", "--compile"])
    one_error(code, err, "--compile", str(bad))


# ----------------------------------------------------------------------------- options checked first
def test_seeds_beyond_int64_are_refused_before_anything_is_written(tmp_path, capsys):
    big = "100000000000000000000000"
    code, _, err = run(capsys, ["train", *TINY, "--seed", big, "--out", tmp_path / "x"])
    one_error(code, err, "seed")
    assert not (tmp_path / "x").exists()
    code, _, err = run(
        capsys,
        [
            "reproduce",
            "--profile",
            "quick",
            "--dataset",
            "digits",
            "--seeds",
            f"0,{big}",
            "--dry-run",
            "--out",
            tmp_path / "r",
        ],
    )
    assert code != 0 and "--seeds" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    code, _, err = run(capsys, ["train", *TINY, "--seed", str(2**63 - 1), "--out", tmp_path / "ok"])
    assert code == 0, err


def test_a_surface_of_one_point_is_refused(run_dir, tmp_path, capsys):
    code, _, err = run(
        capsys,
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "random-2d",
            "--points",
            "1",
            "--quiet",
            "--out",
            tmp_path / "p.h5",
        ],
    )
    one_error(code, err, "--points", "at least 2")
    assert not (tmp_path / "p.h5").exists()


def test_hessian_top_k_beyond_the_parameters_blames_top_k(tmp_path, capsys):
    lin = tmp_path / "lin"
    assert (
        run(
            capsys,
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--model-option",
                "widths=[2]",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--test-size",
                "32",
                "--quiet",
                "--out",
                lin,
            ],
        )[0]
        == 0
    )
    code, _, err = run(
        capsys,
        [
            "scan",
            lin / "checkpoint.pt",
            "--kind",
            "hessian",
            "--methods",
            "clean",
            "--top-k",
            "200",
            "--quiet",
            "--out",
            tmp_path / "h.h5",
        ],
    )
    line = one_error(code, err, "--top-k", "160 parameters")
    assert "--lanczos-steps" not in line


def test_samples_beyond_the_split_record_what_was_used(run_dir, tmp_path, capsys):
    from common import store

    out = tmp_path / "s.h5"
    code, _, err = run(
        capsys,
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "random-1d",
            "--points",
            "3",
            "--split",
            "test",
            "--samples",
            "500",
            "--quiet",
            "--out",
            out,
        ],
    )
    assert code == 0, err
    assert json.loads(store.read(out)["attrs"]["args_json"])["samples"] == 32


# ----------------------------------------------------------------------------- export
def _scan2d(path, labels, values=None):

    from common import store

    s = store.create_scan(
        str(path),
        kind="random-2d",
        args={"k": 1},
        coords={"x": [0.0, 1.0], "y": [0.0, 1.0]},
        labels=labels,
    )
    for lab in labels:
        for i in range(4 if values is not None else 0):
            s.set_point(lab, i, {"loss": float(values)})
    s.flush()
    return path


def test_export_refuses_empty_colliding_and_damaged_scans(tmp_path, capsys):
    import h5py

    empty = _scan2d(tmp_path / "empty.h5", ["ibp"])
    code, _, err = run(capsys, ["export", empty, "--out", tmp_path / "v1"])
    one_error(code, err, "empty.h5", "no computed point")
    assert not (tmp_path / "v1").exists()
    both = _scan2d(tmp_path / "both.h5", ["a/b", "a_b"], values=1.0)
    code, _, err = run(capsys, ["export", both, "--out", tmp_path / "v2"])
    one_error(code, err, "'a/b'", "'a_b'", "both_a_b.vtu")
    assert not (tmp_path / "v2").exists()
    ghost = _scan2d(tmp_path / "ghost.h5", ["ibp"], values=1.0)
    with h5py.File(ghost, "r+") as f:
        f.attrs["labels"] = '["ibp", "ghost"]'
    code, _, err = run(capsys, ["export", ghost, "--out", tmp_path / "v3"])
    one_error(code, err, "ghost.h5", "damaged", "'ghost'")


def test_export_on_a_full_disk_names_the_file_and_leaves_no_temporary(
    tmp_path, capsys, monkeypatch
):
    import errno

    import pyevtk.hl

    src = _scan2d(tmp_path / "s.h5", ["ibp"], values=1.0)

    def full(path, *a, **k):
        with open(path + ".vtu", "wb") as fh:
            fh.write(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyevtk.hl, "unstructuredGridToVTK", full)
    code, _, err = run(capsys, ["export", src, "--out", tmp_path / "vtk"])
    one_error(code, err, "s_ibp.vtu", "disk is full")
    assert list((tmp_path / "vtk").iterdir()) == []


def test_config_json_is_written_atomically(run_copy, capsys, monkeypatch):
    """A full disk while config.json is written leaves the old one, not an empty file."""
    import errno

    import landscape.runs as runs

    before = (run_copy / "config.json").read_bytes()
    real = Path.write_text

    def full(self, text, *a, **k):
        if ".tmp" in self.name:
            real(self, "", *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="disk is full"):
        runs.write_config_json(run_copy / "config.json", {"epochs": 3})
    assert (run_copy / "config.json").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_a_pca_trajectory_from_another_run_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    code, _, err = run(capsys, ["train", *TINY, "--method", "ibp", "--seed", "5", "--out", other])
    assert code == 0, err
    code, _, err = run(
        capsys,
        [
            "scan",
            run_dir / "checkpoint.pt",
            "--kind",
            "pca",
            "--trajectory",
            f"{other}/checkpoint_*.pt",
            "--points",
            "3",
            "--quiet",
            "--out",
            tmp_path / "p.h5",
        ],
    )
    one_error(code, err, "another run", "seed")
    assert not (tmp_path / "p.h5").exists()


# ----------------------------------------------------------------------------- reproduce settings
SETTING = """dataset: digits
model: mlp
{extra}
epochs: 1
reproduce:
  profile: hostile
  setting: {name}
"""


@pytest.mark.parametrize(
    "name,extra,words",
    [
        ("../escaped", "eps: 0.1", ["reproduce.setting", "plain name", "../escaped"]),
        ("ok", "eps: 0.1\nbatch_sise: 32", ["h.yaml", "batch_sise"]),
        ("ok", "eps: abc", ["h.yaml", "eps"]),
    ],
)
def test_bad_reproduce_settings_are_one_line_naming_the_file(
    tmp_path, capsys, monkeypatch, name, extra, words
):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "h.yaml").write_text(SETTING.format(name=name, extra=extra))
    monkeypatch.setenv("LANDSCAPE_CONFIGS", str(folder))
    out = tmp_path / "sub" / "out"
    code, _, err = run(capsys, ["reproduce", "--profile", "hostile", "--dry-run", "--out", out])
    one_error(code, err, *words)
    assert not (tmp_path / "sub").exists() and not (tmp_path / "escaped").exists()


def test_a_setting_without_eps_gets_the_training_default(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "h.yaml").write_text(SETTING.format(name="ok", extra=""))
    monkeypatch.setenv("LANDSCAPE_CONFIGS", str(folder))
    code, out, err = run(
        capsys, ["reproduce", "--profile", "hostile", "--dry-run", "--out", tmp_path / "o"]
    )
    assert code == 0, err
    assert "eps=0.1 " in out and "at eps 0.1 " in out


def test_reproduce_with_an_empty_data_dir_does_not_switch_dataset(tmp_path, capsys):
    (tmp_path / "EMPTY").mkdir()
    code, out, err = run(
        capsys,
        [
            "reproduce",
            "--profile",
            "quick",
            "--data-dir",
            tmp_path / "EMPTY",
            "--dry-run",
            "--out",
            tmp_path / "x",
        ],
    )
    one_error(code, err, "--data-dir", "fashion-mnist", "--dataset")
    assert "digits" not in out

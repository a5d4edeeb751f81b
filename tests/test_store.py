"""common.store: round trips, atomic writes, scan files, resume and refusal."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from common import store


def _bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_append_rows_round_trip(tmp_path):
    p = tmp_path / "train.h5"
    store.write_attrs(
        p,
        {
            "kind": "train",
            "eps": 0.1,
            "widths": [64, 64],
            "cfg": {"a": 1, "b": [1, 2]},
            "none": None,
            "flag": True,
            "np": np.float32(2.5),
        },
    )
    store.append_rows(
        p, "steps", {"step": np.arange(3), "loss": np.array([3.0, 2.0, 1.0], np.float32)}
    )
    store.append_rows(p, "steps", {"step": 3, "loss": 0.5})
    d = store.read(p)
    assert d["attrs"]["schema_version"] == store.SCHEMA_VERSION
    assert d["attrs"]["kind"] == "train" and d["attrs"]["eps"] == 0.1
    assert d["attrs"]["widths"] == [64, 64] and d["attrs"]["cfg"] == {"a": 1, "b": [1, 2]}
    assert d["attrs"]["none"] is None and d["attrs"]["flag"] is True and d["attrs"]["np"] == 2.5
    np.testing.assert_array_equal(d["steps"]["step"], [0, 1, 2, 3])
    np.testing.assert_array_equal(d["steps"]["loss"], np.array([3, 2, 1, 0.5], np.float32))
    assert d["steps"]["loss"].dtype == np.float32


def test_append_rows_new_and_missing_columns_are_filled(tmp_path):
    p = tmp_path / "t.h5"
    store.append_rows(p, "steps", {"step": [0, 1], "loss": [1.0, 2.0]})
    store.append_rows(p, "steps", {"step": [2], "u": [0.5]})
    g = store.read(p)["steps"]
    np.testing.assert_array_equal(g["step"], [0, 1, 2])
    np.testing.assert_array_equal(g["loss"], [1.0, 2.0, np.nan])
    np.testing.assert_array_equal(g["u"], [np.nan, np.nan, 0.5])
    store.append_rows(p, "probes", {"t": np.zeros((2, 3))})
    assert store.read(p)["probes"]["t"].shape == (2, 3)
    store.append_rows(
        p, "results", {"method": np.asarray(["ibp", "crown"], dtype=object), "eps": [0.1, 0.2]}
    )
    store.append_rows(p, "results", {"eps": [0.3]})
    assert store.read(p)["results"]["method"].tolist() == ["ibp", "crown", ""]


def test_truncate_rows_keeps_rows_below_the_limit(tmp_path):
    path = str(tmp_path / "run.h5")
    store.append_rows(
        path, "steps", {"step": np.arange(5), "loss": np.linspace(1, 2, 5), "g": np.ones((5, 3))}
    )
    assert store.truncate_rows(path, "steps", "step", 3) == 2
    got = store.read(path)["steps"]
    assert got["step"].tolist() == [0, 1, 2] and got["g"].shape == (3, 3)
    np.testing.assert_allclose(got["loss"], np.linspace(1, 2, 5)[:3])
    assert store.truncate_rows(path, "steps", "step", 3) == 0
    assert store.truncate_rows(path, "probes", "step", 0) == 0  # absent group: nothing to do
    assert store.truncate_rows(str(tmp_path / "none.h5"), "steps", "step", 0) == 0
    store.append_rows(path, "steps", {"step": [3], "loss": [5.0], "g": np.zeros((1, 3))})
    assert store.read(path)["steps"]["step"].tolist() == [0, 1, 2, 3]


def test_append_rows_bad_input(tmp_path):
    p = tmp_path / "t.h5"
    with pytest.raises(ValueError, match="equal length"):
        store.append_rows(p, "steps", {"a": [1, 2], "b": [1]})
    assert not p.exists()
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        store.append_rows(tmp_path / "junk.h5", "steps", {"a": [1]})
    assert (tmp_path / "junk.h5").read_text() == "not hdf5"
    with pytest.raises(FileNotFoundError):
        store.read(tmp_path / "missing.h5")


def test_crash_mid_write_leaves_old_file(tmp_path, monkeypatch):
    p = tmp_path / "t.h5"
    store.append_rows(p, "steps", {"step": [0, 1], "loss": [1.0, 2.0]})
    before = _bytes(p)

    real_resize = h5py.Dataset.resize
    calls = {"n": 0}

    def crashing_resize(self, *a, **k):  # the first column is extended, then the "crash"
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        return real_resize(self, *a, **k)

    monkeypatch.setattr(h5py.Dataset, "resize", crashing_resize)
    with pytest.raises(OSError, match="simulated crash"):
        store.append_rows(p, "steps", {"step": [2], "loss": [3.0]})
    monkeypatch.setattr(h5py.Dataset, "resize", real_resize)
    assert _bytes(p) == before
    assert sorted(os.listdir(tmp_path)) == ["t.h5"]  # no temporary file left behind

    def failing_replace(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store.files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        store.write_attrs(p, {"x": 1})
    assert _bytes(p) == before
    assert sorted(os.listdir(tmp_path)) == ["t.h5"]


def _new_scan(path, args=None):
    return store.create_scan(
        path,
        kind="random-2d",
        args=args or {"eps": 0.1, "methods": ["ibp", "crown-ibp"]},
        coords={"x": np.linspace(-1, 1, 3), "y": [0.0, 1.0]},
        labels=["ibp", "crown-ibp"],
        fields=["loss", "acc"],
        attrs={"dataset": "digits"},
        arrays={"direction_x": (np.arange(4, dtype=np.float32), {"param_names": ["w"]})},
    )


def test_scan_file_create_resume_and_read(tmp_path):
    p = tmp_path / "s.h5"
    s = _new_scan(p)
    assert s.shape == (3, 2) and s.n_points == 6
    d = store.read(p)
    assert d["attrs"]["complete"] is False and d["attrs"]["dims"] == ["x", "y"]
    assert (
        np.isnan(d["results"]["ibp"]["loss"]).all()
        and d["results"]["ibp"]["loss"].dtype == np.float32
    )
    np.testing.assert_allclose(d["coords"]["x"], [-1, 0, 1])
    s.set_point("ibp", 3, {"loss": 1.5, "acc": 0.5})
    s.set_point("crown-ibp", (1, 1), {"loss": 2.5})
    s.flush()
    r = store.open_scan(p, args={"methods": ["ibp", "crown-ibp"], "eps": 0.1}, kind="random-2d")
    assert r.data["ibp"]["loss"][1, 1] == np.float32(1.5)
    np.testing.assert_array_equal(r.missing("ibp"), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(r.missing(), [0, 1, 2, 4, 5])
    assert r.missing("crown-ibp").tolist() == [0, 1, 2, 4, 5]
    arr, attrs = store.read_array(p, "direction_x")
    np.testing.assert_array_equal(arr, np.arange(4)) and None
    assert attrs["param_names"] == ["w"]
    with pytest.raises(ValueError, match="not one of"):
        r.set_point("ibp", 0, {"nope": 1.0})
    for i in r.missing():
        for lab in r.labels:
            r.set_point(lab, int(i), {"loss": 0.0})
    r.label_attrs["ibp"] = {"loss_variation": 1.5}
    r.flush(complete=True)
    d = store.read(p)
    assert d["attrs"]["complete"] is True and d["results"]["ibp"]["attrs"]["loss_variation"] == 1.5


def test_scan_file_refuses_other_arguments(tmp_path):
    p = tmp_path / "s.h5"
    _new_scan(p)
    before = _bytes(p)
    with pytest.raises(store.ScanMismatchError, match="differs in: eps"):
        store.open_or_create_scan(
            p,
            kind="random-2d",
            args={"eps": 0.2, "methods": ["ibp", "crown-ibp"]},
            coords={"x": [0.0]},
            labels=["ibp"],
        )
    with pytest.raises(store.ScanMismatchError, match="kind"):
        store.open_scan(p, kind="gradient")
    with pytest.raises(ValueError, match="already exists"):
        _new_scan(p)
    assert _bytes(p) == before
    other = tmp_path / "train.h5"
    store.append_rows(other, "steps", {"a": [1]})
    with pytest.raises(ValueError, match="not a landscape scan file"):
        store.open_scan(other, args={})


def test_canonical_json_is_order_independent():
    a = store.canonical_json({"b": (1, 2), "a": {"y": 1.0, "x": np.float32(0.5)}})
    b = store.canonical_json({"a": {"x": 0.5, "y": 1.0}, "b": [1, 2]})
    assert a == b


def test_store_does_not_import_torch():
    code = "import sys, common.store; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    """The temporary file is made 0600; the result must get the umask's mode when new, and
    keep its own mode when updated."""
    p = tmp_path / "m.h5"
    old = os.umask(0o022)
    try:
        store.append_rows(p, "g", {"a": [1.0]})
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o644
    os.chmod(p, 0o640)
    store.append_rows(p, "g", {"a": [2.0]})
    assert os.stat(p).st_mode & 0o777 == 0o640


def test_scan_without_grid_holds_one_record_per_label(tmp_path):
    """Schema 3: a scan with no dims (the Hessian's) has one record per label, with per-label
    arrays of any shape and label attributes set with the record; labels resume one by one."""
    p = tmp_path / "h.h5"
    s = store.create_scan(
        p,
        kind="hessian",
        args={"k": 2},
        coords={},
        labels=["clean", "ibp", "tightest"],
        label_arrays=["eigenvalues", "density"],
    )
    assert s.shape == () and s.gridless and s.missing().tolist() == [0, 1, 2]
    s.set_point(
        "ibp",
        1,
        {
            "loss": 2.5,
            "eigenvalues": np.array([3.0, 1.0]),
            "density": np.ones((2, 3)),
            "attrs": {"trace": 4.5},
        },
    )
    with pytest.raises(ValueError, match="record 0, not 2"):
        s.set_point("clean", 2, {"loss": 1.0})
    with pytest.raises(ValueError, match="not one of"):
        s.set_point("clean", 0, {"nope": [1.0]})
    s.flush()
    d = store.read(p)
    assert d["attrs"]["schema_version"] == store.SCHEMA_VERSION == 3 and d["attrs"]["dims"] == []
    assert d["attrs"]["label_arrays"] == ["eigenvalues", "density"]
    r = d["results"]["ibp"]
    assert r["computed"] == 1 and r["loss"] == np.float32(2.5) and r["attrs"] == {"trace": 4.5}
    assert r["eigenvalues"].dtype == np.float64 and r["density"].shape == (2, 3)
    assert d["results"]["clean"]["computed"] == 0 and "eigenvalues" not in d["results"]["clean"]
    again = store.open_scan(p, args={"k": 2}, kind="hessian")
    assert again.missing().tolist() == [0, 2] and again.missing("ibp").tolist() == []
    np.testing.assert_array_equal(again.label_data["ibp"]["eigenvalues"], [3.0, 1.0])
    again.set_point(
        "clean", (), {"loss": 1.0, "eigenvalues": [1.0, 0.5, 0.25]}
    )  # another length is fine
    again.set_point("tightest", 2, {"loss": 3.0})
    again.flush(complete=True)
    final = store.open_scan(p, args={"k": 2})
    assert (
        final.missing().size == 0 and final.complete and final.label_attrs["ibp"] == {"trace": 4.5}
    )
    assert final.label_data["clean"]["eigenvalues"].tolist() == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="label arrays"):
        store.create_scan(
            tmp_path / "bad.h5",
            kind="hessian",
            args={},
            coords={},
            labels=["a"],
            label_arrays=["loss"],
        )


def test_scan_files_of_schema_version_2_are_still_read_and_resumed(tmp_path):
    p = tmp_path / "v2.h5"
    s = _new_scan(p)
    s.set_point("ibp", 0, {"loss": 1.0})
    s.flush()
    with h5py.File(p, "r+") as f:  # version 2 wrote the same layout, with its own number
        f.attrs["schema_version"] = 2
    old = store.open_scan(p, args={"eps": 0.1, "methods": ["ibp", "crown-ibp"]}, kind="random-2d")
    assert old.label_arrays == [] and old.missing().tolist() == [0, 1, 2, 3, 4, 5]
    assert old.missing("ibp").tolist() == [1, 2, 3, 4, 5]
    old.set_point("ibp", 1, {"loss": 2.0})
    old.flush()
    assert store.read(p)["attrs"]["schema_version"] == store.SCHEMA_VERSION

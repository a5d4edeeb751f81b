"""`landscape export`: 2D scans as VTK XML unstructured grids, read back by parsing the XML header and
its raw appended binary blocks; partial scans, and one clear error for everything else."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from common import store
from landscape.cli import main
from landscape.export import VTK_QUAD, VTK_VERTEX, export_scan, surface_cells

VTK_TYPES = {"Float64": "<f8", "Float32": "<f4", "Int64": "<i8", "Int32": "<i4", "UInt8": "u1"}


def read_vtu(path: Path) -> dict:
    """Parse a .vtu file with raw appended data (UInt64 block sizes) into its arrays."""
    raw = Path(path).read_bytes()
    start = raw.index(b"<AppendedData")
    root = ET.fromstring(raw[:start] + b"</VTKFile>")
    assert root.tag == "VTKFile" and root.get("type") == "UnstructuredGrid"
    assert root.get("byte_order") == "LittleEndian" and root.get("header_type") == "UInt64"
    base = raw.index(b"_", start) + 1
    piece = root.find("UnstructuredGrid/Piece")
    out = {
        "n_points": int(piece.get("NumberOfPoints")),
        "n_cells": int(piece.get("NumberOfCells")),
        "point_data": {},
    }
    for section in ("Points", "Cells", "PointData"):
        for arr in piece.find(section):
            pos = base + int(arr.get("offset"))
            size = int(np.frombuffer(raw[pos : pos + 8], dtype="<u8")[0])
            values = np.frombuffer(raw[pos + 8 : pos + 8 + size], dtype=VTK_TYPES[arr.get("type")])
            values = values.reshape(-1, int(arr.get("NumberOfComponents")))
            if section == "PointData":
                out["point_data"][arr.get("Name")] = values[:, 0]
            else:
                out[arr.get("Name")] = values if arr.get("Name") == "points" else values[:, 0]
    assert raw.rstrip().endswith(b"</AppendedData>\n</VTKFile>")
    return out


X = np.linspace(-1, 1, 4)
Y = np.linspace(-0.5, 0.5, 3)


def surface() -> np.ndarray:
    return (1.0 + X[:, None] ** 2 + 2 * Y[None, :] ** 2 + 0.1 * X[:, None] * Y[None, :]).astype(
        np.float32
    )


def make_scan(
    path: Path, values: dict[str, np.ndarray], kind: str = "random-2d", dims=("x", "y")
) -> Path:
    coords = {d: c for d, c in zip(dims, (X, Y))}
    scan = store.create_scan(
        str(path), kind=kind, args={"k": 1}, coords=coords, labels=list(values)
    )
    for label, loss in values.items():
        for index in np.ndindex(loss.shape):
            if np.isfinite(loss[index]):
                scan.set_point(label, index, {"loss": float(loss[index])})
    scan.flush(complete=all(np.isfinite(v).all() for v in values.values()))
    return path


def test_complete_scan_round_trip(tmp_path):
    loss = surface()
    scan = make_scan(tmp_path / "surf.h5", {"crown-ibp": loss, "clean": 2 * loss})
    written = export_scan(scan, tmp_path / "vtk", log=True)
    assert list(written) == ["crown-ibp", "clean"]
    assert written["crown-ibp"] == tmp_path / "vtk" / "surf_crown-ibp.vtu"
    assert sorted(p.name for p in (tmp_path / "vtk").iterdir()) == [
        "surf_clean.vtu",
        "surf_crown-ibp.vtu",
    ]
    for label, factor in (("crown-ibp", 1), ("clean", 2)):
        v = read_vtu(written[label])
        assert v["n_points"] == 12 and v["n_cells"] == 6
        i, j = v["point_data"]["i"], v["point_data"]["j"]
        np.testing.assert_array_equal(i, np.repeat(np.arange(4), 3))  # C order over (i, j)
        np.testing.assert_array_equal(j, np.tile(np.arange(3), 4))
        expected = factor * loss
        np.testing.assert_array_equal(v["point_data"]["loss"], expected[i, j])
        np.testing.assert_allclose(
            v["points"], np.stack([X[i], Y[j], expected[i, j]], axis=1), rtol=1e-7
        )
        np.testing.assert_allclose(v["point_data"]["log_loss"], np.log(expected[i, j]), rtol=1e-6)
        assert (v["types"] == VTK_QUAD).all()
        np.testing.assert_array_equal(v["offsets"], 4 * np.arange(1, 7))
        first = v["connectivity"][:4]  # (0,0) (1,0) (1,1) (0,1): counter-clockwise in (x, y)
        np.testing.assert_array_equal(first, [0, 3, 4, 1])
    plain = export_scan(scan, tmp_path / "nolog")
    assert "log_loss" not in read_vtu(plain["clean"])["point_data"]


def test_partial_scan_leaves_out_points_not_computed(tmp_path):
    loss = surface()
    partial = loss.copy()
    partial[0, 2] = np.nan  # the square (0..1, 1..2) loses a corner
    partial[3, 0] = np.nan
    partial[2, :] = np.nan  # row 2 gone: points of row 3 are left in no square
    partial[3, 1] = np.nan
    empty = np.full_like(loss, np.nan)
    scan = make_scan(tmp_path / "part.h5", {"ibp": partial, "pgd": empty})
    written = export_scan(scan, tmp_path / "out")
    assert written["pgd"] is None and not (tmp_path / "out" / "part_pgd.vtu").exists()
    v = read_vtu(written["ibp"])
    i, j = v["point_data"]["i"], v["point_data"]["j"]
    assert v["n_points"] == int(np.isfinite(partial).sum()) == 6
    assert np.isfinite(partial[i, j]).all() and np.isfinite(v["points"]).all()
    np.testing.assert_array_equal(v["point_data"]["loss"], partial[i, j])
    ids, conn, offsets, types = surface_cells(np.isfinite(partial))
    # one full square (0..1, 0..1); (1, 2) and (3, 2) are in no full square: vertices
    assert list(types) == [VTK_QUAD, VTK_VERTEX, VTK_VERTEX]
    np.testing.assert_array_equal(v["connectivity"], conn)
    np.testing.assert_array_equal(v["types"], types)
    assert [(i[c], j[c]) for c in conn[4:]] == [(1, 2), (3, 2)]
    np.testing.assert_array_equal(v["offsets"], [4, 5, 6])


def test_cli_export_and_its_errors(tmp_path, capsys):
    scan = make_scan(tmp_path / "s.h5", {"ibp": surface()})
    assert (
        main(["export", str(scan), "--format", "vtk", "--out", str(tmp_path / "o"), "--log"]) == 0
    )
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "o" / "s_ibp.vtu") and "wrote 1 file to" in out.err
    assert "log_loss" in read_vtu(tmp_path / "o" / "s_ibp.vtu")["point_data"]

    line = make_scan(tmp_path / "g.h5", {"ibp": surface()[:, 0]}, kind="random-1d", dims=("x",))
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not hdf5")
    train = tmp_path / "train.h5"
    store.write_attrs(str(train), {"kind": "train"})
    cases = [
        ([str(tmp_path / "missing.h5")], "does not exist"),
        ([str(line)], "random-1d scan over (x), not a 2D scan"),
        ([str(not_h5)], "not an HDF5 file"),
        ([str(train)], "not a scan file (kind 'train')"),
        ([str(tmp_path)], "is a directory"),
        ([str(scan), "--format", "stl"], "unknown export format 'stl'; choose one of vtk"),
    ]
    for args, message in cases:
        assert main(["export", *args, "--out", str(tmp_path / "bad")]) != 0
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (
            args,
            err,
        )
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.slow
def test_export_of_a_real_random_2d_scan(tmp_path):
    from train.loop import train

    cfg = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": [8]},
        method="ibp",
        eps=0.1,
        epochs=1,
        batch_size=50,
        train_size=50,
        test_size=10,
        eval_size=0,
    )
    train(cfg, out_dir=tmp_path / "run", progress=False)
    out = tmp_path / "surf.h5"
    assert (
        main(
            [
                "scan",
                str(tmp_path / "run" / "checkpoint.pt"),
                "--kind",
                "random-2d",
                "--points",
                "3",
                "--methods",
                "ibp,clean",
                "--samples",
                "8",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = export_scan(out, tmp_path / "vtk")
    d = store.read(out)
    for label in ("ibp", "clean"):
        v = read_vtu(written[label])
        loss = d["results"][label]["loss"]
        assert v["n_points"] == 9 and v["n_cells"] == 4
        np.testing.assert_array_equal(v["point_data"]["loss"], loss.reshape(-1))
        np.testing.assert_allclose(
            v["points"][:, :2],
            np.stack(np.meshgrid(d["coords"]["x"], d["coords"]["y"], indexing="ij"), -1).reshape(
                -1, 2
            ),
        )

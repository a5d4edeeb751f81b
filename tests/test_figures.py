"""figures/ and `landscape plot`: every plot kind writes non-empty PNG and PDF files from small
synthetic HDF5 files (written with common.store), bad files give one clear error, and
plotting never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from common import store

T = np.array([0.0, 0.5, 1.0, 2.0, 3.5, 5.0])


# ----------------------------------------------------------------------------- synthetic files


def make_gradient_scan(path: Path, methods=("ibp", "crown-ibp"), eps: float = 0.1) -> Path:
    scan = store.create_scan(
        str(path),
        kind="gradient",
        args={"t": T.tolist(), "methods": list(methods)},
        coords={"t": T},
        labels=list(methods),
        fields=["loss", "grad_norm", "cos", "rms", "smoothness"],
        attrs={
            "checkpoint": "runs/demo/checkpoint.pt",
            "dataset": "digits",
            "model": "cnn-tiny",
            "eps": eps,
        },
    )
    for k, m in enumerate(methods):
        rough = 1.0 + 3.0 * k  # the second method is rougher
        for i, t in enumerate(T):
            scan.set_point(
                m,
                i,
                {
                    "loss": 1.0 - 0.1 * t + 0.05 * rough * t**2,
                    "grad_norm": 1.0 + 0.1 * t,
                    "cos": np.exp(-0.1 * rough * t),
                    "rms": 0.01 * rough * t,
                    "smoothness": 0.5 * rough + 0.1 * t,
                },
            )
        scan.label_attrs[m] = {"loss_variation": 0.1 * rough}
    scan.flush(complete=True)
    return path


def make_line_scan(path: Path, kind: str = "random-1d", partial: bool = False) -> Path:
    dim = "alpha" if kind == "interpolate" else "x"
    xs = np.linspace(-0.5, 1.5, 21) if kind == "interpolate" else np.linspace(-1, 1, 21)
    scan = store.create_scan(
        str(path),
        kind=kind,
        args={"k": kind},
        coords={dim: xs},
        labels=["ibp", "tightest"],
        attrs={"checkpoint": "runs/ibp/checkpoint.pt", "dataset": "digits", "eps": 0.1},
    )
    for k, m in enumerate(("ibp", "tightest")):
        for i, x in enumerate(xs):
            if partial and i > 15:
                continue  # NaN: not yet computed
            scan.set_point(m, i, {"loss": 0.5 + (1 + k) * x**2 + 0.05 * np.sin(9 * x)})
    scan.flush(complete=not partial)
    return path


def make_surface_scan(path: Path) -> Path:
    xs, ys = np.linspace(-1, 1, 11), np.linspace(-1, 1, 9)
    scan = store.create_scan(
        str(path),
        kind="random-2d",
        args={"n": 11},
        coords={"x": xs, "y": ys},
        labels=["crown-ibp"],
        attrs={
            "checkpoint": "runs/crown/checkpoint.pt",
            "dataset": "digits",
            "model": "mlp",
            "eps": 0.1,
        },
    )
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            scan.set_point("crown-ibp", (i, j), {"loss": 0.3 + x**2 + 2 * y**2 + 0.2 * abs(x * y)})
    scan.flush(complete=True)
    return path


def make_train_run(
    path: Path, method: str = "ibp", rough: float = 1.0, probes: bool = True, tight: float = 1.0
) -> Path:
    store.write_attrs(
        str(path),
        {
            "kind": "train",
            "method": method,
            "dataset": "digits",
            "model": "cnn-tiny",
            "eps": 0.1,
            "seed": 0,
        },
    )
    n = 60
    step = np.arange(n)
    store.append_rows(
        str(path),
        "steps",
        {
            "step": step,
            "epoch": step // 20,
            "loss": np.exp(-step / 30) + 0.05 * np.cos(step),
            "robust_err": np.clip(0.9 - step / 100, 0, 1),
            "clean_err": np.clip(0.5 - step / 150, 0, 1),
            "eps": np.minimum(0.1, step / 400),
            "unstable_frac_l0": np.full(n, 0.1 * rough),
        },
    )
    store.append_rows(
        str(path),
        "epochs",
        {
            "epoch": np.array([1, 2, 3]),
            "step": np.array([20, 40, 60]),
            "test_clean_err": np.array([0.4, 0.3, 0.2], dtype=np.float32),
            "test_verified_err_ibp": np.array([0.9, 0.7, 0.6], dtype=np.float32),
        },
    )
    if probes:
        rows: dict[str, list] = {
            k: []
            for k in (
                "step",
                "t",
                "loss",
                "loss_final",
                "cos",
                "smoothness",
                "loss_variation",
                "sign_flip",
                "rga_cos",
                "unstable_frac_l0",
                "bound_gap",
            )
        }
        for p in range(0, n, 10):
            loss = 1.0 - 0.1 * T + 0.02 * rough * (1 + p / 20) * T**2
            for i, t in enumerate(T):
                rows["step"].append(p)
                rows["t"].append(t)
                rows["loss"].append(loss[i])
                rows["loss_final"].append(loss[i] + 0.3)
                rows["cos"].append(np.exp(-0.05 * rough * t))
                rows["smoothness"].append(rough * (1 + 0.1 * t))
                rows["loss_variation"].append(loss.max() - loss.min())
                rows["sign_flip"].append(0.01 * rough * t)
                rows["rga_cos"].append(0.9 / rough)
                rows["unstable_frac_l0"].append(0.1 * rough)
                rows["bound_gap"].append(tight)
        store.append_rows(
            str(path), "probes", {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
        )
    return path


def make_certify(path: Path, method: str, base: float) -> Path:
    store.write_attrs(
        str(path), {"kind": "certify", "method": method, "dataset": "digits", "model": "cnn-tiny"}
    )
    eps = np.array([0.05, 0.1, 0.2])
    store.append_rows(
        str(path),
        "results",
        {
            "method": np.array([method] * 3, dtype=object),
            "eps": eps,
            "clean_err": np.full(3, base),
            "pgd_err": base + eps,
            "verified_err": base + 2 * eps,
            "verified_err_ibp": base + 2.5 * eps,
            "verified_err_crown_ibp": base + 2.2 * eps,
            "bound_gap": np.full(3, 0.5),
        },
    )
    return path


def _images_ok(paths: list[Path], stems: list[str], formats=("png", "pdf")) -> None:
    names = {p.name for p in paths}
    for stem in stems:
        for fmt in formats:
            assert f"{stem}.{fmt}" in names, f"missing {stem}.{fmt} in {sorted(names)}"
    for p in paths:
        if p.suffix in (".md", ".tex"):
            assert p.stat().st_size > 50, p
            continue
        assert p.exists() and p.stat().st_size > 1000, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if p.suffix == ".pdf":
            assert p.read_bytes()[:5] == b"%PDF-"


# ----------------------------------------------------------------------------- every plot kind


def test_gradient_scan_figure(tmp_path: Path) -> None:
    import figures

    f = make_gradient_scan(tmp_path / "grad.h5")
    out = figures.plot_file(f, tmp_path / "fig")
    _images_ok(out, ["grad_gradient"])


def test_line_scans_and_overlay(tmp_path: Path) -> None:
    import figures

    a = make_line_scan(tmp_path / "a.h5")
    b = make_line_scan(tmp_path / "b.h5", partial=True)
    c = make_line_scan(tmp_path / "interp.h5", kind="interpolate")
    out = figures.plot_file([a, b, c], tmp_path / "fig")
    _images_ok(out, ["a_random-1d", "b_random-1d", "compare_random-1d", "interp_interpolate"])


def test_surface_with_3d(tmp_path: Path) -> None:
    import figures

    f = make_surface_scan(tmp_path / "surf.h5")
    out = figures.plot_file(f, tmp_path / "fig", surface3d=True)
    _images_ok(
        out, ["surf_random-2d_contour", "surf_random-2d_heatmap", "surf_random-2d_surface3d"]
    )
    out2 = figures.plot_file(f, tmp_path / "fig2", formats="png")
    assert not any("surface3d" in p.name for p in out2)


def test_training_runs_compare_and_tables(tmp_path: Path) -> None:
    import figures

    runs = []
    for m, rough, tight in (("ibp", 1.0, 3.0), ("crown-ibp", 4.0, 0.5), ("tightest", 1.5, 0.6)):
        (tmp_path / m).mkdir()
        runs.append(make_train_run(tmp_path / m / "train.h5", m, rough, tight=tight))
    certs = [
        make_certify(tmp_path / m / "certify.h5", m, b)
        for m, b in (("ibp", 0.1), ("crown-ibp", 0.2))
    ]
    out = figures.plot_file(runs + certs, tmp_path / "fig")
    _images_ok(
        out,
        [
            "compare_training_curves",
            "compare_probes",
            "compare_loss_variation_over_training",
            "compare_grad_cosine_over_training",
            "compare_gradient_direction_over_training",
            "compare_tightness_vs_smoothness",
            "compare_verified_error_vs_eps",
        ],
    )
    md = (tmp_path / "fig" / "compare_verified_error.md").read_text()
    tex = (tmp_path / "fig" / "compare_verified_error.tex").read_text()
    assert "| IBP | 0.05 |" in md and "CROWN-IBP" in md and "30.0" in md  # 0.1 + 2*0.1
    assert r"\toprule" in tex and r"\textbf{" in tex and "CROWN-IBP" in tex


def test_probe_statistics_are_reduced_per_probe(tmp_path: Path) -> None:
    from figures import data, training

    run = data.load(make_train_run(tmp_path / "train.h5", "ibp", rough=2.0))
    assert run.probes["loss"].shape == (6, T.size)
    np.testing.assert_allclose(run.probe_t, T)
    np.testing.assert_allclose(training.probe_x(run), np.arange(0, 60, 10))
    cos = training.probe_stat(run, "grad_cosine")
    np.testing.assert_allclose(cos, np.exp(-0.1 * T[1:]).mean(), rtol=1e-5)  # mean over t > 0
    np.testing.assert_allclose(training.probe_stat(run, "unstable_frac"), 0.2, rtol=1e-5)
    np.testing.assert_allclose(training.probe_stat(run, "rga_cosine"), 0.45, rtol=1e-5)


def test_resumed_run_keeps_the_last_row_of_each_step(tmp_path: Path) -> None:
    from figures import data

    f = make_train_run(tmp_path / "train.h5", probes=False)
    store.append_rows(str(f), "steps", {"step": np.array([58, 59]), "loss": np.array([7.0, 8.0])})
    run = data.load(f)
    np.testing.assert_array_equal(run.steps["step"], np.arange(60))
    assert run.steps["loss"][58] == 7.0 and run.steps["loss"][59] == 8.0


def test_single_train_run_without_probes(tmp_path: Path) -> None:
    import figures

    f = make_train_run(tmp_path / "train.h5", probes=False)
    out = figures.plot_file(f, tmp_path / "fig", formats="png")
    _images_ok(out, ["train_training_curves"], formats=("png",))
    assert not any("probes" in p.name for p in out)


def test_verified_error_table_markdown_values() -> None:
    from figures.tables import verified_error_latex, verified_error_markdown

    rows = [
        {"method": "tightest", "eps": 0.1, "clean_err": 0.2, "pgd_err": 0.3, "verified_err": 0.4},
        {"method": "ibp", "eps": 0.1, "clean_err": 0.25, "pgd_err": 0.35, "verified_err": 0.45},
    ]
    md = verified_error_markdown(rows).splitlines()
    assert md[2].startswith("| IBP | 0.1 | 25.0 | 35.0 | 45.0 |")
    assert md[3].startswith("| Tightest | 0.1 | 20.0 | 30.0 | 40.0 |")
    tex = verified_error_latex(rows)
    assert r"\textbf{40.0}" in tex and r"\textbf{45.0}" not in tex
    with pytest.raises(ValueError, match="no certification results"):
        verified_error_markdown([])


# ----------------------------------------------------------------------------- bad input


def test_unknown_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    import figures

    f = make_gradient_scan(tmp_path / "grad.h5")
    with h5py.File(f, "r+") as h:
        h.attrs["schema_version"] = store.SCHEMA_VERSION + 7
    with pytest.raises(ValueError, match=r"schema_version .* not supported"):
        figures.plot_file(f, tmp_path / "fig")


def test_missing_arrays_are_a_clear_error(tmp_path: Path) -> None:
    import figures

    f = make_gradient_scan(tmp_path / "grad.h5")
    with h5py.File(f, "r+") as h:
        del h["results/ibp/loss"]
    with pytest.raises(ValueError, match=r"missing array results/ibp/loss"):
        figures.plot_file(f, tmp_path / "fig")
    g = make_surface_scan(tmp_path / "surf.h5")
    with h5py.File(g, "r+") as h:
        del h["coords"]
    with pytest.raises(ValueError, match=r"missing group coords"):
        figures.plot_file(g, tmp_path / "fig")


def test_unknown_kind_no_schema_and_not_hdf5(tmp_path: Path) -> None:
    import figures

    f = tmp_path / "odd.h5"
    store.write_attrs(str(f), {"kind": "banana"})
    with pytest.raises(ValueError, match="unknown result kind 'banana'"):
        figures.plot_file(f, tmp_path / "fig")
    g = tmp_path / "bare.h5"
    with h5py.File(g, "w") as h:
        h.attrs["kind"] = "gradient"
    with pytest.raises(ValueError, match="no schema_version"):
        figures.plot_file(g, tmp_path / "fig")
    txt = tmp_path / "notes.h5"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        figures.plot_file(txt, tmp_path / "fig")
    with pytest.raises(FileNotFoundError):
        figures.plot_file(tmp_path / "missing.h5", tmp_path / "fig")
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        figures.plot_file(make_gradient_scan(tmp_path / "g.h5"), tmp_path / "fig", formats=("gif",))


# ----------------------------------------------------------------------------- CLI and torch-free


def test_plot_command(tmp_path: Path) -> None:
    from landscape.cli import main

    a = make_gradient_scan(tmp_path / "a.h5")
    b = make_gradient_scan(tmp_path / "b.h5", methods=("tightest",))
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "o"), "--format", "png"]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["a_gradient.png", "b_gradient.png", "compare_gradient.png"]


def test_plot_command_bad_input(tmp_path: Path, capsys) -> None:
    from landscape.cli import main

    assert main(["plot", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o")]) != 0
    bad = tmp_path / "bad.h5"
    store.write_attrs(str(bad), {"kind": "gradient", "schema_version": 99})
    assert main(["plot", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "schema_version 99" in err and "Traceback" not in err
    ok = make_gradient_scan(tmp_path / "ok.h5")
    assert main(["plot", str(ok), "--out", str(tmp_path / "o"), "--format", "png,bmp"]) != 0


def test_figures_never_import_torch(tmp_path: Path) -> None:
    grad = make_gradient_scan(tmp_path / "g.h5")
    run = make_train_run(tmp_path / "train.h5", probes=False)
    code = (
        "import sys, figures\n"
        f"figures.plot_file({json.dumps([str(grad), str(run)])}, {str(tmp_path / 'o')!r}, formats=('png',))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _capture_figures(monkeypatch, module) -> list:
    """Keep the figures ``module`` saves (instead of closing them) so tests can inspect them."""
    kept = []

    def keep(fig, out_dir, stem, formats=("png",)):
        kept.append(fig)
        return []

    monkeypatch.setattr(module, "save", keep)
    return kept


def test_partial_line_scan_draws_every_computed_point(tmp_path: Path, monkeypatch) -> None:
    """A scan filled out of order (e.g. resumed, or split across processes) has computed points
    with NaN neighbours on both sides; each must still be visible, not only the segments."""
    from figures import curves, data

    xs = np.linspace(-1, 1, 9)
    path = tmp_path / "holes.h5"
    scan = store.create_scan(
        str(path),
        kind="random-1d",
        args={"k": 1},
        coords={"x": xs},
        labels=["ibp"],
        attrs={"checkpoint": "runs/ibp/checkpoint.pt", "eps": 0.1},
    )
    for i in range(0, xs.size, 2):  # every other point computed
        scan.set_point("ibp", i, {"loss": 1.0 + xs[i] ** 2})
    scan.flush(complete=False)
    figs = _capture_figures(monkeypatch, curves)
    curves.plot_line_scans([data.load(path)], tmp_path, "holes", ("png",))
    ax = figs[0].axes[0]
    drawn = [
        ln
        for ln in ax.get_lines()
        if np.isfinite(np.asarray(ln.get_ydata(), dtype=float)).any()
        and ln.get_marker() not in (None, "None", "", " ")
    ]
    shown = {
        round(float(x), 6)
        for ln in drawn
        for x, y in zip(ln.get_xdata(), ln.get_ydata())
        if np.isfinite(y)
    }
    assert shown >= {round(float(x), 6) for x in xs[::2]}, "isolated computed points are not drawn"


def test_a_scan_without_computed_points_is_nothing_to_draw(tmp_path: Path, capsys) -> None:
    """A scan whose points are not computed yet is one clear error and a non-zero exit, not an
    empty figure."""
    import figures
    from landscape.cli import main

    path = tmp_path / "fresh.h5"
    scan = store.create_scan(
        str(path),
        kind="gradient",
        args={"t": T.tolist()},
        coords={"t": T},
        labels=["ibp"],
        fields=["loss", "cos"],
        attrs={"eps": 0.1},
    )
    scan.flush(complete=False)
    with pytest.raises(
        ValueError, match="nothing to draw in .*fresh.h5: no point of the scan is computed"
    ):
        figures.plot_file(path, tmp_path / "fig", formats="png")
    assert main(["plot", str(path), "--out", str(tmp_path / "fig2"), "--format", "png"]) == 1
    assert "nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "fig2").exists() or not any((tmp_path / "fig2").iterdir())
    scan.set_point("ibp", 2, {"loss": 1.0, "cos": 0.5})  # one point is enough to draw
    scan.flush(complete=False)
    assert figures.plot_file(path, tmp_path / "fig3", formats="png")


def test_probe_panel_legend_names_every_run(tmp_path: Path, monkeypatch) -> None:
    """A run that lacks the first panel's statistic still gets its legend entry."""
    from figures import data, training

    a = data.load(make_train_run(tmp_path / "a.h5", "ibp"))
    b_path = tmp_path / "b.h5"
    store.write_attrs(str(b_path), {"kind": "train", "method": "tightest", "eps": 0.1})
    store.append_rows(
        str(b_path), "probes", {"step": np.array([0.0, 10.0]), "rga_cos": np.array([0.9, 0.8])}
    )
    b = data.load(b_path)
    figs = _capture_figures(monkeypatch, training)
    training.plot_probe_stats([a, b], tmp_path, "probes", ("png",))
    labels = [t.get_text() for legend in figs[0].legends for t in legend.get_texts()]
    assert labels == ["IBP, ε=0.1", "Tightest, ε=0.1"], labels


def test_hessian_densities_of_one_figure_share_one_width() -> None:
    """Two spectra whose nodes spread over 1 and over 100: both are broadened with sigma =
    0.01 * 100 = 1, so a lone node gives the same peak (height 1 / (sqrt(2 pi) sigma) times its
    weight) in both; a spectrum without nodes keeps its stored density."""
    from figures.spectra import common_densities

    narrow = {
        "slq_nodes": np.array([[0.0, 1.0]]),
        "slq_weights": np.array([[0.5, 0.5]]),
        "density_grid": np.zeros(2),
        "density": np.zeros(2),
    }
    wide = {
        "slq_nodes": np.array([[0.0, 100.0]]),
        "slq_weights": np.array([[0.5, 0.5]]),
        "density_grid": np.zeros(2),
        "density": np.zeros(2),
    }
    old = {"density_grid": np.array([0.0, 1.0]), "density": np.array([1.0, 1.0])}
    (g1, d1), (g2, d2), (g3, d3) = common_densities([narrow, wide, old], points=20001)[0]
    sigma = common_densities([narrow, wide])[1]
    assert sigma == pytest.approx(1.0)
    for g, d in ((g1, d1), (g2, d2)):
        assert np.trapezoid(d, g) == pytest.approx(1.0, rel=1e-6)
    peak = 1.0 / (np.sqrt(2 * np.pi) * sigma)
    assert d2.max() == pytest.approx(0.5 * peak, rel=1e-3)  # two far nodes: each its own peak
    # the narrow spectrum's two nodes (1 apart, sigma 1) merge into one bump, as they would on the wide one's scale
    assert d1.max() < 2 * 0.5 * peak and d1.max() > 0.5 * peak
    np.testing.assert_array_equal(d3, old["density"])


def test_panels_say_why_a_method_has_no_line_or_stops() -> None:
    """IBP's missing relaxation statistic and a CROWN-IBP series that stops where beta reaches 0
    are written on the panel; a complete series adds nothing."""
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    from figures.notes import panel_notes

    fig, ax = plt.subplots()
    x = np.array([0.0, 10.0, 20.0, 30.0])
    run = SimpleNamespace(
        steps={"step": np.arange(0, 31, 5.0), "beta": np.array([1, 0.8, 0.6, 0.4, 0.2, 0, 0.0])}
    )
    notes = panel_notes(
        ax,
        [
            ("ibp", None, None, None),
            ("crown-ibp", x, np.array([0.5, 0.4, 0.3, np.nan]), run),
            ("tightest", x, np.array([0.1, 0.2, 0.3, 0.4]), None),
        ],
    )
    assert notes == [
        "no line for IBP: no linear relaxation",
        "CROWN-IBP stops at step 30: β = 0 (pure IBP) from there",
    ]
    assert [t.get_text() for t in ax.texts] == ["\n".join(notes)]
    assert panel_notes(ax, [("tightest", x, np.ones(4), None)]) == []
    plt.close(fig)


def test_hessian_figure_draws_each_layers_top_eigenvalue(tmp_path: Path, monkeypatch) -> None:
    """A Hessian scan with per-layer records gets a third panel: one bar per (layer, loss) whose
    height is that layer's top eigenvalue."""
    from figures import data, spectra

    kept = {}
    monkeypatch.setattr(
        spectra, "save", lambda fig, out, stem, formats=("png",): kept.setdefault(stem, fig) and []
    )
    path = tmp_path / "h.h5"
    arrays = [
        "eigenvalues",
        "density_grid",
        "density",
        *[
            f"layers/{k}/{n}"
            for k in ("1", "3")
            for n in ("eigenvalues", "trace", "trace_stderr", "size")
        ],
    ]
    scan = store.create_scan(
        str(path),
        kind="hessian",
        args={"k": 1},
        coords={},
        labels=["ibp", "tightest"],
        attrs={"eps": 0.1, "dataset": "digits", "model": "mlp"},
        label_arrays=arrays,
    )
    tops = {"ibp": {"1": 2.0, "3": 5.0}, "tightest": {"1": 40.0, "3": 300.0}}
    for i, lab in enumerate(("ibp", "tightest")):
        grid = np.linspace(-1, 5, 50)
        rec = {
            "loss": 1.0,
            "eigenvalues": [400.0, 1.0],
            "density_grid": grid,
            "density": np.exp(-(grid**2)),
            "attrs": {"trace": 1.0, "trace_stderr": 0.1},
        }
        for k, v in tops[lab].items():
            rec.update(
                {
                    f"layers/{k}/eigenvalues": [v, v / 2],
                    f"layers/{k}/trace": 1.0,
                    f"layers/{k}/trace_stderr": 0.1,
                    f"layers/{k}/size": 10.0,
                }
            )
        scan.set_point(lab, i, rec)
    scan.flush(complete=True)
    spectra.plot_spectra([data.load(path)], tmp_path, "h", ("png",))
    ax = [a for a in kept["h"].axes if a.get_title() == "Per-layer curvature (Lanczos)"][0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted(v for t in tops.values() for v in t.values())
    assert ax.get_yscale() == "log"  # 2 to 300

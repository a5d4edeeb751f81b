"""figures/seedcurves.py: the comparison figures of several seeds plot, per method, the mean
and the standard deviation over the seeds of the numbers in the files, and say how many seeds.

Each test writes one small result file per seed with common.store (values that differ from
seed to seed), keeps the matplotlib Figure the module would have saved, reads the drawn lines,
bands and bars back and compares them with the mean and sd computed here from the float32
values the files hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_figures import make_train_run
from test_figures_paper import _text_boxes

from common import store
from figures.data import load

SEEDS = (1.0, 1.3, 1.9)
"""A per-seed factor that makes every seed's numbers differ."""


@pytest.fixture
def drawn(monkeypatch):
    """``save`` of the seed-figure modules replaced: the figures land in this dict, by stem."""
    import matplotlib.pyplot as plt

    from figures import seedcurves, seeds

    kept: dict[str, object] = {}

    def keep(fig, out_dir, stem, formats=("png",)):
        kept[stem] = fig
        return []

    for module in (seedcurves, seeds):
        monkeypatch.setattr(module, "save", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def f32(values) -> np.ndarray:
    """What a float32 column of the file reads back as."""
    return np.asarray(values, dtype=np.float32).astype(float)


def band_of(ax, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) edge of the ``index``-th filled band of ``ax``, per x of the band: the
    least and greatest y of the polygon's vertices at that x."""
    verts = ax.collections[index].get_paths()[0].vertices
    xs = np.unique(verts[:, 0])
    lower = np.array([verts[verts[:, 0] == x, 1].min() for x in xs])
    upper = np.array([verts[verts[:, 0] == x, 1].max() for x in xs])
    return lower, upper


def train_runs(tmp_path: Path) -> list:
    """Two methods, three seeds each, as loaded records."""
    runs = []
    for k, rough in enumerate(SEEDS):
        for method in ("ibp", "tightest"):
            where = tmp_path / f"seed{k}" / method
            where.mkdir(parents=True)
            runs.append(
                load(make_train_run(where / "train.h5", method, rough * (1 + (method == "ibp"))))
            )
    return runs


def test_over_training_figure_plots_the_mean_and_sd_of_the_seeds(tmp_path: Path, drawn) -> None:
    from figures.seedcurves import plot_seed_stat
    from figures.training import probe_stat, probe_x

    runs = train_runs(tmp_path)
    plot_seed_stat(runs, "grad_cosine", tmp_path, "compare_grad_cosine_over_training", ("png",))
    ax = drawn["compare_grad_cosine_over_training"].axes[0]
    assert "mean ± sd over 3 seeds" in ax.get_title()
    for i, method in enumerate(("ibp", "tightest")):
        mine = [r for r in runs if r.meta.method == method]
        values = np.vstack([probe_stat(r, "grad_cosine") for r in mine])
        line = ax.get_lines()[i]
        assert line.get_label().endswith("(3 seeds)")
        np.testing.assert_allclose(line.get_xdata(), probe_x(mine[0]))
        np.testing.assert_allclose(line.get_ydata(), values.mean(0), rtol=1e-6)
        lower, upper = band_of(ax, i)
        np.testing.assert_allclose(lower, values.mean(0) - values.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(upper, values.mean(0) + values.std(0), rtol=1e-6, atol=1e-9)


def make_random_1d(path: Path, scale: float) -> Path:
    """A random-1d scan of two losses whose curvature is ``scale`` times a fixed one."""
    xs = np.linspace(-1, 1, 11)
    scan = store.create_scan(
        str(path),
        kind="random-1d",
        args={"k": "random-1d"},
        coords={"x": xs},
        labels=["ibp", "tightest"],
        attrs={"checkpoint": "runs/ibp/checkpoint.pt", "dataset": "digits", "eps": 0.1},
    )
    for k, m in enumerate(("ibp", "tightest")):
        for i, x in enumerate(xs):
            scan.set_point(m, i, {"loss": 0.5 + scale * (1 + k) * x**2})
    scan.flush(complete=True)
    return path


def test_random_1d_figure_plots_the_mean_and_sd_of_the_seeds(tmp_path: Path, drawn) -> None:
    from figures.seedcurves import plot_seed_lines

    scans = [load(make_random_1d(tmp_path / f"r{k}.h5", s)) for k, s in enumerate(SEEDS)]
    plot_seed_lines(scans, tmp_path, "compare_random-1d", ("png",))
    ax = drawn["compare_random-1d"].axes[0]
    assert "mean ± sd over 3 seeds" in ax.get_title()
    xs = np.linspace(-1, 1, 11)
    for i in range(2):  # ibp, tightest
        values = np.vstack([f32(0.5 + s * (1 + i) * xs**2) for s in SEEDS])
        line = ax.get_lines()[i]
        np.testing.assert_allclose(line.get_xdata(), xs)
        np.testing.assert_allclose(line.get_ydata(), values.mean(0), rtol=1e-6)
        lower, upper = band_of(ax, i)
        np.testing.assert_allclose(upper - lower, 2 * values.std(0), rtol=1e-5, atol=1e-9)


def make_spectrum(path: Path, scale: float) -> Path:
    """A Hessian scan of two losses; top eigenvalue and trace grow with ``scale``."""
    scan = store.create_scan(
        str(path),
        kind="hessian",
        args={"k": 1},
        coords={},
        labels=["ibp", "tightest"],
        attrs={"eps": 0.1, "dataset": "digits", "model": "mlp", "checkpoint": "runs/x/c.pt"},
        label_arrays=["eigenvalues", "density_grid", "density"],
    )
    for i, label in enumerate(("ibp", "tightest")):
        grid = np.linspace(-1, 3 + i, 200)
        dens = np.exp(-0.5 * (grid / 0.1) ** 2)
        scan.set_point(
            label,
            i,
            {
                "loss": 1.0,
                "eigenvalues": [scale * (2.0 + i), 1.5, 1.0],
                "density_grid": grid,
                "density": dens / np.trapezoid(dens, grid),
                "attrs": {"trace": scale * (10.0 + i), "trace_stderr": 0.5},
            },
        )
    scan.flush(complete=True)
    return path


def test_hessian_bars_are_the_mean_and_sd_of_the_seeds(tmp_path: Path, drawn) -> None:
    from figures.seedcurves import plot_seed_spectra

    scans = [load(make_spectrum(tmp_path / f"h{k}.h5", s)) for k, s in enumerate(SEEDS)]
    plot_seed_spectra(scans, tmp_path, "compare_hessian", ("png",))
    fig = drawn["compare_hessian"]
    assert "mean ± sd over 3 seeds" in fig._suptitle.get_text()
    for ax, base in ((fig.axes[1], 2.0), (fig.axes[2], 10.0)):
        for i, patch in enumerate(ax.patches):
            values = np.array([float(np.float32(s * (base + i))) for s in SEEDS])
            assert patch.get_height() == pytest.approx(values.mean(), rel=1e-6)
            bars = [c for c in ax.containers if hasattr(c, "errorbar")]
            caps = bars[i].errorbar.lines[2][0].get_segments()[0][:, 1]
            assert caps[1] - caps[0] == pytest.approx(2 * values.std(), rel=1e-5)


def test_seed_figures_have_no_overlapping_text(tmp_path: Path, drawn) -> None:
    from figures.seedcurves import plot_seed_lines, plot_seed_spectra, plot_seed_stat

    runs = train_runs(tmp_path)
    for key in ("loss_variation", "grad_cosine"):
        plot_seed_stat(runs, key, tmp_path, key, ("png",))
    plot_seed_lines(
        [load(make_random_1d(tmp_path / f"r{k}.h5", s)) for k, s in enumerate(SEEDS)],
        tmp_path,
        "random-1d",
        ("png",),
        log=True,
    )
    plot_seed_spectra(
        [load(make_spectrum(tmp_path / f"h{k}.h5", s)) for k, s in enumerate(SEEDS)],
        tmp_path,
        "hessian",
        ("png",),
    )
    assert len(drawn) == 4
    for stem, fig in drawn.items():
        fig.canvas.draw()
        boxes = _text_boxes(fig, fig.canvas.get_renderer())
        for i, (a, ba) in enumerate(boxes):
            for b, bb in boxes[i + 1 :]:
                assert not ba.shrunk(0.98, 0.9).overlaps(bb.shrunk(0.98, 0.9)), (
                    f"{stem}: {a} overlaps {b}"
                )


def test_2d_scans_of_several_seeds_are_one_panel_per_seed_on_one_scale(
    tmp_path: Path, monkeypatch
) -> None:
    import matplotlib.pyplot as plt
    from test_figures_paper import make_surface

    from figures import surfaces
    from figures.seedcurves import seed_planes
    from figures.style import context_note

    scans = []
    for k, s in enumerate(SEEDS):
        (tmp_path / f"seed{k}").mkdir()
        path = make_surface(tmp_path / f"seed{k}" / "s.h5", {"ibp": 70.0 * s, "tightest": 2.0 * s})
        scans.append(load(path))
    merged = seed_planes(scans)
    assert merged is not None and len(merged.loss) == 6
    assert sorted(set(merged.runs.values())) == ["seed0", "seed1", "seed2"]
    for k, scan in enumerate(scans):
        for label, grid in scan.loss.items():
            np.testing.assert_array_equal(merged.loss[f"{label} [seed{k}]"], grid)
    kept: dict[str, object] = {}
    monkeypatch.setattr(
        surfaces, "save", lambda fig, out, stem, formats=("png",): kept.setdefault(stem, fig) and []
    )
    with context_note("one panel per seed (3 seeds)"):
        surfaces.plot_surface(merged, tmp_path, "compare_random-2d", ("png",), log=True)
    fig = kept["compare_random-2d_heatmap"]
    assert "one panel per seed (3 seeds)" in fig._suptitle.get_text()
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 6 and len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1
    fig.canvas.draw()
    boxes = _text_boxes(fig, fig.canvas.get_renderer())
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1 :]:
            assert not ba.shrunk(0.98, 0.9).overlaps(bb.shrunk(0.98, 0.9)), f"{a} overlaps {b}"
    for f in kept.values():
        plt.close(f)


@pytest.mark.parametrize("scale", ["robust", "linear", "log"])
def test_plot_command_colour_scale(tmp_path: Path, monkeypatch, scale: str) -> None:
    """``plot --color-scale``: robust (the default) spans the 2nd..98th percentile of the
    values of every panel with extended colour-bar ends, linear their whole range, log a log
    scale; the file's grids set the numbers."""
    import matplotlib.pyplot as plt
    from test_figures_paper import make_surface

    from figures import surfaces
    from landscape.cli import main

    path = make_surface(tmp_path / "s.h5", {"ibp": 78.0, "tightest": 2.0})
    kept: dict[str, object] = {}
    monkeypatch.setattr(
        surfaces,
        "save",
        lambda fig, out, stem, formats=("png",): kept.setdefault(stem, fig) and [out / stem],
    )
    args = ["plot", str(path), "--out", str(tmp_path / "o"), "--format", "png"]
    assert main(args + ([] if scale == "robust" else ["--color-scale", scale])) == 0
    fig = kept["s_random-2d_heatmap"]
    values = np.concatenate([g.ravel() for g in load(path).loss.values()])
    norm = fig.axes[0].get_images()[0].norm
    bar = next(ax for ax in fig.axes if hasattr(ax, "_colorbar"))._colorbar
    if scale == "robust":
        lo, hi = np.percentile(values, [2, 98])
        assert (norm.vmin, norm.vmax) == pytest.approx((lo, hi))
        assert bar.extend == "both"
    elif scale == "linear":
        assert (norm.vmin, norm.vmax) == pytest.approx((values.min(), values.max()))
        assert bar.extend == "neither"
    else:
        assert type(norm).__name__ == "LogNorm" and norm.vmax == pytest.approx(values.max())
    for f in kept.values():
        plt.close(f)

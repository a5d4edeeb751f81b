"""figures/: what makes a figure printable, checked on every figure `plot_file` draws from small
synthetic files: panels that compare methods share one colour scale (and 3D surfaces one z
axis), with a log option; no legend box covers data; legends name methods and runs, never file
paths; curves that coincide stay visible; no panel is empty; axes say which loss they draw; 2D
directions are x and y (alpha and beta name other things); the tightest method is "Tightest".
PCA and Hessian scans draw their trajectory and spectra."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_figures import make_certify, make_gradient_scan, make_line_scan, make_train_run

from common import store

EPS = 0.1
X, Y = np.linspace(-1, 1, 9), np.linspace(-0.5, 0.5, 7)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure module's ``save`` replaced: the figures land in this dict, by stem."""
    import matplotlib.pyplot as plt

    from figures import curves, seeds, slopes, spectra, surfaces, tables, training

    kept: dict[str, object] = {}

    def keep(fig, out_dir, stem, formats=("png",)):
        kept[stem] = fig
        return [Path(out_dir) / f"{stem}.png"]

    for module in (curves, surfaces, tables, training, spectra, seeds, slopes):
        monkeypatch.setattr(module, "save", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def make_surface(path: Path, scale: dict[str, float], kind: str = "random-2d") -> Path:
    """A 2D scan whose labels' losses differ in scale (``scale[label]`` times a bowl)."""
    arrays = {}
    attrs = {
        "eps": EPS,
        "dataset": "digits",
        "model": "mlp",
        "checkpoint": f"runs/{path.stem}/checkpoint.pt",
    }
    if kind == "pca":
        arrays = {
            "trajectory": np.array(
                [[-0.9, 0.4], [-0.5, -0.2], [-0.2, -0.1], [0.0, 0.0]], dtype=np.float32
            )
        }
        attrs["explained_variance"] = [0.83, 0.12]
    scan = store.create_scan(
        str(path),
        kind=kind,
        args={"k": kind},
        coords={"x": X, "y": Y},
        labels=list(scale),
        attrs=attrs,
        arrays=arrays,
    )
    for label, k in scale.items():
        for i, x in enumerate(X):
            for j, y in enumerate(Y):
                scan.set_point(label, (i, j), {"loss": k * (0.2 + x**2 + 3 * y**2 + 0.3 * x * y)})
    scan.flush(complete=True)
    return path


def make_hessian(path: Path, labels=("clean", "ibp", "tightest")) -> Path:
    scan = store.create_scan(
        str(path),
        kind="hessian",
        args={"k": 1},
        coords={},
        labels=list(labels),
        attrs={
            "eps": EPS,
            "dataset": "digits",
            "model": "mlp",
            "checkpoint": "runs/cibp/checkpoint.pt",
        },
        label_arrays=["eigenvalues", "density_grid", "density"],
    )
    for i, label in enumerate(labels):
        grid = np.linspace(-1, 3 + i, 200)
        dens = np.exp(-0.5 * (grid / 0.1) ** 2) + 0.01 * np.exp(-0.5 * ((grid - 2 - i) / 0.1) ** 2)
        dens /= np.trapezoid(dens, grid)
        scan.set_point(
            label,
            i,
            {
                "loss": 1.0 + i,
                "eigenvalues": [2.0 + i, 1.5, 1.0],
                "density_grid": grid,
                "density": dens,
                "attrs": {"trace": 10.0 + i, "trace_stderr": 0.5},
            },
        )
    scan.flush(complete=True)
    return path


def make_slopes_scan(path: Path) -> Path:
    """A slopes scan along five policies (long names, so the ticks must make room)."""
    policies = ["zero", "adaptive", "tightest", "same-slope", "one"]
    s = np.linspace(0, 4, 17)
    scan = store.create_scan(
        str(path),
        kind="slopes",
        args={"k": "slopes"},
        coords={"s": s},
        labels=["crown-ibp", "tightest"],
        fields=["loss", "cosine", "grad_norm"],
        attrs={"eps": EPS, "dataset": "digits", "model": "mlp", "slope_path": policies},
    )
    for k, m in enumerate(("crown-ibp", "tightest")):
        for i, x in enumerate(s):
            values = {
                "loss": 0.7 + 0.02 * (x - 2 - k) ** 2,
                "cosine": 1 - 0.01 * x,
                "grad_norm": 3 + 0.1 * x,
            }
            scan.set_point(m, i, values)
    scan.flush(complete=True)
    return path


@pytest.fixture
def every_figure(tmp_path: Path, drawn) -> dict:
    """Every kind of figure, drawn from synthetic files (two files per comparison)."""
    import figures

    files = [
        make_gradient_scan(tmp_path / "g1.h5"),
        make_gradient_scan(tmp_path / "g2.h5", methods=("tightest",)),
        make_line_scan(tmp_path / "a.h5"),
        make_line_scan(tmp_path / "i.h5", kind="interpolate"),
        make_surface(tmp_path / "s.h5", {"ibp": 72.0, "crown-ibp": 21.0}),
        make_surface(tmp_path / "p.h5", {"ibp": 3.0, "clean": 1.0}, kind="pca"),
        make_hessian(tmp_path / "h.h5"),
        make_slopes_scan(tmp_path / "r.h5"),
    ]
    for m, rough, tight in (("ibp", 1.0, 3.0), ("tightest", 1.5, 0.6)):
        (tmp_path / m).mkdir()
        files.append(make_train_run(tmp_path / m / "train.h5", m, rough, tight=tight))
        files.append(make_certify(tmp_path / m / "certify.h5", m, 0.1 if m == "ibp" else 0.2))
    figures.plot_file(files, tmp_path / "fig", formats="png", surface3d=True)
    return dict(drawn)


def _data_axes(fig):
    """The visible axes that draw data (not colour bars)."""
    return [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]


def _has_data(ax) -> bool:
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        if (
            line.get_label() != "_outline"
            and np.isfinite(y).any()
            and y.size > 0
            and line.get_visible()
        ):
            if not (
                y.size == 2 and np.allclose(y, y[0]) and line.get_xdata()[0] in (0, 1)
            ):  # not an axhline
                return True
    if ax.images or any(len(getattr(c, "get_paths", lambda: [])()) for c in ax.collections):
        return True
    return bool(ax.patches)


def test_every_figure_is_drawn(every_figure) -> None:
    stems = set(every_figure)
    for stem in (
        "g1_gradient",
        "compare_gradient",
        "a_random-1d",
        "i_interpolate",
        "s_random-2d_contour",
        "s_random-2d_heatmap",
        "s_random-2d_surface3d",
        "p_pca_contour",
        "p_pca_heatmap",
        "h_hessian",
        "r_slopes",
        "compare_probes",
        "compare_training_curves",
        "compare_verified_error_vs_eps",
        "compare_tightness_vs_smoothness",
    ):
        assert stem in stems, (stem, sorted(stems))


def test_no_legend_covers_data_and_no_panel_is_empty(every_figure) -> None:
    for stem, fig in every_figure.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = _data_axes(fig)
        for ax in axes:
            assert _has_data(ax), f"{stem}: the panel {ax.get_title()!r} is empty"
        legends = list(fig.legends) + [
            ax.get_legend() for ax in fig.axes if ax.get_legend() is not None
        ]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in axes:
                if ax.name == "3d":
                    continue
                assert not box.overlaps(ax.get_window_extent(renderer)), (
                    f"{stem}: the legend covers the panel {ax.get_title()!r}"
                )


def test_legends_name_runs_and_methods_never_paths(every_figure) -> None:
    for stem, fig in every_figure.items():
        texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        texts += [
            t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
        ]
        texts += [ax.get_title() for ax in fig.axes] + [
            fig._suptitle.get_text() if fig._suptitle else ""
        ]
        for text in texts:
            assert not re.search(r"\.(pt|h5)\b|/", text), f"{stem}: a path in {text!r}"
            assert "(ours)" not in text, f"{stem}: {text!r}"
    labels = [t.get_text() for t in every_figure["compare_gradient"].legends[0].get_texts()]
    assert any(text.startswith("Tightest, ε=0.1") for text in labels), labels


def test_runs_of_one_method_are_told_apart_by_run_name(tmp_path: Path, drawn) -> None:
    import figures

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = make_gradient_scan(tmp_path / "a" / "grad.h5")
    two = make_gradient_scan(tmp_path / "b" / "grad.h5")
    with store.atomic_update(str(two)) as f:  # another checkpoint of the same runs' method
        f.attrs["checkpoint"] = "runs/late/checkpoint_epoch7.pt"
    figures.plot_file([one, two], tmp_path / "fig", formats="png")
    texts = [t.get_text() for t in drawn["compare_gradient"].legends[0].get_texts()]
    assert any("run demo" in t for t in texts) and any("run late (epoch 7)" in t for t in texts), (
        texts
    )


def test_comparisons_share_one_colour_scale_and_one_z_axis(tmp_path: Path, drawn) -> None:
    from figures import data, surfaces

    scan = data.load(make_surface(tmp_path / "s.h5", {"ibp": 72.0, "crown-ibp": 21.0}))
    surfaces.plot_surface(scan, tmp_path, "s", ("png",), surface3d=True)
    for stem in ("s_contour", "s_heatmap"):
        fig = drawn[stem]
        mappables = [
            c
            for ax in _data_axes(fig)
            for c in [*ax.images, *ax.collections]
            if hasattr(c, "norm") and c.get_array() is not None
        ]
        limits = {(round(m.norm.vmin, 9), round(m.norm.vmax, 9)) for m in mappables}
        assert len(limits) == 1, (stem, limits)
        lo, hi = limits.pop()
        assert lo <= 21.0 * 0.2 + 1e-6 and hi >= 72.0 * (0.2 + 1 + 0.75 + 0.15) - 1e-4
        assert sum(hasattr(ax, "_colorbar") for ax in fig.axes) == 1, (
            f"{stem}: one colour bar for all panels"
        )
        for ax in _data_axes(fig):
            assert (
                "α" not in ax.get_xlabel() + ax.get_ylabel()
                and "β" not in ax.get_xlabel() + ax.get_ylabel()
            )
            assert ax.get_xlabel() == "x (direction 1)" and ax.get_ylabel() == "y (direction 2)"
    zlims = {tuple(np.round(ax.get_zlim(), 9)) for ax in drawn["s_surface3d"].axes}
    assert len(zlims) == 1


def test_log_scale_option(tmp_path: Path, drawn) -> None:
    from matplotlib.colors import LogNorm

    from figures import data, surfaces
    from landscape.cli import main

    scan = data.load(make_surface(tmp_path / "s.h5", {"ibp": 1000.0, "clean": 0.01}))
    surfaces.plot_surface(scan, tmp_path, "s", ("png",), surface3d=True, log=True)
    heat = [im for ax in _data_axes(drawn["s_heatmap"]) for im in ax.images]
    assert heat and all(isinstance(im.norm, LogNorm) for im in heat)
    assert "log scale" in drawn["s_heatmap"].axes[-1].get_ylabel()
    lo, hi = drawn["s_surface3d"].axes[0].get_zlim()
    assert lo == pytest.approx(np.log10(heat[0].norm.vmin)) and hi == pytest.approx(
        np.log10(heat[0].norm.vmax)
    )
    assert (
        main(
            [
                "plot",
                str(tmp_path / "s.h5"),
                "--out",
                str(tmp_path / "o"),
                "--format",
                "png",
                "--log",
            ]
        )
        == 0
    )


def test_coinciding_curves_stay_visible(tmp_path: Path, drawn) -> None:
    from figures import curves, data

    path = tmp_path / "same.h5"
    xs = np.linspace(-1, 1, 21)
    scan = store.create_scan(
        str(path),
        kind="random-1d",
        args={"k": 1},
        coords={"x": xs},
        labels=["ibp", "tightest"],
        attrs={"eps": EPS},
    )
    for label in ("ibp", "tightest"):
        for i, x in enumerate(xs):
            scan.set_point(label, i, {"loss": 1.0 + x**2})  # the same values
    scan.flush(complete=True)
    curves.plot_line_scans([data.load(path)], tmp_path, "same", ("png",))
    ax = drawn["same"].axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("IBP, ε=0.1", "Tightest, ε=0.1")]
    assert len(lines) == 2
    a, b = lines
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())
    assert a.get_marker() not in (None, "None", "") and b.get_marker() not in (None, "None", "")


def test_axes_say_which_loss_is_drawn(tmp_path: Path, drawn) -> None:
    from figures import curves, data

    def interp(labels) -> str:
        path = tmp_path / f"{'_'.join(labels)}.h5"
        xs = np.linspace(-0.5, 1.5, 5)
        scan = store.create_scan(
            str(path),
            kind="interpolate",
            args={"k": 1},
            coords={"alpha": xs},
            labels=labels,
            attrs={
                "eps": EPS,
                "checkpoint": "runs/ibp/checkpoint.pt",
                "to_checkpoint": "runs/cibp/checkpoint.pt",
            },
        )
        for label in labels:
            for i in range(xs.size):
                scan.set_point(label, i, {"loss": 1.0 + i})
        scan.flush(complete=True)
        curves.plot_interpolations([data.load(path)], tmp_path, path.stem, ("png",))
        return drawn[path.stem].axes[0]

    ax = interp(["crown-ibp"])
    assert ax.get_ylabel() == "certified loss of CROWN-IBP (nats)"
    assert ax.get_xlabel() == "interpolation α (0 = run ibp, 1 = run cibp)"
    assert interp(["clean"]).get_ylabel() == "clean cross-entropy (nats)"
    assert "cross-entropy" not in interp(["ibp", "tightest"]).get_ylabel()


def test_pca_figure_draws_the_trajectory_and_the_explained_variance(tmp_path: Path, drawn) -> None:
    from figures import data, surfaces

    scan = data.load(make_surface(tmp_path / "p.h5", {"ibp": 1.0}, kind="pca"))
    surfaces.plot_surface(scan, tmp_path, "p", ("png",))
    (ax,) = _data_axes(drawn["p_contour"])
    assert ax.get_xlabel() == "1st PC (83.0 % var.)" and ax.get_ylabel() == "2nd PC (12.0 % var.)"
    path = next(ln for ln in ax.get_lines() if ln.get_label().startswith("training trajectory"))
    np.testing.assert_allclose(
        np.column_stack(path.get_data()),
        [[-0.9, 0.4], [-0.5, -0.2], [-0.2, -0.1], [0, 0]],
        atol=1e-6,
    )
    start = next(ln for ln in ax.get_lines() if ln.get_label() == "start of training")
    assert list(start.get_xdata()) == pytest.approx([-0.9]) and list(
        start.get_ydata()
    ) == pytest.approx([0.4])
    labels = [t.get_text() for t in drawn["p_contour"].legends[0].get_texts()]
    assert labels[0] == "training trajectory (checkpoints)" and "start of training" in labels
    assert any(t.startswith("end: the scanned checkpoint") for t in labels)
    for stem in (
        "p_contour",
        "p_heatmap",
    ):  # equal aspect: a unit along x is as long as one along y
        (ax,) = _data_axes(drawn[stem])
        assert ax.get_aspect() == 1.0, (stem, ax.get_aspect())


def test_hessian_figure_overlays_densities_on_a_log_scale(tmp_path: Path, drawn) -> None:
    from figures import data, spectra

    rec = data.load(make_hessian(tmp_path / "h.h5"))
    assert sorted(rec.spectra) == ["clean", "ibp", "tightest"]
    spectra.plot_spectra([rec], tmp_path, "h", ("png",))
    fig = drawn["h"]
    dens, eig = _data_axes(fig)
    assert dens.get_yscale() == "log" and "density" in dens.get_ylabel()
    assert len([ln for ln in dens.get_lines()]) == 3
    tight = next(ln for ln in eig.get_lines() if ln.get_label().startswith("Tightest"))
    np.testing.assert_allclose(tight.get_ydata(), [4.0, 1.5, 1.0])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[0] == "clean cross-entropy: tr H = 10 ± 0.5", texts  # the loss whose Hessian it is
    assert texts[2] == "Tightest, ε=0.1: tr H = 12 ± 0.5"


def test_partial_hessian_scan_draws_the_computed_losses(tmp_path: Path, drawn) -> None:
    import figures

    path = tmp_path / "part.h5"
    scan = store.create_scan(
        str(path),
        kind="hessian",
        args={"k": 1},
        coords={},
        labels=["ibp", "clean"],
        attrs={"eps": EPS},
        label_arrays=["eigenvalues", "density_grid", "density"],
    )
    scan.flush()
    with pytest.raises(ValueError, match="nothing to draw"):
        figures.plot_file(path, tmp_path / "fig", formats="png")
    scan.set_point(
        "clean",
        1,
        {
            "loss": 1.0,
            "eigenvalues": [1.0],
            "density_grid": [0.0, 1.0],
            "density": [1.0, 1.0],
            "attrs": {"trace": 1.0, "trace_stderr": 0.1},
        },
    )
    scan.flush()
    figures.plot_file(path, tmp_path / "fig", formats="png")
    assert len(drawn["part_hessian"].axes[0].get_lines()) == 1


def _text_boxes(fig, renderer) -> list[tuple[str, object]]:
    """(what, window extent) of every visible, non-empty text of ``fig``: the suptitle, and per
    2D axes its title, axis labels and tick labels."""
    out = []
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle.get_text():
        out.append(("suptitle", fig._suptitle.get_window_extent(renderer)))
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible() or ax.name == "3d":
            continue
        texts = [("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        lo_x, hi_x = sorted(ax.get_xlim())
        lo_y, hi_y = sorted(ax.get_ylim())
        for axis, (lo, hi), what in (
            (ax.xaxis, (lo_x, hi_x), "xtick"),
            (ax.yaxis, (lo_y, hi_y), "ytick"),
        ):
            for tick in axis.get_major_ticks():  # only the ticks inside the view are drawn
                loc = tick.get_loc()
                span = (hi - lo) * 1e-9
                if lo - span <= loc <= hi + span:
                    texts.append((what, tick.label1))
        for what, t in texts:
            if t.get_visible() and t.get_text().strip():
                out.append((f"axes {k} {what} {t.get_text()!r}", t.get_window_extent(renderer)))
    return out


def test_no_label_or_tick_text_overlaps_another(every_figure) -> None:
    """Measured in the drawn figures: no two texts (titles, axis labels, tick labels, the
    suptitle) overlap, and no axis label is longer than its panel's side."""
    for stem, fig in every_figure.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = _text_boxes(fig, renderer)
        for i, (a, ba) in enumerate(boxes):
            for b, bb in boxes[i + 1 :]:
                shrunk = ba.shrunk(0.98, 0.9)  # a pixel of antialiasing is not an overlap
                assert not shrunk.overlaps(bb.shrunk(0.98, 0.9)), f"{stem}: {a} overlaps {b}"
        for ax in _data_axes(fig):
            if ax.name == "3d":
                continue
            box = ax.get_window_extent(renderer)
            ylab = ax.yaxis.label
            if ylab.get_text():
                assert ylab.get_window_extent(renderer).height <= box.height * 1.02, (
                    f"{stem}: the y label {ylab.get_text()!r} runs past its panel"
                )
            xlab = ax.xaxis.label
            if xlab.get_text():
                assert xlab.get_window_extent(renderer).width <= box.width * 1.3, (
                    f"{stem}: the x label {xlab.get_text()!r} runs far past its panel"
                )

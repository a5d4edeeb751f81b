"""figures/: the values each figure draws, not only that a file is written.

Every test builds a small result file with common.store, keeps the matplotlib Figure the
module under test would have saved (its module-level ``save`` is replaced), and checks the
drawn arrays, extents, legend texts and titles against values computed here from the
numbers written to the file. Files store scan results as float32, so the expected values
are computed from the float32 copies. A refactor that transposes a heat map, drops the
L(θ) baseline of the gradient scan, or gives a legend entry another method's numbers
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from common import store

EPS = 0.1
NAMES = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "tightest": "Tightest"}


def f32(values) -> np.ndarray:
    """What a float32 column of the file reads back as."""
    return np.asarray(values, dtype=np.float32).astype(float)


# ----------------------------------------------------------------------------- capturing figures


@pytest.fixture
def drawn(monkeypatch):
    """``save`` of every figure module replaced: the figures land in this dict, by stem."""
    import matplotlib.pyplot as plt

    from figures import curves, surfaces, tables, training

    kept: dict[str, object] = {}

    def keep(fig, out_dir, stem, formats=("png",)):
        kept[stem] = fig
        return []

    for module in (curves, surfaces, tables, training):
        monkeypatch.setattr(module, "save", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def axis_titled(fig, title: str):
    """The one visible axes of ``fig`` whose title is ``title``."""
    found = [ax for ax in fig.axes if ax.get_visible() and ax.get_title() == title]
    assert len(found) == 1, (
        f"{len(found)} axes titled {title!r}; titles: {[a.get_title() for a in fig.axes]}"
    )
    return found[0]


def line_labelled(ax, label: str):
    """The one line on ``ax`` whose legend label is ``label``."""
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, (
        f"{len(found)} lines labelled {label!r}; labels: {[ln.get_label() for ln in ax.get_lines()]}"
    )
    return found[0]


def line_starting(ax, prefix: str):
    """The one line on ``ax`` whose legend label starts with ``prefix``."""
    found = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    assert len(found) == 1, (
        f"{len(found)} lines labelled {prefix!r}...; labels: {[ln.get_label() for ln in ax.get_lines()]}"
    )
    return found[0]


def xy(line) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


# ----------------------------------------------------------------------------- 2D scan


SURF_X = np.linspace(-1.0, 1.5, 11)  # 11 x 9, different ranges: a transposed grid cannot pass
SURF_Y = np.linspace(-0.4, 0.4, 9)
SURF_NAN = ("ibp", 3, 7)  # this point of this method is never computed


def surface_loss(method: str, x: float, y: float) -> float:
    """Losses that are not symmetric in x and y (nor in either sign)."""
    if method == "ibp":
        return 0.5123 + 0.8 * x + 1.5 * y**2 - 0.6 * x * y
    return 2.0311 - 0.4 * x + 0.9 * y + 0.2 * x**2


def make_surface(path: Path) -> Path:
    scan = store.create_scan(
        str(path),
        kind="random-2d",
        args={"n": [11, 9]},
        coords={"x": SURF_X, "y": SURF_Y},
        labels=["ibp", "tightest"],
        attrs={"eps": EPS, "dataset": "digits", "model": "mlp"},
    )
    for m in ("ibp", "tightest"):
        for i, x in enumerate(SURF_X):
            for j, y in enumerate(SURF_Y):
                if (m, i, j) != SURF_NAN:
                    scan.set_point(m, (i, j), {"loss": surface_loss(m, x, y)})
    scan.flush(complete=False)
    return path


def expected_surface(method: str) -> np.ndarray:
    """``[len(x), len(y)]`` grid as the file holds it (NaN where not computed)."""
    z = np.array([[surface_loss(method, x, y) for y in SURF_Y] for x in SURF_X])
    if method == SURF_NAN[0]:
        z[SURF_NAN[1], SURF_NAN[2]] = np.nan
    return f32(z)


def panel_method(ax) -> str:
    """The method a surface panel's title names (``"IBP, ε=0.1"`` -> ``"ibp"``)."""
    head = ax.get_title().split(",")[0].strip()
    found = [m for m, name in NAMES.items() if name == head]
    assert found, f"panel title {ax.get_title()!r} names no method"
    return found[0]


def test_surface_heatmap_draws_loss_transposed_with_x_horizontal(tmp_path: Path, drawn) -> None:
    from figures import data, surfaces

    surfaces.plot_surface(data.load(make_surface(tmp_path / "s.h5")), tmp_path, "s", ("png",))
    fig = drawn["s_heatmap"]
    panels = [ax for ax in fig.axes if ax.images]
    assert sorted(panel_method(ax) for ax in panels) == ["ibp", "tightest"]
    x, y = f32(SURF_X), f32(SURF_Y)
    dx, dy = (x[-1] - x[0]) / (x.size - 1) / 2, (y[-1] - y[0]) / (y.size - 1) / 2
    for ax in panels:
        method = panel_method(ax)
        assert ax.get_title() == f"{NAMES[method]}, ε={EPS:g}"
        (im,) = ax.images
        arr = im.get_array()
        z = expected_surface(method)
        assert arr.shape == (y.size, x.size), "imshow rows must be y, columns x: draw z.T"
        assert im.origin == "lower"
        np.testing.assert_allclose(
            im.get_extent(), (x[0] - dx, x[-1] + dx, y[0] - dy, y[-1] + dy), rtol=1e-6
        )
        mask = np.ma.getmaskarray(arr)
        np.testing.assert_array_equal(mask, ~np.isfinite(z.T))
        np.testing.assert_allclose(np.ma.filled(arr, np.nan), z.T, rtol=1e-6)
        # the checkpoint marker sits at x = y = 0
        assert any(
            list(ln.get_xdata()) == [0.0] and list(ln.get_ydata()) == [0.0] for ln in ax.get_lines()
        )
    assert np.ma.getmaskarray(
        next(ax for ax in panels if panel_method(ax) == "ibp").images[0].get_array()
    )[SURF_NAN[2], SURF_NAN[1]], "the point that was never computed must stay blank"


def test_surface_contour_levels_follow_the_grid(tmp_path: Path, drawn) -> None:
    """The filled contours cover x horizontally and y vertically, and at every interior grid
    point the band drawn there is the band of that point's loss."""
    from matplotlib.contour import QuadContourSet

    from figures import data, surfaces

    surfaces.plot_surface(data.load(make_surface(tmp_path / "s.h5")), tmp_path, "s", ("png",))
    fig = drawn["s_contour"]
    panels = [ax for ax in fig.axes if any(isinstance(c, QuadContourSet) for c in ax.collections)]
    assert sorted(panel_method(ax) for ax in panels) == ["ibp", "tightest"]
    x, y = f32(SURF_X), f32(SURF_Y)
    both = np.concatenate([expected_surface(m).ravel() for m in ("ibp", "tightest")])
    shared = None
    for ax in panels:
        method = panel_method(ax)
        assert ax.get_title() == f"{NAMES[method]}, ε={EPS:g}"
        (cs,) = [c for c in ax.collections if isinstance(c, QuadContourSet) and c.filled]
        z = expected_surface(method)
        verts = np.concatenate([p.vertices for p in cs.get_paths() if len(p.vertices)])
        np.testing.assert_allclose([verts[:, 0].min(), verts[:, 0].max()], [x[0], x[-1]], atol=1e-6)
        np.testing.assert_allclose([verts[:, 1].min(), verts[:, 1].max()], [y[0], y[-1]], atol=1e-6)
        # one colour scale for both panels: the levels span the losses of every method
        shared = cs.levels if shared is None else shared
        np.testing.assert_array_equal(cs.levels, shared)
        assert cs.levels[0] <= np.nanmin(both) and cs.levels[-1] >= np.nanmax(both)
        assert cs.levels[1] > np.nanmin(both) and cs.levels[-2] < np.nanmax(both)
        assert (cs.norm.vmin, cs.norm.vmax) == (shared[0], shared[-1])
        paths = cs.get_paths()
        span = float(np.nanmax(z) - np.nanmin(z))
        checked = 0
        for i in range(1, x.size - 1):
            for j in range(1, y.size - 1):
                if not np.isfinite(z[i - 1 : i + 2, j - 1 : j + 2]).all():
                    continue  # on the edge of the blank (never computed) cell
                if np.min(np.abs(cs.levels - z[i, j])) < 1e-3 * span:
                    continue  # on a level line: either band may claim it
                band = int(np.searchsorted(cs.levels, z[i, j])) - 1
                hits = [
                    k
                    for k, p in enumerate(paths)
                    if len(p.vertices) and p.contains_point((x[i], y[j]))
                ]
                assert hits == [band], (
                    f"{method}: point ({x[i]:.2f}, {y[j]:.2f}) loss {z[i, j]:.3f} drawn in band {hits}, not {band}"
                )
                checked += 1
        assert checked > 30
        if method == SURF_NAN[0]:  # the never-computed point lies in no band
            i, j = SURF_NAN[1:]
            assert not any(len(p.vertices) and p.contains_point((x[i], y[j])) for p in paths)


# ----------------------------------------------------------------------------- gradient scan


GRAD_T = np.array([-0.5, 0.0, 0.5, 1.0, 2.0, 3.5, 5.0])  # t = 0 is not the first point


def grad_arrays(method: str) -> dict[str, np.ndarray]:
    t = GRAD_T
    if method == "ibp":
        return {
            "loss": 2.0 - 0.3 * t + 0.1 * t**2,
            "cos": 1.0 - 0.05 * np.abs(t),
            "smoothness": 0.5 + 0.1 * np.abs(t),
        }
    return {
        "loss": 0.731 + 0.02 * t**2,
        "cos": 1.0 - 0.01 * t**2,
        "smoothness": 3.0 + 0.7 * np.abs(t),
    }


def make_gradient(path: Path, direction_from: str | None = None) -> Path:
    extra = {} if direction_from is None else {"direction_from": direction_from}
    scan = store.create_scan(
        str(path),
        kind="gradient",
        args={"t": GRAD_T.tolist()},
        coords={"t": GRAD_T},
        labels=["tightest", "ibp"],
        fields=["loss", "cos", "smoothness"],
        attrs={
            "eps": EPS,
            "checkpoint": "runs/demo/checkpoint.pt",
            "dataset": "digits",
            "model": "mlp",
            **extra,
        },
    )
    for m in ("ibp", "tightest"):
        arrays = grad_arrays(m)
        for i in range(GRAD_T.size):
            scan.set_point(m, i, {k: v[i] for k, v in arrays.items()})
    scan.flush(complete=True)
    return path


def test_gradient_scan_says_which_gradient_each_method_moved_along(tmp_path: Path, drawn) -> None:
    """Own directions, a shared one named by --direction-from, and an old file (no attribute:
    the first method's gradient) each say so on every panel's x axis; the loss-variation bands of
    the methods have different hatches, so overlapping bands stay apart."""
    from figures import curves, data

    cases = {"own": "each method's own", "ibp": "of IBP", None: "of Tightest"}
    for i, (direction, words) in enumerate(cases.items()):
        curves.plot_gradient_scans(
            [data.load(make_gradient(tmp_path / f"g{i}.h5", direction))],
            tmp_path,
            f"g{i}",
            ("png",),
        )
        fig = drawn[f"g{i}"]
        for ax in fig.axes:
            assert words in ax.get_xlabel(), (direction, ax.get_xlabel())
        ax = axis_titled(fig, "Loss along −∇L (band: loss variation)")
        hatches = [p.get_hatch() for p in ax.patches]
        assert len(hatches) == 2 and len(set(hatches)) == 2 and None not in hatches, hatches


def test_gradient_scan_loss_panel_draws_change_from_t0_and_legend_numbers(
    tmp_path: Path, drawn
) -> None:
    from figures import curves, data

    curves.plot_gradient_scans(
        [data.load(make_gradient(tmp_path / "g.h5"))], tmp_path, "g", ("png",)
    )
    fig = drawn["g"]
    ax = axis_titled(fig, "Loss along −∇L (band: loss variation)")
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 2, texts
    zero = int(np.flatnonzero(GRAD_T == 0.0)[0])
    for m in ("ibp", "tightest"):
        loss = f32(grad_arrays(m)["loss"])
        base, dl = loss[zero], loss.max() - loss.min()
        line = line_starting(ax, NAMES[m] + ",")
        x, yv = xy(line)
        np.testing.assert_allclose(x, f32(GRAD_T))
        np.testing.assert_allclose(yv, loss - base, rtol=1e-6, atol=1e-7)
        assert yv[zero] == 0.0
        label = line.get_label()
        assert label.endswith(f": L(θ)={base:.3g}, ΔL={dl:.3g}"), label
        assert label in texts, f"the legend does not show the entry of {m}: {texts}"
        # the band spans the drawn curve: its height is the loss variation
        spans = []
        for patch in ax.patches:
            ys = ax.transData.inverted().transform(
                patch.get_transform().transform(patch.get_path().vertices)
            )[:, 1]
            spans.append((ys.min(), ys.max()))
        assert any(np.allclose(s, (yv.min(), yv.max()), atol=1e-6) for s in spans), spans
    # the numbers themselves, so a swap between the two methods cannot pass
    assert [re.search(r"L\(θ\)=(\S+), ΔL=(\S+)$", t).groups() for t in texts] == [
        ("2", "1.2"),
        ("0.731", "0.5"),
    ]


def test_gradient_scan_cosine_and_smoothness_panels(tmp_path: Path, drawn) -> None:
    from figures import curves, data

    curves.plot_gradient_scans(
        [data.load(make_gradient(tmp_path / "g.h5"))], tmp_path, "g", ("png",)
    )
    fig = drawn["g"]
    panels = {
        "cos": axis_titled(fig, "Gradient-angle similarity"),
        "smoothness": axis_titled(fig, "Smoothness (lower = smoother)"),
    }
    for key, ax in panels.items():
        for m in ("ibp", "tightest"):
            x, yv = xy(line_starting(ax, NAMES[m] + ","))
            np.testing.assert_allclose(x, f32(GRAD_T))
            np.testing.assert_allclose(yv, f32(grad_arrays(m)[key]), rtol=1e-6)


# ----------------------------------------------------------------------------- 1D scans


LINE_X = np.linspace(-1.0, 1.0, 21)


def line_loss(method: str) -> np.ndarray:
    x = LINE_X
    return (
        0.5 + x**2 + 0.3 * x
        if method == "ibp"
        else 1.2 + 0.5 * x**2 - 0.2 * x + 0.05 * np.sin(7 * x)
    )


def test_line_scan_draws_stored_loss_per_method(tmp_path: Path, drawn) -> None:
    from figures import curves, data

    path = tmp_path / "r.h5"
    scan = store.create_scan(
        str(path),
        kind="random-1d",
        args={"k": 1},
        coords={"x": LINE_X},
        labels=["tightest", "ibp"],
        attrs={"eps": EPS},
    )
    for m in ("ibp", "tightest"):
        for i, v in enumerate(line_loss(m)):
            scan.set_point(m, i, {"loss": v})
    scan.flush(complete=True)
    curves.plot_line_scans([data.load(path)], tmp_path, "r", ("png",))
    ax = drawn["r"].axes[0]
    for m in ("ibp", "tightest"):
        x, yv = xy(line_labelled(ax, f"{NAMES[m]}, ε={EPS:g}"))
        np.testing.assert_allclose(x, f32(LINE_X))
        np.testing.assert_allclose(yv, f32(line_loss(m)), rtol=1e-6)
    (legend,) = drawn["r"].legends
    assert [t.get_text() for t in legend.get_texts()] == ["IBP, ε=0.1", "Tightest, ε=0.1"]


# ----------------------------------------------------------------------------- training runs


PROBE_T = np.array([0.0, 0.25, 0.5, 1.0, 2.0])
PROBE_STEPS = {"ibp": [0, 10, 20, 30], "tightest": [0, 15, 30], "crown-ibp": [0, 10, 20]}
N_STEPS = {"ibp": 100, "tightest": 80, "crown-ibp": 60}  # > 50: the curves are also smoothed
ROUGH = {"ibp": 1.0, "tightest": 2.5, "crown-ibp": 1.6}


def probe_rows(method: str, p: int) -> dict[str, np.ndarray]:
    """The gradient scan of probe ``p`` (its index) of ``method``, along PROBE_T."""
    t = PROBE_T
    k = ROUGH[method]
    return {
        "loss": (1.7 - 0.2 * p) * k - 0.1 * t + 0.03 * (1 + p) * k * t**2,
        "cos": np.exp(-0.1 * (1 + p) * k * t),
        "smoothness": 0.4 * k + 0.3 * p + 0.1 * t,
    }


def step_columns(method: str) -> dict[str, np.ndarray]:
    s = np.arange(N_STEPS[method], dtype=float)
    k = ROUGH[method]
    return {
        "step": s,
        "loss": 2.0 * k * np.exp(-s / 20) + 0.05 * np.cos(s),
        "robust_err": np.clip(0.95 - s / (150 * k) + 0.03 * np.sin(s), 0, 1),
        "clean_err": np.clip(0.5 - s / (250 * k) + 0.02 * np.cos(2 * s), 0, 1),
        "eps": np.minimum(EPS, s / (500 * k)),
    }


def make_run(path: Path, method: str, bound_gap: float | None = None) -> Path:
    store.write_attrs(
        str(path),
        {"kind": "train", "method": method, "eps": EPS, "dataset": "digits", "model": "mlp"},
    )
    store.append_rows(str(path), "steps", step_columns(method))
    rows: dict[str, list] = {"step": [], "t": []}
    for p, step in enumerate(PROBE_STEPS[method]):
        rows["step"] += [step] * PROBE_T.size
        rows["t"] += PROBE_T.tolist()
        for key, values in probe_rows(method, p).items():
            rows.setdefault(key, []).extend(values.tolist())
        if bound_gap is not None:
            rows.setdefault("bound_gap", []).extend([bound_gap] * PROBE_T.size)
    store.append_rows(
        str(path), "probes", {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
    )
    return path


def expected_stat(method: str, key: str) -> np.ndarray:
    """Per-probe statistic from the written rows: max - min of the loss, or the mean over t > 0."""
    out = []
    for p in range(len(PROBE_STEPS[method])):
        r = {k: f32(v) for k, v in probe_rows(method, p).items()}
        if key == "loss_variation":
            out.append(r["loss"].max() - r["loss"].min())
        else:
            out.append(r["cos" if key == "grad_cosine" else key][PROBE_T > 0].mean())
    return np.array(out)


@pytest.fixture
def runs(tmp_path: Path):
    from figures import data

    return [data.load(make_run(tmp_path / f"{m}.h5", m)) for m in ("ibp", "tightest")]


def test_gradient_direction_over_training_draws_each_probe_from_its_own_t0(
    runs, tmp_path: Path, drawn
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, to_rgba

    from figures import training

    training.plot_gradient_direction_over_training(runs, tmp_path, "gd", ("png",))
    fig = drawn["gd"]
    norm = Normalize(vmin=0.0, vmax=30.0)  # over the probe steps of every run
    for m in ("ibp", "tightest"):
        ax = axis_titled(fig, f"{NAMES[m]}, ε={EPS:g}")
        curves = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        assert len(curves) == len(PROBE_STEPS[m])
        for p, (line, step) in enumerate(zip(curves, PROBE_STEPS[m])):
            loss = f32(probe_rows(m, p)["loss"])
            x, yv = xy(line)
            np.testing.assert_allclose(x, PROBE_T)
            np.testing.assert_allclose(yv, loss - loss[0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                to_rgba(line.get_color()), plt.get_cmap("viridis_r")(norm(step)), atol=1e-6
            )


@pytest.mark.parametrize("key", ["loss_variation", "grad_cosine", "smoothness"])
def test_probe_stats_panels_draw_each_statistic_against_probe_steps(
    runs, tmp_path: Path, drawn, key
) -> None:
    from figures import training

    training.plot_probe_stats(runs, tmp_path, "ps", ("png",))
    title = next(s[3] for s in training.PROBE_STATS if s[0] == key)
    ax = axis_titled(drawn["ps"], title)
    for m in ("ibp", "tightest"):
        x, yv = xy(line_labelled(ax, f"{NAMES[m]}, ε={EPS:g}"))
        np.testing.assert_allclose(x, PROBE_STEPS[m])
        np.testing.assert_allclose(yv, expected_stat(m, key), rtol=1e-5)


def test_single_stat_draws_grad_cosine_mean_over_positive_t(runs, tmp_path: Path, drawn) -> None:
    from figures import training

    training.plot_single_stat(runs, "grad_cosine", tmp_path, "gc", ("png",))
    (ax,) = drawn["gc"].axes
    assert ax.get_title().startswith("Gradient-angle similarity over training")
    for m in ("ibp", "tightest"):
        x, yv = xy(line_labelled(ax, f"{NAMES[m]}, ε={EPS:g}"))
        np.testing.assert_allclose(x, PROBE_STEPS[m])
        np.testing.assert_allclose(yv, expected_stat(m, "grad_cosine"), rtol=1e-5)
    (legend,) = drawn["gc"].legends
    assert [t.get_text() for t in legend.get_texts()] == ["IBP, ε=0.1", "Tightest, ε=0.1"]


def test_training_curves_draw_eps_schedule_and_raw_records(runs, tmp_path: Path, drawn) -> None:
    from figures import training

    training.plot_training_curves(runs, tmp_path, "tc", ("png",))
    fig = drawn["tc"]
    eps_ax = axis_titled(fig, "ε schedule")
    for m in ("ibp", "tightest"):
        cols = {k: f32(v) for k, v in step_columns(m).items()}
        x, yv = xy(line_labelled(eps_ax, f"{NAMES[m]}, ε={EPS:g}"))
        np.testing.assert_allclose(x, cols["step"])
        np.testing.assert_allclose(yv, cols["eps"], rtol=1e-6)
        # the faint raw curves: loss as is, batch errors in percent
        for title, expected in (
            ("Certified training loss", cols["loss"]),
            ("Robust (verified) batch error", 100 * cols["robust_err"]),
            ("Clean batch error", 100 * cols["clean_err"]),
        ):
            ax = axis_titled(fig, title)
            raw = [
                ln
                for ln in ax.get_lines()
                if len(ln.get_ydata()) == expected.size
                and np.allclose(np.asarray(ln.get_ydata(), dtype=float), expected, rtol=1e-6)
            ]
            assert len(raw) == 1, f"{title}: no raw curve of {m}"
            np.testing.assert_allclose(xy(raw[0])[0], cols["step"])


# ----------------------------------------------------------------------------- tables and scatter


CERT_ROWS = [  # deliberately not sorted by eps
    {"method": "tightest", "eps": 0.2, "clean_err": 0.15, "pgd_err": 0.31, "verified_err": 0.42},
    {"method": "ibp", "eps": 0.1, "clean_err": 0.20, "pgd_err": 0.27, "verified_err": 0.36},
    {"method": "ibp", "eps": 0.3, "clean_err": 0.20, "pgd_err": 0.48, "verified_err": 0.71},
    {"method": "tightest", "eps": 0.1, "clean_err": 0.15, "pgd_err": 0.22, "verified_err": 0.29},
    {"method": "ibp", "eps": 0.2, "clean_err": 0.20, "pgd_err": 0.39, "verified_err": 0.55},
]


def test_error_vs_eps_draws_verified_solid_and_pgd_dashed_per_method(tmp_path: Path, drawn) -> None:
    from figures import tables

    tables.plot_error_vs_eps(CERT_ROWS, tmp_path, "ev", ("png",))
    (ax,) = drawn["ev"].axes
    for m in ("ibp", "tightest"):
        mine = sorted((r for r in CERT_ROWS if r["method"] == m), key=lambda r: r["eps"])
        for what, key, style in (("verified", "verified_err", "-"), ("PGD", "pgd_err", "--")):
            line = line_labelled(ax, f"{NAMES[m]}: {what}")
            assert line.get_linestyle() == style, (what, line.get_linestyle())
            x, yv = xy(line)
            np.testing.assert_allclose(x, [r["eps"] for r in mine])
            np.testing.assert_allclose(yv, [100 * r[key] for r in mine])


def scatter_points(ax) -> dict[str, tuple[float, float]]:
    """Label -> (x, y) of every errorbar point on ``ax``."""
    from matplotlib.container import ErrorbarContainer

    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            x, yv = xy(c.lines[0])
            out[c.get_label()] = (float(x[0]), float(yv[0]))
    return out


def test_tightness_vs_smoothness_puts_each_method_at_its_point(tmp_path: Path, drawn) -> None:
    from figures import tables

    points = [
        {"method": "ibp", "tightness": 3.25, "smoothness": 0.12},
        {"method": "crown-ibp", "tightness": 0.75, "smoothness": 0.93},
        {"method": "tightest", "tightness": 0.41, "smoothness": 0.18, "label": "ours"},
    ]
    tables.plot_tightness_vs_smoothness(points, tmp_path, "ts", ("png",))
    (ax,) = drawn["ts"].axes
    assert scatter_points(ax) == {
        "IBP": (3.25, 0.12),
        "CROWN-IBP": (0.75, 0.93),
        "ours": (0.41, 0.18),
    }


def make_certify(path: Path, method: str, bound_gap: float) -> Path:
    mine = [r for r in CERT_ROWS if r["method"] == method] or [dict(CERT_ROWS[0], method=method)]
    store.write_attrs(str(path), {"kind": "certify", "method": method})
    cols = {
        k: np.array([r[k] for r in mine], dtype=float)
        for k in ("eps", "clean_err", "pgd_err", "verified_err")
    }
    store.append_rows(
        str(path),
        "results",
        {
            "method": np.array([method] * len(mine), dtype=object),
            **cols,
            "bound_gap": np.full(len(mine), bound_gap),
        },
    )
    return path


def test_tightness_points_are_the_summarys_numbers(tmp_path: Path, drawn) -> None:
    """A run is placed at the summary's numbers: its method's gap on common models where the
    certify files carry ``bound_gap_<method>``, else its own certify file's gap, else its probes'
    mean gap; and its loss variation averaged over all probes (the summary's definition, not the
    last half). Drawn end to end by plot_records, without error bars (one run has no spread)."""
    from figures import data, dispatch

    records = [
        data.load(make_run(tmp_path / f"{m}_train.h5", m, bound_gap=g))
        for m, g in (("ibp", 3.25), ("tightest", 0.41))
    ]
    records.append(
        data.load(make_run(tmp_path / "crown_train.h5", "crown-ibp"))
    )  # no bound gap of its own
    records += [
        data.load(make_certify(tmp_path / f"{m}_cert.h5", m, g))
        for m, g in (("ibp", 9.5), ("crown-ibp", 1.75))
    ]
    runs = [r for r in records if isinstance(r, data.TrainRun)]
    certs = [r for r in records if isinstance(r, data.CertifyResult)]

    def loss_variation_all(method: str) -> float:
        return float(np.nanmean(expected_stat(method, "loss_variation")))

    points = {p["method"]: p for p in dispatch.tightness_points(runs, certs)}
    expected = {
        "ibp": 9.5,
        "tightest": 0.41,
        "crown-ibp": 1.75,
    }  # own certify gap first, then the probes'
    for m, gap in expected.items():
        assert points[m]["tightness"] == pytest.approx(gap, rel=1e-6), m
        assert points[m]["smoothness"] == pytest.approx(loss_variation_all(m), rel=1e-5), m
        assert "smoothness_err" not in points[m] or points[m]["smoothness_err"] is None

    dispatch.plot_records(records, tmp_path / "fig", formats="png")
    (ax,) = drawn["compare_tightness_vs_smoothness"].axes
    drawn_points = scatter_points(ax)
    for m, gap in expected.items():
        x, yv = drawn_points[f"{NAMES[m]}, ε={EPS:g}"]
        assert (x, yv) == pytest.approx((gap, loss_variation_all(m)), rel=1e-5), m
    _verified_error_vs_eps_is_drawn(drawn)
    # with the common-model columns (every model certified by every method's bound) those win
    common = tmp_path / "common_cert.h5"
    store.write_attrs(str(common), {"kind": "certify", "method": "ibp"})
    store.append_rows(
        str(common),
        "results",
        {
            "method": np.array(["ibp"], dtype=object),
            "eps": np.array([0.1]),
            "clean_err": np.array([0.1]),
            "verified_err": np.array([0.5]),
            "bound_gap": np.array([9.5]),
            "bound_gap_ibp": np.array([8.0]),
            "bound_gap_tightest": np.array([0.3]),
        },
    )
    with_common = certs + [data.load(common)]
    points = {p["method"]: p for p in dispatch.tightness_points(runs, with_common)}
    assert points["ibp"]["tightness"] == pytest.approx(8.0) and points["tightest"][
        "tightness"
    ] == pytest.approx(0.3)


def test_reproduce_draws_tightness_vs_smoothness_from_the_summary_rows(
    tmp_path: Path, drawn
) -> None:
    """The figure plots summary.json's per-method means with their standard deviations across
    seeds as error bars, and its title says how many seeds."""
    from landscape.reproduce import draw_summary
    from landscape.reproduce.plan import Plan, RunPlan, Setting

    methods = [
        {
            "setting": "s",
            "method": "ibp",
            "seeds": [0, 1, 2],
            "bound_gap_common": 11.4,
            "bound_gap_common_std": 2.0,
            "loss_variation": 0.0105,
            "loss_variation_std": 0.0015,
        },
        {
            "setting": "s",
            "method": "tightest",
            "seeds": [0, 1, 2],
            "bound_gap_common": 0.41,
            "bound_gap_common_std": 0.024,
            "loss_variation": 0.061,
            "loss_variation_std": 0.009,
        },
    ]
    runs = [RunPlan("s", m, {}, seed) for seed in (0, 1, 2) for m in ("ibp", "tightest")]
    plan = Plan(
        "p", "cpu", runs, {"s": Setting("s", "p", tmp_path, {"dataset": "digits"})}, [0, 1, 2]
    )
    draw_summary(plan, tmp_path, ("png",), methods)
    (ax,) = drawn["compare_tightness_vs_smoothness"].axes
    assert "3 seeds" in ax.get_title()
    pts = scatter_points(ax)
    assert pts["IBP"] == pytest.approx((11.4, 0.0105)) and pts["Tightest"] == pytest.approx(
        (0.41, 0.061)
    )
    from matplotlib.container import ErrorbarContainer

    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    (xbar, ybar) = bars["IBP"].lines[2]  # the x and y error-bar collections
    x_ends = np.asarray(xbar.get_segments())[0][:, 0]
    y_ends = np.asarray(ybar.get_segments())[0][:, 1]
    assert sorted(x_ends) == pytest.approx([11.4 - 2.0, 11.4 + 2.0])
    assert sorted(y_ends) == pytest.approx([0.0105 - 0.0015, 0.0105 + 0.0015])


def _verified_error_vs_eps_is_drawn(drawn) -> None:
    (ev,) = drawn["compare_verified_error_vs_eps"].axes
    x, yv = xy(line_labelled(ev, "IBP: verified"))
    np.testing.assert_allclose(x, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(yv, [36.0, 55.0, 71.0])


def test_seed_gradient_figure_draws_the_mean_and_band_over_seeds(
    tmp_path: Path, monkeypatch
) -> None:
    """Two seeds' gradient scans of one method: the drawn loss-change line is their mean, the band
    spans mean ± sd, and the legend says how many seeds."""
    from figures import data, seeds

    kept = {}
    monkeypatch.setattr(
        seeds, "save", lambda fig, out, stem, formats=("png",): kept.setdefault(stem, fig) and []
    )
    t = np.array([0.0, 0.5, 1.0, 2.0])
    losses = [np.array([1.0, 1.2, 1.5, 2.0]), np.array([2.0, 2.0, 2.1, 2.6])]
    scans = []
    for k, loss in enumerate(losses):
        path = tmp_path / f"s{k}.h5"
        scan = store.create_scan(
            str(path),
            kind="gradient",
            args={"k": k},
            coords={"t": t},
            labels=["ibp"],
            fields=["loss", "cos"],
            attrs={"eps": EPS, "dataset": "digits", "model": "mlp", "direction_from": "own"},
        )
        for i in range(t.size):
            scan.set_point("ibp", i, {"loss": loss[i], "cos": 1.0 - 0.1 * i * (k + 1)})
        scan.flush(complete=True)
        scans.append(data.load(path))
    seeds.plot_seed_gradient(scans, tmp_path, "g", ("png",))
    fig = kept["g"]
    ax = axis_titled(fig, "Loss along −∇L")
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("IBP")]
    changes = np.vstack([loss - loss[0] for loss in losses])
    np.testing.assert_allclose(line.get_ydata(), changes.mean(axis=0), rtol=1e-6)
    assert "mean ± sd of 2 seeds" in line.get_label() and "2 seeds" in fig._suptitle.get_text()
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    lo, hi = (changes.mean(0) - changes.std(0)), (changes.mean(0) + changes.std(0))
    assert ys.min() == pytest.approx(lo.min(), abs=1e-6) and ys.max() == pytest.approx(
        hi.max(), abs=1e-6
    )

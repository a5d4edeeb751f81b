"""landscape.trajectory: PCA directions against numpy's SVD (and scikit-learn's PCA for the centred
variant), projections, ranges, and loading the checkpoints of a real (tiny) digits run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.tensors import flatten
from landscape import trajectory as tj
from landscape.directions import perturbed

SHAPES = [(3, 4), (5,)]  # P = 17


def synthetic(
    n: int, rank: int | None = None, seed: int = 0
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """n parameter lists (float64) shaped like SHAPES; with ``rank``, theta_i - theta_f lies in a
    random subspace of that dimension. The final point is the last."""
    gen = torch.Generator().manual_seed(seed)
    final = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    if rank is None:
        diffs = torch.randn(n - 1, 17, generator=gen, dtype=torch.float64)
    else:
        diffs = torch.randn(n - 1, rank, generator=gen, dtype=torch.float64) @ torch.randn(
            rank, 17, generator=gen, dtype=torch.float64
        )
    thetas = [[t + d for t, d in zip(final, split(row))] for row in diffs]
    return thetas + [[t.clone() for t in final]], final


def split(vector: torch.Tensor) -> list[torch.Tensor]:
    out, start = [], 0
    for s in SHAPES:
        k = int(np.prod(s))
        out.append(vector[start : start + k].reshape(s))
        start += k
    return out


def matrix(thetas, final) -> np.ndarray:
    return np.stack([(flatten(t) - flatten(final)).numpy() for t in thetas])


def test_pca_matches_numpy_svd():
    thetas, final = synthetic(7)
    pca = tj.pca_directions(thetas, final)
    m = matrix(thetas, final)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    d = np.stack([flatten(x).numpy() for x in pca.directions])
    assert [tuple(t.shape) for t in pca.directions[0]] == SHAPES
    np.testing.assert_allclose(d @ d.T, np.eye(2), atol=1e-12)  # orthonormal in the flattened space
    for k in range(2):
        sign = np.sign(d[k] @ vt[k])
        np.testing.assert_allclose(d[k], sign * vt[k], atol=1e-10)
        np.testing.assert_allclose(pca.path[:, k], sign * u[:, k] * s[k], atol=1e-10)
        assert pca.path[:, k].sum() <= 0  # the path runs towards +x, +y
    np.testing.assert_allclose(pca.singular_values, s[:2], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:2] ** 2 / (s**2).sum(), rtol=1e-10)
    np.testing.assert_allclose(pca.path, m @ d.T, atol=1e-10)  # projections of theta_i - theta_f
    np.testing.assert_allclose(pca.path[-1], [0.0, 0.0], atol=1e-12)  # theta_f at the origin


def test_centred_pca_is_scikit_learns():
    from sklearn.decomposition import PCA

    thetas, final = synthetic(6, seed=1)
    pca = tj.pca_directions(thetas, final, center=True)
    ref = PCA(n_components=2).fit(matrix(thetas, final))
    d = np.stack([flatten(x).numpy() for x in pca.directions])
    np.testing.assert_allclose(np.abs((d * ref.components_).sum(axis=1)), [1.0, 1.0], atol=1e-10)
    np.testing.assert_allclose(
        pca.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10
    )
    np.testing.assert_allclose(pca.path, matrix(thetas, final) @ d.T, atol=1e-10)  # not centred


def test_a_plane_trajectory_is_reproduced_exactly():
    thetas, final = synthetic(5, rank=2, seed=2)
    pca = tj.pca_directions(thetas, final)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0)
    for theta, (x, y) in zip(thetas, pca.path):
        back = perturbed(final, pca.directions, [x, y])
        torch.testing.assert_close(flatten(back), flatten(theta))


def test_rank_one_and_ignored_biases():
    thetas, final = synthetic(3, rank=1, seed=3)
    pca = tj.pca_directions(thetas, final, seed=5)
    d1, d2 = (flatten(x) for x in pca.directions)
    assert float(d1 @ d2) == pytest.approx(0.0, abs=1e-12) and float(d2.norm()) == pytest.approx(
        1.0
    )
    np.testing.assert_allclose(pca.explained_variance_ratio, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(pca.path[:, 1], 0.0, atol=1e-12)
    thetas, final = synthetic(4, seed=4)
    for some in (thetas, thetas[2:]):  # rank 2, and rank 1 (d_2 drawn at random)
        pca = tj.pca_directions(some, final, ignore="biasbn")
        assert all(
            float(d[1].abs().max()) == 0.0 for d in pca.directions
        )  # the 1-D parameter never moves
        assert float(flatten(pca.directions[1]).norm()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="do not move"):
        tj.pca_directions([final, final], final)


def test_project_and_default_range():
    thetas, final = synthetic(6, seed=6)
    pca = tj.pca_directions(thetas, final)
    np.testing.assert_allclose(tj.project(thetas, final, pca.directions), pca.path, atol=1e-10)
    gen = torch.Generator().manual_seed(0)
    a, b = ([torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(2))
    point = perturbed(final, [a, b], [0.3, -0.7])  # non-orthogonal directions: least squares
    np.testing.assert_allclose(tj.project([point], final, [a, b]), [[0.3, -0.7]], atol=1e-10)
    (x0, x1), (y0, y1) = tj.default_range(pca.path, margin=0.1)
    lo, hi = np.minimum(pca.path.min(0), 0), np.maximum(pca.path.max(0), 0)
    assert x0 == pytest.approx(lo[0] - 0.1 * (hi[0] - lo[0])) and x1 == pytest.approx(
        hi[0] + 0.1 * (hi[0] - lo[0])
    )
    assert y0 < pca.path[:, 1].min() and y1 > pca.path[:, 1].max()
    flat = np.array([[-2.0, 0.0], [0.0, 0.0]])  # no span along y: it borrows x's
    assert tj.default_range(flat, margin=0.5) == ((-3.0, 1.0), (-1.0, 1.0))


# ----------------------------------------------------------------------------- real checkpoints


def _train(out: Path, epochs: int, widths: list[int]) -> Path:
    from train.loop import train

    cfg = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": widths},
        method="crown-ibp",
        eps=0.1,
        epochs=epochs,
        batch_size=50,
        train_size=100,
        test_size=20,
        eval_size=0,
        lr=1e-2,
        eps_ramp_epochs=1.0,
    )
    train(cfg, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 3-epoch crown-ibp run on 100 digits (3 epoch checkpoints and checkpoint.pt)."""
    return _train(tmp_path_factory.mktemp("run"), 3, [16, 16])


def test_trajectory_of_a_digits_run(run):
    t = tj.load_trajectory(run / "checkpoint.pt")
    assert [p.name for p in t.paths] == [
        "checkpoint_epoch1.pt",
        "checkpoint_epoch2.pt",
        "checkpoint_epoch3.pt",
        "checkpoint.pt",
    ]
    assert t.epochs == [1, 2, 3, 3] and t.steps == [2, 4, 6, 6]
    names = [n for n, _ in t.model.named_parameters()]
    assert [tuple(p.shape) for p in t.final] == [
        tuple(p.shape) for p in t.model.parameters()
    ] and len(names) == 6
    pca = tj.pca_directions(t.params, t.final)
    assert pca.path.shape == (4, 2)
    np.testing.assert_allclose(pca.path[2:], 0.0, atol=1e-7)  # epoch 3 is the final checkpoint
    assert pca.explained_variance_ratio.sum() == pytest.approx(
        1.0, abs=1e-6
    )  # two moving points: a plane
    for theta, (x, y) in zip(t.params, pca.path):  # every checkpoint lies in the plane
        torch.testing.assert_close(
            flatten(perturbed(t.final, pca.directions, [x, y])),
            flatten(theta),
            atol=1e-5,
            rtol=1e-5,
        )
    # the same checkpoints from the run directory and from a glob; a glob's final is its last
    same = tj.load_trajectory(run)
    assert [p.name for p in same.paths] == [p.name for p in t.paths]
    sub = tj.load_trajectory(str(run / "checkpoint_epoch[12].pt"))
    assert [p.name for p in sub.paths] == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    assert torch.equal(flatten(sub.final), flatten(sub.params[1]))
    pca1 = tj.pca_directions(sub.params, sub.final)  # rank 1: d_2 any unit vector orthogonal to d_1
    np.testing.assert_allclose(pca1.explained_variance_ratio, [1.0, 0.0], atol=1e-7)
    # a checkpoint file as final keeps only the checkpoints up to it
    early = tj.load_trajectory(run / "checkpoint_epoch2.pt")
    assert [p.name for p in early.paths] == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    # a glob with the final checkpoint given apart (as a scan of checkpoint.pt would)
    scanned = tj.load_trajectory(str(run / "checkpoint_epoch*.pt"), final=run / "checkpoint.pt")
    assert [p.name for p in scanned.paths] == [p.name for p in t.paths]
    upto2 = tj.load_trajectory(
        str(run / "checkpoint_epoch*.pt"), final=run / "checkpoint_epoch2.pt"
    )
    assert [p.name for p in upto2.paths] == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    with pytest.raises(FileNotFoundError, match="final checkpoint"):
        tj.load_trajectory(run, final=run / "nope.pt")


def test_trajectory_refuses_another_architecture_and_bad_sources(run, tmp_path):
    other = _train(tmp_path / "other", 1, [8])
    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    shutil.copy(other / "checkpoint_epoch1.pt", mixed / "checkpoint_epoch1.pt")
    wrong = r"checkpoint_epoch1\.pt.*widths=\[8\].*widths=\[16, 16\].*differ in: options\); a trajectory needs one"
    with pytest.raises(ValueError, match=wrong):
        tj.load_trajectory(mixed / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        tj.load_trajectory(str(tmp_path / "nothing*.pt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tj.load_trajectory(tmp_path / "missing.pt")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "checkpoint.pt", alone / "checkpoint.pt")
    with pytest.raises(ValueError, match="at least one checkpoint besides the final one"):
        tj.load_trajectory(alone)

"""Tests for train.data / train.dataformats / train.fetch on small files written to tmp_path.

The network is never touched: downloads are exercised with a patched ``urlopen``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import train.data as tdata
import train.sources as tsources
from train.data import (
    DATASETS,
    Data,
    DatasetError,
    DatasetSpec,
    load_dataset,
    search_dirs,
    subset_indices,
)

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    """Encode ``arr`` (uint8) as an IDX file: magic 00 00 type ndim, big-endian dims, data."""
    header = bytes([0, 0, type_byte, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def make_idx_set(
    folder: Path,
    n_train: int = 30,
    n_test: int = 10,
    side: int = 28,
    label: int | None = None,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style IDX files into ``folder``; return the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": (
            np.arange(n_train) % 10 if label is None else np.full(n_train, label)
        ).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10 if label is None else np.full(n_test, label)).astype(
            np.uint8
        ),
    }
    for role, stem in IDX_NAMES.items():
        data = idx_bytes(arrays[role])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes([labels[i]]) + images[i].tobytes() for i in range(n))
    return raw, images, labels


def make_cifar(
    folder: Path, per_batch: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        raw, x, y = cifar_records(per_batch, i)
        (d / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(x)
        ys.append(y)
    raw, tx, ty = cifar_records(3, 99)
    (d / "test_batch.bin").write_bytes(raw)
    return np.concatenate(xs), np.concatenate(ys), tx, ty


def make_svhn(
    folder: Path, n_train: int = 12, n_test: int = 6
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 means digit 0
        savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LANDSCAPE_DATA, a private cache folder and a private 'system' root for every test."""
    monkeypatch.delenv(tdata.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tsources, "SYSTEM_ROOT", tmp_path / "system")
    return tmp_path


class FakeResponse(io.BytesIO):
    """Stands in for what ``urllib.request.urlopen`` returns."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


# --------------------------------------------------------------------------- registry and digits


def test_registry_specs() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "svhn"}
    for name, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert spec.domain == (0.0, 1.0) and spec.n_classes == 10
        assert all(0 < m < 1 for m in spec.mean) and all(0 < s < 1 for s in spec.std)
    assert issubclass(DatasetError, ValueError)


def test_digits_shapes_range_and_split() -> None:
    data = load_dataset("digits")
    assert isinstance(data, Data) and data.spec is DATASETS["digits"]
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    # values are multiples of 1/16
    assert torch.allclose(data.train_x * 16, (data.train_x * 16).round())
    # stratified: every class keeps ~80 % of its samples in train
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    train_counts = np.bincount(data.train_y.numpy(), minlength=10)
    assert np.all(np.abs(train_counts - 0.8 * totals) <= 1)
    assert np.array_equal(train_counts + np.bincount(data.test_y.numpy(), minlength=10), totals)
    # the hard-coded mean/std are those of the training split
    assert abs(float(data.train_x.mean()) - data.spec.mean[0]) < 1e-3
    assert abs(float(data.train_x.std()) - data.spec.std[0]) < 1e-3


def test_digits_split_is_fixed_and_returns_fresh_tensors() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=7)  # seed only affects subsets
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    a.train_x.fill_(5.0)  # mutating one result must not leak into the cache
    assert float(load_dataset("digits").train_x.max()) == 1.0


def test_subsets_are_seeded_and_balanced() -> None:
    a = load_dataset("digits", train_size=100, test_size=50, seed=3)
    b = load_dataset("digits", train_size=100, test_size=50, seed=3)
    c = load_dataset("digits", train_size=100, test_size=50, seed=4)
    assert a.train_x.shape == (100, 1, 8, 8) and a.test_x.shape == (50, 1, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert np.array_equal(np.bincount(a.train_y.numpy(), minlength=10), np.full(10, 10))
    assert np.array_equal(np.bincount(a.test_y.numpy(), minlength=10), np.full(10, 5))


@pytest.mark.parametrize("sizes", [(5000, None), (None, 361)])
def test_subset_larger_than_available(sizes: tuple) -> None:
    with pytest.raises(DatasetError, match="larger than"):
        load_dataset("digits", train_size=sizes[0], test_size=sizes[1])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_subset_size(bad: object) -> None:
    with pytest.raises(DatasetError, match="train_size"):
        load_dataset("digits", train_size=bad)  # type: ignore[arg-type]


def test_subset_indices_proportional_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=1000, p=[0.1, 0.2, 0.3, 0.4])
    counts = np.bincount(labels, minlength=4)
    for size in (1, 7, 50, 333, 1000):
        idx = subset_indices(labels, size, seed=11)
        assert idx.shape == (size,) and np.all(np.diff(idx) > 0)
        got = np.bincount(labels[idx], minlength=4)
        assert np.all(np.abs(got - size * counts / 1000) <= 1.0 + 1e-9)
        assert np.array_equal(idx, subset_indices(labels, size, seed=11))
    assert not np.array_equal(subset_indices(labels, 50, 1), subset_indices(labels, 50, 2))
    with pytest.raises(DatasetError):
        subset_indices(labels, 1001, 0)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(DatasetError, match="known datasets: digits, mnist"):
        load_dataset("imagenet")
    assert load_dataset("Digits", train_size=10).spec.name == "digits"
    assert search_dirs("FashionMNIST")[-1].name == "fashion-mnist"


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = make_idx_set(tmp_path / "d", gz=gz)
    data = load_dataset(name, data_dir=tmp_path / "d")
    assert data.train_x.shape == (30, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.test_y.dtype == torch.int64
    expected = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)[:, None]
    assert torch.equal(data.train_x, expected)
    assert data.train_y.tolist() == arrays["train_labels"].tolist()
    assert data.test_y.tolist() == arrays["test_labels"].tolist()
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
    sub = load_dataset(name, data_dir=tmp_path / "d", train_size=10, test_size=5, seed=1)
    assert sub.train_x.shape[0] == 10 and sorted(sub.train_y.tolist()) == list(range(10))


def _corrupt(folder: Path, how: str) -> None:
    path = folder / "train-images-idx3-ubyte"
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    (folder / "train-images-idx3-ubyte.gz").unlink()
    if how == "truncated":
        path.write_bytes(raw[:-100])
    elif how == "magic":
        path.write_bytes(b"\x12\x34" + raw[2:])
    elif how == "type":
        path.write_bytes(raw[:2] + b"\x42" + raw[3:])
    elif how == "trailing":
        path.write_bytes(raw + b"\x00" * 7)
    elif how == "header":
        path.write_bytes(raw[:9])
    elif how == "gzip":
        (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-50])


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated", "truncated"),
        ("magic", "wrong magic number"),
        ("type", "wrong magic number"),
        ("trailing", "trailing bytes"),
        ("header", "truncated inside its header"),
        ("gzip", "gzip"),
    ],
)
def test_corrupted_idx(tmp_path: Path, how: str, message: str) -> None:
    make_idx_set(tmp_path / "d")
    _corrupt(tmp_path / "d", how)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("mnist", data_dir=tmp_path / "d")
    assert "train-images-idx3-ubyte" in str(info.value)


def test_idx_inconsistent_labels(tmp_path: Path) -> None:
    d = tmp_path / "d"
    make_idx_set(d)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(29, np.uint8))))
    with pytest.raises(DatasetError, match="30 images but .* 29 labels"):
        load_dataset("mnist", data_dir=d)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(30, 12, np.uint8)))
    )
    with pytest.raises(DatasetError, match="labels .* 0..9"):
        load_dataset("mnist", data_dir=d)


def test_idx_wrong_image_size(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "d", side=8)
    with pytest.raises(DatasetError, match=r"expected \(1, 28, 28\)"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "d")


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_binary_loader(tmp_path: Path) -> None:
    tx, ty, vx, vy = make_cifar(tmp_path / "c")
    data = load_dataset("cifar10", data_dir=tmp_path / "c")
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert torch.equal(data.train_x, torch.from_numpy(tx.astype(np.float32) / 255))
    assert data.train_y.tolist() == ty.tolist() and data.test_y.tolist() == vy.tolist()
    # channel planes: record bytes 1..1024 are red, the next 1024 green
    raw = (tmp_path / "c" / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert round(float(data.train_x[0, 1, 0, 0]) * 255) == raw[1 + 1024]


def test_cifar_tar_archive(tmp_path: Path) -> None:
    tx, ty, vx, vy = make_cifar(tmp_path / "src")
    archive_dir = tmp_path / "arch"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    data = load_dataset("cifar10", data_dir=archive_dir)
    assert torch.equal(data.test_x, torch.from_numpy(vx.astype(np.float32) / 255))
    assert data.train_y.tolist() == ty.tolist()
    (archive_dir / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b\x08" + b"\x00" * 40)
    with pytest.raises(DatasetError, match="damaged or truncated"):
        load_dataset("cifar10", data_dir=archive_dir)


def test_cifar_wrong_record_size(tmp_path: Path) -> None:
    make_cifar(tmp_path / "c")
    batch = tmp_path / "c" / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="record size") as info:
        load_dataset("cifar10", data_dir=tmp_path / "c")
    assert "data_batch_3.bin" in str(info.value)


def test_cifar_bad_label(tmp_path: Path) -> None:
    make_cifar(tmp_path / "c")
    batch = tmp_path / "c" / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(batch.read_bytes())
    raw[0] = 200
    batch.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="0..9"):
        load_dataset("cifar10", data_dir=tmp_path / "c")


# --------------------------------------------------------------------------- SVHN


def test_svhn_loader(tmp_path: Path) -> None:
    written = make_svhn(tmp_path / "s")
    data = load_dataset("svhn", data_dir=tmp_path / "s")
    x, y = written["train"]
    assert data.train_x.shape == (12, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    # X[h, w, c, n] -> out[n, c, h, w]
    assert round(float(data.train_x[4, 2, 7, 19]) * 255) == x[7, 19, 2, 4]
    expected = y.reshape(-1).astype(np.int64) % 10
    assert data.train_y.tolist() == expected.tolist() and 0 in data.train_y.tolist()


def test_svhn_corrupted(tmp_path: Path) -> None:
    from scipy.io import savemat

    make_svhn(tmp_path / "s")
    (tmp_path / "s" / "test_32x32.mat").write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path / "s")
    savemat(str(tmp_path / "s" / "test_32x32.mat"), {"images": np.zeros((2, 2))})
    with pytest.raises(DatasetError, match="X and y"):
        load_dataset("svhn", data_dir=tmp_path / "s")


# --------------------------------------------------------------------------- search order, missing data


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_set(tmp_path / "explicit", label=1)
    make_idx_set(tmp_path / "env" / "mnist", label=2)  # per-dataset subfolder of $LANDSCAPE_DATA
    make_idx_set(tmp_path / "cache" / "landscape" / "mnist", label=3)
    make_idx_set(tmp_path / "system" / "mnist", label=4)
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path / "env"))
    assert set(load_dataset("mnist", data_dir=tmp_path / "explicit").train_y.tolist()) == {1}
    assert set(load_dataset("mnist").train_y.tolist()) == {2}
    monkeypatch.delenv("LANDSCAPE_DATA")
    assert set(load_dataset("mnist").train_y.tolist()) == {3}
    import shutil

    shutil.rmtree(tmp_path / "cache")
    assert set(load_dataset("mnist").train_y.tolist()) == {4}


def test_env_var_folder_itself_and_subfolder_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_idx_set(tmp_path / "env", label=5)
    monkeypatch.setenv(
        "LANDSCAPE_DATA", os.pathsep.join([str(tmp_path / "nothing"), str(tmp_path / "env")])
    )
    assert set(load_dataset("fashion-mnist").train_y.tolist()) == {5}
    make_idx_set(tmp_path / "env" / "fashion-mnist", label=6)
    assert set(load_dataset("fashion-mnist").train_y.tolist()) == {6}
    dirs = search_dirs("fashion-mnist")
    assert dirs.index(tmp_path / "env" / "fashion-mnist") < dirs.index(tmp_path / "env")
    assert dirs.index(tmp_path / "env") < dirs.index(
        tmp_path / "cache" / "landscape" / "fashion-mnist"
    )
    assert dirs[-1] == tmp_path / "system" / "fashion-mnist"
    # an explicit --data-dir is the only place looked
    assert search_dirs("fashion-mnist", tmp_path / "x") == [
        tmp_path / "x" / s for s in ("fashion-mnist", "fashion_mnist", "FashionMNIST")
    ] + [tmp_path / "x"]


def test_an_explicit_data_dir_is_the_only_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --data-dir that does not exist, or holds only part of a dataset, is an error; the
    system copy (or any other) is never used in its place."""
    make_idx_set(tmp_path / "system" / "fashion-mnist", label=4)
    assert set(load_dataset("fashion-mnist").train_y.tolist()) == {4}
    with pytest.raises(DatasetError, match="--data-dir .*nowhere does not exist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    part = tmp_path / "part"
    make_idx_set(part, label=1)
    (part / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="not found") as info:
        load_dataset("fashion-mnist", data_dir=part)
    assert str(tmp_path / "system") not in str(info.value) and str(part) in str(info.value)


def test_missing_dataset_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    assert "does not exist" in str(info.value)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    msg = str(info.value)
    assert str(tmp_path / "mine" / "fashion-mnist") in msg and str(tmp_path / "envdir") not in msg
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    for place in (
        tmp_path / "envdir",
        tmp_path / "envdir" / "fashion-mnist",
        tmp_path / "cache" / "landscape" / "fashion-mnist",
        tmp_path / "system" / "fashion-mnist",
    ):
        assert str(place) in msg
    for hint in (
        "apt-get install dataset-fashion-mnist",
        "--download",
        "--data-dir",
        "LANDSCAPE_DATA",
        "train-images-idx3-ubyte.gz",
    ):
        assert hint in msg
    assert "is not set" not in msg
    monkeypatch.delenv("LANDSCAPE_DATA")
    for name in ("mnist", "cifar10", "svhn"):
        with pytest.raises(DatasetError, match="--download") as info:
            load_dataset(name)
        assert "$LANDSCAPE_DATA is not set" in str(info.value)


# --------------------------------------------------------------------------- download


def test_download_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def offline(request: object, timeout: float = 0) -> None:
        calls.append(getattr(request, "full_url", str(request)))
        assert 0 < timeout <= 60
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="could not download train-images-idx3-ubyte.gz") as info:
        load_dataset("mnist", data_dir=tmp_path / "dl", download=True)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert (
        "name resolution" in msg
        and "ossci-datasets" in msg
        and "check the network" in msg
        and "by hand into" in msg
    )
    assert len(calls) == 2  # both mirrors tried once, then one error
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda request, timeout=0: FakeResponse(b"garbage")
    )
    with pytest.raises(DatasetError, match="checksum"):
        load_dataset("cifar10", data_dir=tmp_path / "dl", download=True)
    assert not any((tmp_path / "dl").iterdir())


def test_download_success_then_found_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_svhn(tmp_path / "server")
    served = {p.name: p.read_bytes() for p in (tmp_path / "server").iterdir()}
    src = tsources.SOURCES["svhn"]
    patched = tuple(
        dataclasses.replace(d, md5=hashlib.md5(served[d.filename]).hexdigest())
        for d in src.downloads
    )
    monkeypatch.setitem(tsources.SOURCES, "svhn", dataclasses.replace(src, downloads=patched))
    fetched: list[str] = []

    def serve(request: urllib.request.Request, timeout: float = 0) -> FakeResponse:
        fetched.append(request.full_url)
        return FakeResponse(served[request.full_url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    data = load_dataset("svhn", download=True)  # no data_dir: goes to the cache folder
    assert data.train_x.shape == (12, 3, 32, 32)
    assert (tmp_path / "cache" / "landscape" / "svhn" / "train_32x32.mat").is_file()
    assert len(fetched) == 2
    load_dataset("svhn", download=True)  # already there: nothing fetched again
    assert len(fetched) == 2


def test_digits_ignores_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert load_dataset("digits", download=True, train_size=10).train_x.shape == (10, 1, 8, 8)


# --------------------------------------------------------------------------- the real system package


def test_system_fashion_mnist_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    system = Path("/usr/share/datasets")
    if not (system / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    monkeypatch.setattr(tsources, "SYSTEM_ROOT", system)
    data = load_dataset("fashion-mnist", train_size=200, test_size=100, seed=0)
    assert data.train_x.shape == (200, 1, 28, 28) and data.test_x.shape == (100, 1, 28, 28)
    assert np.array_equal(np.bincount(data.train_y.numpy(), minlength=10), np.full(10, 20))
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
    assert "/usr/share/datasets/fashion-mnist" in data.source


def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """A gzip IDX file whose header declares a small array but which inflates to far more is
    refused from its trailer, without inflating it; so is a header declaring a huge array."""
    from train import dataformats

    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], dtype=">u4").tobytes())
        block = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros, about 64 KiB compressed
            fh.write(block)
    assert bomb.stat().st_size < 1 << 20
    inflated = []
    real_read = gzip.GzipFile.read

    def counting_read(self, n=-1):
        out = real_read(self, n)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(DatasetError, match="trailer says it inflates to"):
        dataformats.read_idx(bomb)
    assert sum(inflated) < 1024  # only the header was inflated
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(bytes([0, 0, 8, 3]) + np.array([100000, 4000, 4000], dtype=">u4").tobytes())
    with pytest.raises(DatasetError, match="more than the .* an IDX dataset may hold"):
        dataformats.read_idx(huge)


def test_an_idx_header_with_a_wrong_shape_is_refused_before_inflating(
    tmp_path: Path, monkeypatch
) -> None:
    """An honest gzip file whose header declares a shape the dataset cannot have (more rows than
    labels, or images that are not 28 x 28) is refused from its header, without inflating it."""
    d = tmp_path / "d"
    make_idx_set(d)
    n = 30
    for dims in ((n, 200, 200), (n + 1, 28, 28)):
        big = d / "train-images-idx3-ubyte.gz"
        with gzip.open(big, "wb", compresslevel=9) as fh:
            fh.write(bytes([0, 0, 8, 3]) + np.array(dims, dtype=">u4").tobytes())
            fh.write(bytes(int(np.prod(dims))))
        inflated = []
        real_read = gzip.GzipFile.read

        def counting_read(self, k=-1, _real=real_read):
            out = _real(self, k)
            inflated.append(len(out))
            return out

        monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
        with pytest.raises(DatasetError, match=r"expected \(1, 28, 28\)|31 images but"):
            load_dataset("mnist", data_dir=d)
        monkeypatch.undo()
        assert sum(inflated) < 4096, dims  # headers only (and the small label file)

"""Datasets: one registry of names and one loader that returns train/test tensors.

>>> from train.data import DATASETS, load_dataset
>>> data = load_dataset("digits", train_size=200, seed=1)
>>> data.train_x.shape, data.train_x.dtype, data.train_y.dtype
(torch.Size([200, 1, 8, 8]), torch.float32, torch.int64)

Every dataset comes back as ``float32`` tensors ``[N, C, H, W]`` with pixels in the domain
``[0, 1]`` (``uint8 / 255``; ``digits``: ``value / 16``) and ``int64`` labels ``0 .. 9``.
Normalisation is *not* applied to the data: the model zoo puts a
:class:`bounds.layers.Normalize` layer with the spec's ``mean``/``std`` in front of every
network, so the eps-ball is measured in pixel units and bounds can clip it to ``spec.domain``.

Names
-----
``digits``         scikit-learn's embedded 8x8 digits (1797 images, 0..16 grey levels); a fixed
                   stratified 80/20 split (``train_test_split(test_size=0.2, stratify=y,
                   random_state=0)``): 1437 train, 360 test. Needs no files.
``mnist``          IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
``fashion-mnist``  same IDX names; Debian's ``dataset-fashion-mnist`` installs them in
                   ``/usr/share/datasets/fashion-mnist``.
``cifar10``        binary version: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
                   ``test_batch.bin``, or the archive ``cifar-10-binary.tar.gz`` itself.
``svhn``           ``train_32x32.mat`` and ``test_32x32.mat`` (cropped digits, label 10 -> 0).

Where files are looked for (first hit wins)
-------------------------------------------
1. ``data_dir`` (``--data-dir``): ``data_dir/<subfolder>`` then ``data_dir`` itself;
2. every folder in ``$LANDSCAPE_DATA`` (``os.pathsep``-separated): ``<folder>/<subfolder>``
   then ``<folder>``;
3. the download cache ``$XDG_CACHE_HOME/landscape/<name>`` (default ``~/.cache/landscape/<name>``);
4. the system place ``/usr/share/datasets/<name>``.

``<subfolder>`` is the dataset's name or a common spelling of it (``fashion-mnist``,
``fashion_mnist``, ``FashionMNIST``, ...). MNIST and Fashion-MNIST use the *same* file
names, so keep them in separate subfolders; subfolders are searched before the folder itself.

``download=True`` fetches missing files from the official sources into ``data_dir`` (or the
cache folder), checking the published MD5 of every file; offline it fails with one
:class:`DatasetError` after a short timeout. Files found locally are never checksummed (the
Debian package recompresses its files, so their MD5s differ from the official ones); they are
validated structurally instead (magic numbers, sizes, label ranges).

Mean/std (per channel, training set, pixel units in ``[0, 1]``) are the standard published
values for MNIST (0.1307/0.3081), Fashion-MNIST (0.2860/0.3530), CIFAR-10
((0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616), the per-pixel std, not the per-image one
some code bases use) and SVHN ((0.4377, 0.4438, 0.4728)/(0.1980, 0.2010, 0.1970)); the digits
values were computed once on the fixed training split and hard-coded.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from train.dataformats import (
    DatasetError,
    read_cifar_batches,
    read_cifar_tar,
    read_idx_pair,
    read_svhn_mat,
)
from train.fetch import download_file, file_digest

__all__ = [
    "DatasetError",
    "DatasetSpec",
    "Data",
    "DATASETS",
    "ENV_VAR",
    "SYSTEM_ROOT",
    "load_dataset",
    "search_dirs",
    "cache_dir",
    "subset_indices",
]

ENV_VAR = "LANDSCAPE_DATA"
"""Environment variable naming extra folders to search (``os.pathsep``-separated)."""

SYSTEM_ROOT = Path("/usr/share/datasets")
"""System-wide dataset root (Debian's ``dataset-*`` packages install under it)."""

DIGITS_SPLIT_SEED = 0
"""``random_state`` of the fixed stratified digits split."""

DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and the bound engine need to know about a dataset.

    ``input_shape`` is ``(C, H, W)``; ``mean``/``std`` have ``C`` entries each, in pixel units
    (the data are in ``domain``); ``domain`` is the box every input lies in, so an eps-ball can
    be clipped to ``[max(x - eps, lo), min(x + eps, hi)]``.
    """

    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    domain: tuple[float, float] = (0.0, 1.0)


@dataclass
class Data:
    """Train and test tensors of one dataset: ``*_x`` float32 ``[N, C, H, W]`` in ``spec.domain``,
    ``*_y`` int64 ``[N]``; ``source`` says where the arrays came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    spec: DatasetSpec
    source: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", (1, 8, 8), 10, (0.3054,), (0.3761,)),
    "mnist": DatasetSpec("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": DatasetSpec("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}


# --------------------------------------------------------------------------- file sources


@dataclass(frozen=True)
class _Download:
    filename: str
    urls: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class _Source:
    """How one file-backed dataset is found, read and fetched."""

    subfolders: tuple[str, ...]
    needs: str  # human description of the files, for error messages
    locate: Callable[[Path], Optional[dict[str, Path]]]
    read: Callable[[dict[str, Path]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    downloads: tuple[_Download, ...]
    how_to_get: str


_IDX_ROLES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _locate_idx(folder: Path) -> Optional[dict[str, Path]]:
    found: dict[str, Path] = {}
    for role, stem in _IDX_ROLES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def _read_idx_set(found: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tx, ty = read_idx_pair(found["train_images"], found["train_labels"])
    vx, vy = read_idx_pair(found["test_images"], found["test_labels"])
    if tx.shape[1:] != vx.shape[1:]:
        raise DatasetError(f"train images {tx.shape[1:]} and test images {vx.shape[1:]} differ in shape")
    return tx, ty, vx, vy


def _locate_cifar(folder: Path) -> Optional[dict[str, Path]]:
    for d in (folder / "cifar-10-batches-bin", folder):
        if all((d / f).is_file() for f in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return {"batches": d}
    if (folder / _CIFAR_ARCHIVE).is_file():
        return {"archive": folder / _CIFAR_ARCHIVE}
    return None


def _read_cifar(found: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if "batches" in found:
        d = found["batches"]
        tx, ty = read_cifar_batches(d / f for f in _CIFAR_TRAIN)
        vx, vy = read_cifar_batches([d / _CIFAR_TEST])
    else:
        tx, ty = read_cifar_tar(found["archive"], _CIFAR_TRAIN)
        vx, vy = read_cifar_tar(found["archive"], [_CIFAR_TEST])
    return tx, ty, vx, vy


def _locate_svhn(folder: Path) -> Optional[dict[str, Path]]:
    paths = {k: folder / v for k, v in _SVHN_FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _read_svhn(found: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tx, ty = read_svhn_mat(found["train"])
    vx, vy = read_svhn_mat(found["test"])
    return tx, ty, vx, vy


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")


def _idx_downloads(mirrors: Sequence[str], md5s: Mapping[str, str]) -> tuple[_Download, ...]:
    return tuple(
        _Download(f"{stem}.gz", tuple(m + f"{stem}.gz" for m in mirrors), md5s[stem])
        for stem in _IDX_ROLES.values()
    )


_SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        subfolders=("mnist", "MNIST"),
        needs="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzip or uncompressed)",
        locate=_locate_idx,
        read=_read_idx_set,
        downloads=_idx_downloads(_MNIST_MIRRORS, {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        }),
        how_to_get=f"the four files from {_MNIST_MIRRORS[0]} (or {_MNIST_MIRRORS[1]})",
    ),
    "fashion-mnist": _Source(
        subfolders=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        needs="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzip or uncompressed)",
        locate=_locate_idx,
        read=_read_idx_set,
        downloads=_idx_downloads(_FASHION_MIRRORS, {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        }),
        how_to_get="`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or the four files from "
        f"{_FASHION_MIRRORS[0]}",
    ),
    "cifar10": _Source(
        subfolders=("cifar10", "cifar-10", "CIFAR10"),
        needs=f"cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin, or {_CIFAR_ARCHIVE}",
        locate=_locate_cifar,
        read=_read_cifar,
        downloads=(_Download(_CIFAR_ARCHIVE, (f"https://www.cs.toronto.edu/~kriz/{_CIFAR_ARCHIVE}",),
                             "c32a1d4ab5d03f1284b67883e8d87530"),),
        how_to_get=f"https://www.cs.toronto.edu/~kriz/{_CIFAR_ARCHIVE} (the binary version, not the python one)",
    ),
    "svhn": _Source(
        subfolders=("svhn", "SVHN"),
        needs="train_32x32.mat and test_32x32.mat",
        locate=_locate_svhn,
        read=_read_svhn,
        downloads=(
            _Download("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                      "e26dedcc434d2e4c54c9b2d4a06d8373"),
            _Download("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                      "eb5a983be6a315427106f1b164d9cef3"),
        ),
        how_to_get="train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
    ),
}


# --------------------------------------------------------------------------- search


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return key


def cache_dir(name: str) -> Path:
    """Default download folder of a dataset: ``$XDG_CACHE_HOME/landscape/<name>`` (``~/.cache`` default)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "landscape" / _canonical(name)


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder :func:`load_dataset` looks in for ``name``, in search order (see module doc)."""
    key = _canonical(name)
    source = _SOURCES.get(key)
    subs = source.subfolders if source else (key,)
    dirs: list[Path] = []

    def add_base(base: Path) -> None:
        dirs.extend(base / s for s in subs)
        dirs.append(base)

    if data_dir is not None and str(data_dir) != "":
        add_base(Path(data_dir).expanduser())
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            add_base(Path(entry.strip()).expanduser())
    dirs.append(cache_dir(key))
    dirs.append(SYSTEM_ROOT / key)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find(key: str, data_dir: str | Path | None) -> tuple[Optional[dict[str, Path]], list[Path]]:
    looked = search_dirs(key, data_dir)
    for folder in looked:
        if folder.is_dir():
            found = _SOURCES[key].locate(folder)
            if found is not None:
                return found, looked
    return None, looked


def _missing_message(key: str, looked: Sequence[Path], data_dir: str | Path | None) -> str:
    source = _SOURCES[key]
    env = os.environ.get(ENV_VAR)
    env_note = "" if env else f" (${ENV_VAR} is not set)"
    return (
        f"dataset {key!r} not found: looked for {source.needs} in {', '.join(str(p) for p in looked)}"
        f"{env_note}; to get it, rerun with --download (download=True) to fetch it from the official source "
        f"into {Path(data_dir) if data_dir else cache_dir(key)}, or fetch {source.how_to_get} yourself and pass "
        f"its folder with --data-dir DIR or ${ENV_VAR}=DIR"
    )


def _download(key: str, data_dir: str | Path | None) -> Path:
    target = Path(data_dir).expanduser() if data_dir else cache_dir(key)
    for item in _SOURCES[key].downloads:
        path = target / item.filename
        if path.is_file() and file_digest(path) == item.md5:
            continue
        try:
            download_file(item.urls, path, item.md5, "md5")
        except DatasetError as exc:
            raise DatasetError(
                f"--download of dataset {key!r} failed: {exc}; check the network (this machine may be offline), "
                f"or fetch {_SOURCES[key].how_to_get} by hand into {target} "
                f"(or into any folder you pass with --data-dir DIR or ${ENV_VAR}=DIR)"
            ) from exc
    return target


# --------------------------------------------------------------------------- reading and caching


def _file_key(found: dict[str, Path]) -> tuple:
    """Cache key: every path with its size and modification time, so edited files are re-read."""
    items = []
    for role, path in sorted(found.items()):
        targets = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        items.append((role, str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in targets)))
    return tuple(items)


@functools.lru_cache(maxsize=4)
def _read_cached(key: str, file_key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    found = {role: Path(path) for role, path, _ in file_key}
    arrays = _SOURCES[key].read(found)
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split of scikit-learn's digits, pixels as float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    tx, vx, ty, vy = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    arrays = (np.ascontiguousarray(tx), ty, np.ascontiguousarray(vx), vy)
    for a in arrays:
        a.setflags(write=False)
    return arrays


# --------------------------------------------------------------------------- subsets


def _check_size(size: object, what: str) -> Optional[int]:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise DatasetError(f"{what} must be a positive integer or None, got {size!r}")
    if size <= 0:
        raise DatasetError(f"{what} must be a positive integer, got {size}")
    return int(size)


def subset_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Seeded, class-proportional choice of ``size`` indices into ``labels`` (sorted ascending).

    Each class's indices are shuffled with ``numpy.random.default_rng(seed)``; the element of
    within-class rank ``r`` in a class of ``n_c`` samples gets the key ``(r + 0.5) / n_c``, and
    the ``size`` smallest keys win (ties broken by the shuffle). So every prefix takes classes in
    proportion to their frequency (within one sample per class), and the result depends only on
    ``labels``, ``size`` and ``seed``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if size > n:
        raise DatasetError(f"subset size {size} exceeds the {n} samples available")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    keys = np.empty(n, dtype=np.float64)
    shuffled_labels = labels[order]
    for c in np.unique(labels):
        members = order[shuffled_labels == c]
        keys[members] = (np.arange(members.size) + 0.5) / members.size
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    chosen = np.lexsort((position, keys))[:size]
    return np.sort(chosen)


def _take(x: np.ndarray, y: np.ndarray, size: Optional[int], seed: int, stream: int, what: str,
          key: str) -> tuple[np.ndarray, np.ndarray]:
    if size is None:
        return x, y
    if size > y.shape[0]:
        part = "training" if stream == 0 else "test"
        raise DatasetError(f"{what}={size} is larger than the {y.shape[0]} {part} samples of {key!r}")
    idx = subset_indices(y, size, seed * 2 + stream)
    return x[idx], y[idx]


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / np.float32(255.0)
    else:
        xf = np.array(x, dtype=np.float32, copy=True)
    return torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(np.array(y, dtype=np.int64, copy=True))


# --------------------------------------------------------------------------- public loader


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    seed: int = 0,
) -> Data:
    """Load dataset ``name`` as float32 tensors ``[N, C, H, W]`` in ``[0, 1]`` with int64 labels.

    ``data_dir``: first folder to search (see the module docstring for the full order).
    ``download``: fetch missing files from the official source (MD5-checked) into ``data_dir``
    or ``~/.cache/landscape/<name>``. ``train_size``/``test_size``: keep a seeded,
    class-proportional subset of that many samples (:func:`subset_indices`); the same
    ``seed`` always gives the same subset. Raises :class:`DatasetError` (a ``ValueError``) for an
    unknown name, a missing or malformed dataset, a failed download or a bad subset size.
    """
    key = _canonical(name)
    spec = DATASETS[key]
    n_train = _check_size(train_size, "train_size")
    n_test = _check_size(test_size, "test_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")

    if key == "digits":
        tx, ty, vx, vy = _digits_arrays()
        source = "sklearn.datasets.load_digits"
    else:
        found, looked = _find(key, data_dir)
        if found is None and download:
            target = _download(key, data_dir)
            found = _SOURCES[key].locate(target)
        if found is None:
            raise DatasetError(_missing_message(key, looked, data_dir))
        tx, ty, vx, vy = _read_cached(key, _file_key(found))
        source = ", ".join(str(p) for p in found.values())
        if tuple(tx.shape[1:]) != spec.input_shape:
            raise DatasetError(f"{key} images in {source} have shape {tuple(tx.shape[1:])}, expected {spec.input_shape}")

    tx, ty = _take(tx, ty, n_train, int(seed), 0, "train_size", key)
    vx, vy = _take(vx, vy, n_test, int(seed), 1, "test_size", key)
    train_x, train_y = _to_tensors(tx, ty)
    test_x, test_y = _to_tensors(vx, vy)
    return Data(train_x, train_y, test_x, test_y, spec, source)

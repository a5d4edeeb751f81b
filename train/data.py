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
``FILE.py:function`` or ``package.module:function``
                   your own data: the function is called with no arguments and returns
                   ``(train_x, train_y, test_x, test_y)`` or a dict with those keys and optionally
                   ``classes``, ``mean``, ``std``; see :mod:`train.userdata` for the format and
                   the checks. Subsets (``train_size``, ``test_size``) apply as to any dataset.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from train import plugins, sources, userdata
from train.dataformats import DatasetError, DatasetSpec
from train.sources import ENV_VAR, SYSTEM_ROOT

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
    "dataset_spec",
]

DIGITS_SPLIT_SEED = 0
"""``random_state`` of the fixed stratified digits split."""

DIGITS_TEST_FRACTION = 0.2


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
    "cifar10": DatasetSpec(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "svhn": DatasetSpec(
        "svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


# --------------------------------------------------------------------------- names and folders


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}, or your own as "
            "FILE.py:function or package.module:function"
        )
    return key


def dataset_spec(name: str) -> DatasetSpec | None:
    """The spec of a registered dataset, or of a dataset function this process has loaded; None
    otherwise (a dataset function is never called here)."""
    if plugins.is_reference(name):
        return userdata.known_spec(name)
    try:
        return DATASETS[_canonical(name)]
    except DatasetError:
        return None


def cache_dir(name: str) -> Path:
    """Default download folder of a dataset: ``$XDG_CACHE_HOME/landscape/<name>`` (``~/.cache`` default)."""
    return sources.cache_dir(_canonical(name))


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder :func:`load_dataset` looks in for ``name``, in search order (see module doc)."""
    return sources.search_dirs(_canonical(name), data_dir)


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


def _check_size(size: object, what: str) -> int | None:
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


def _take(
    x: np.ndarray, y: np.ndarray, size: int | None, seed: int, stream: int, what: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    if size is None:
        return x, y
    if size > y.shape[0]:
        part = "training" if stream == 0 else "test"
        raise DatasetError(
            f"{what}={size} is larger than the {y.shape[0]} {part} samples of {key!r}"
        )
    idx = subset_indices(y, size, seed * 2 + stream)
    return x[idx], y[idx]


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / np.float32(255.0)
    else:
        xf = np.array(x, dtype=np.float32, copy=True)
    return torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(
        np.array(y, dtype=np.int64, copy=True)
    )


def _registered_arrays(
    key: str, spec: DatasetSpec, data_dir: str | Path | None, download: bool
) -> tuple:
    """``(train_x, train_y, test_x, test_y, source)`` of a registered dataset, found (or fetched)."""
    if key == "digits":
        return (*_digits_arrays(), "sklearn.datasets.load_digits")
    if (
        data_dir is not None
        and str(data_dir) != ""
        and not Path(data_dir).expanduser().is_dir()
        and not download
    ):
        raise DatasetError(
            f"--data-dir {data_dir} does not exist (or is not a folder); when given it is the "
            f"only place dataset {key!r} is looked for (--download fetches it there)"
        )
    found, looked = sources.find(key, data_dir)
    if found is None and download:
        target = sources.download(key, data_dir)
        found = sources.SOURCES[key].locate(target)
    if found is None:
        raise DatasetError(sources.missing_message(key, looked, data_dir))
    tx, ty, vx, vy = sources.read_cached(key, sources.file_key(found))
    source = ", ".join(str(p) for p in found.values())
    if tuple(tx.shape[1:]) != spec.input_shape:
        raise DatasetError(
            f"{key} images in {source} have shape {tuple(tx.shape[1:])}, expected {spec.input_shape}"
        )
    return tx, ty, vx, vy, source


# --------------------------------------------------------------------------- public loader


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Data:
    """Load dataset ``name`` as float32 tensors ``[N, C, H, W]`` in ``[0, 1]`` with int64 labels.

    ``data_dir``: first folder to search (see the module docstring for the full order).
    ``download``: fetch missing files from the official source (MD5-checked) into ``data_dir``
    or ``~/.cache/landscape/<name>``. ``train_size``/``test_size``: keep a seeded,
    class-proportional subset of that many samples (:func:`subset_indices`); the same
    ``seed`` always gives the same subset. ``name`` may also be a dataset function,
    ``FILE.py:function`` or ``package.module:function`` (:mod:`train.userdata`; ``data_dir`` and
    ``download`` do not apply to it). Raises :class:`DatasetError` (a ``ValueError``) for an
    unknown name, a missing or malformed dataset, a failed download or a bad subset size.
    """
    user = plugins.is_reference(name)
    key = name if user else _canonical(name)
    n_train = _check_size(train_size, "train_size")
    n_test = _check_size(test_size, "test_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")

    if user:
        (tx, ty, vx, vy), spec = userdata.load(name)
        key = source = spec.name
    else:
        spec = DATASETS[key]
        tx, ty, vx, vy, source = _registered_arrays(key, spec, data_dir, download)

    tx, ty = _take(tx, ty, n_train, int(seed), 0, "train_size", key)
    vx, vy = _take(vx, vy, n_test, int(seed), 1, "test_size", key)
    train_x, train_y = _to_tensors(tx, ty)
    test_x, test_y = _to_tensors(vx, vy)
    return Data(train_x, train_y, test_x, test_y, spec, source)

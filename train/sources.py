"""Where the file-backed datasets live, how their files are read, and how they are fetched.

Each dataset of :data:`SOURCES` says which files it needs, how to find them in a folder, how to
read them (:mod:`train.dataformats`) and where to download them; :func:`find` walks the folders
of :func:`search_dirs` (order in :mod:`train.data`), :func:`download` fetches missing files with
their published MD5 (:mod:`train.fetch`), and :func:`read_cached` reads a set of files once per
size and modification time. Dataset names here are the canonical keys of
``train.data.DATASETS``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.dataformats import (
    DatasetError,
    read_cifar_batches,
    read_cifar_tar,
    read_idx_pair,
    read_svhn_mat,
)
from train.fetch import download_file, file_digest

ENV_VAR = "LANDSCAPE_DATA"
"""Environment variable naming extra folders to search (``os.pathsep``-separated)."""

SYSTEM_ROOT = Path("/usr/share/datasets")
"""System-wide dataset root (Debian's ``dataset-*`` packages install under it)."""


# --------------------------------------------------------------------------- file sources


@dataclass(frozen=True)
class Download:
    filename: str
    urls: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class Source:
    """How one file-backed dataset is found, read and fetched."""

    subfolders: tuple[str, ...]
    needs: str  # human description of the files, for error messages
    locate: Callable[[Path], dict[str, Path] | None]
    read: Callable[[dict[str, Path]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    downloads: tuple[Download, ...]
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


def _locate_idx(folder: Path) -> dict[str, Path] | None:
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
    tx, ty = read_idx_pair(
        found["train_images"], found["train_labels"], image_hw=(28, 28)
    )  # MNIST, Fashion-MNIST
    vx, vy = read_idx_pair(found["test_images"], found["test_labels"], image_hw=(28, 28))
    if tx.shape[1:] != vx.shape[1:]:
        raise DatasetError(
            f"train images {tx.shape[1:]} and test images {vx.shape[1:]} differ in shape"
        )
    return tx, ty, vx, vy


def _locate_cifar(folder: Path) -> dict[str, Path] | None:
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


def _locate_svhn(folder: Path) -> dict[str, Path] | None:
    paths = {k: folder / v for k, v in _SVHN_FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _read_svhn(found: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tx, ty = read_svhn_mat(found["train"])
    vx, vy = read_svhn_mat(found["test"])
    return tx, ty, vx, vy


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


def _idx_downloads(mirrors: Sequence[str], md5s: Mapping[str, str]) -> tuple[Download, ...]:
    return tuple(
        Download(f"{stem}.gz", tuple(m + f"{stem}.gz" for m in mirrors), md5s[stem])
        for stem in _IDX_ROLES.values()
    )


SOURCES: dict[str, Source] = {
    "mnist": Source(
        subfolders=("mnist", "MNIST"),
        needs="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzip or uncompressed)",
        locate=_locate_idx,
        read=_read_idx_set,
        downloads=_idx_downloads(
            _MNIST_MIRRORS,
            {
                "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
        how_to_get=f"the four files from {_MNIST_MIRRORS[0]} (or {_MNIST_MIRRORS[1]})",
    ),
    "fashion-mnist": Source(
        subfolders=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        needs="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzip or uncompressed)",
        locate=_locate_idx,
        read=_read_idx_set,
        downloads=_idx_downloads(
            _FASHION_MIRRORS,
            {
                "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        how_to_get="`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or the four files from "
        f"{_FASHION_MIRRORS[0]}",
    ),
    "cifar10": Source(
        subfolders=("cifar10", "cifar-10", "CIFAR10"),
        needs=f"cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin, or {_CIFAR_ARCHIVE}",
        locate=_locate_cifar,
        read=_read_cifar,
        downloads=(
            Download(
                _CIFAR_ARCHIVE,
                (f"https://www.cs.toronto.edu/~kriz/{_CIFAR_ARCHIVE}",),
                "c32a1d4ab5d03f1284b67883e8d87530",
            ),
        ),
        how_to_get=f"https://www.cs.toronto.edu/~kriz/{_CIFAR_ARCHIVE} (the binary version, not the python one)",
    ),
    "svhn": Source(
        subfolders=("svhn", "SVHN"),
        needs="train_32x32.mat and test_32x32.mat",
        locate=_locate_svhn,
        read=_read_svhn,
        downloads=(
            Download(
                "train_32x32.mat",
                ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                "e26dedcc434d2e4c54c9b2d4a06d8373",
            ),
            Download(
                "test_32x32.mat",
                ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                "eb5a983be6a315427106f1b164d9cef3",
            ),
        ),
        how_to_get="train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
    ),
}


def cache_dir(key: str) -> Path:
    """Default download folder of dataset ``key``: ``$XDG_CACHE_HOME/landscape/<key>`` (``~/.cache`` default)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "landscape" / key


def search_dirs(key: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder :func:`train.data.load_dataset` looks in for dataset ``key``, in search order.
    An explicit ``data_dir`` is the only place looked (its dataset subfolders, then itself)."""
    source = SOURCES.get(key)
    subs = source.subfolders if source else (key,)
    dirs: list[Path] = []

    def add_base(base: Path) -> None:
        dirs.extend(base / s for s in subs)
        dirs.append(base)

    if data_dir is not None and str(data_dir) != "":
        add_base(Path(data_dir).expanduser())
        return dirs
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


def find(key: str, data_dir: str | Path | None) -> tuple[dict[str, Path] | None, list[Path]]:
    """The files of dataset ``key`` (role -> path) in the first folder of :func:`search_dirs`
    that holds them all, and the folders looked in."""
    looked = search_dirs(key, data_dir)
    for folder in looked:
        if folder.is_dir():
            found = SOURCES[key].locate(folder)
            if found is not None:
                return found, looked
    return None, looked


def missing_message(key: str, looked: Sequence[Path], data_dir: str | Path | None) -> str:
    source = SOURCES[key]
    env = os.environ.get(ENV_VAR)
    env_note = "" if env or data_dir else f" (${ENV_VAR} is not set)"
    return (
        f"dataset {key!r} not found: looked for {source.needs} in {', '.join(str(p) for p in looked)}"
        f"{env_note}; to get it, rerun with --download (download=True) to fetch it from the official source "
        f"into {Path(data_dir) if data_dir else cache_dir(key)}, or fetch {source.how_to_get} yourself and pass "
        f"its folder with --data-dir DIR or ${ENV_VAR}=DIR"
    )


def download(key: str, data_dir: str | Path | None) -> Path:
    """Fetch the missing files of dataset ``key`` into ``data_dir`` (default: the cache),
    checking their MD5; one DatasetError when the network fails."""
    target = Path(data_dir).expanduser() if data_dir else cache_dir(key)
    for item in SOURCES[key].downloads:
        path = target / item.filename
        if path.is_file() and file_digest(path) == item.md5:
            continue
        try:
            download_file(item.urls, path, item.md5, "md5")
        except DatasetError as exc:
            raise DatasetError(
                f"--download of dataset {key!r} failed: {exc}; check the network (this machine may be offline), "
                f"or fetch {SOURCES[key].how_to_get} by hand into {target} "
                f"(or into any folder you pass with --data-dir DIR or ${ENV_VAR}=DIR)"
            ) from exc
    return target


# --------------------------------------------------------------------------- reading and caching


def file_key(found: dict[str, Path]) -> tuple:
    """Cache key: every path with its size and modification time, so edited files are re-read."""
    items = []
    for role, path in sorted(found.items()):
        targets = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        items.append(
            (
                role,
                str(path),
                tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in targets),
            )
        )
    return tuple(items)


@functools.lru_cache(maxsize=4)
def read_cached(key: str, file_key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    found = {role: Path(path) for role, path, _ in file_key}
    arrays = SOURCES[key].read(found)
    for a in arrays:
        a.setflags(write=False)
    return arrays

"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary, SVHN ``.mat``.

Every reader returns plain numpy arrays (``uint8`` images in ``[N, C, H, W]`` layout and
``int64`` labels) and turns every malformed input into one :class:`DatasetError` whose message
names the file and what is wrong with it. Nothing here knows where datasets live; that is
:mod:`train.data`'s job.

Formats
-------
IDX (http://yann.lecun.com/exdb/mnist/, "the IDX file format"): a 4-byte magic number
``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian ``uint32`` dimension sizes, then
``prod(dims) * itemsize`` bytes of big-endian data. Files may be gzip-compressed (detected
from the gzip magic bytes ``1f 8b``, whatever the file name says).

CIFAR-10 binary (https://www.cs.toronto.edu/~kriz/cifar.html): each batch file is a sequence of
3073-byte records, ``1`` label byte followed by ``3 * 32 * 32`` pixel bytes (red plane, green
plane, blue plane, each row-major). The archive ``cifar-10-binary.tar.gz`` holds
``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``cifar-10-batches-bin/test_batch.bin``.

SVHN cropped digits (http://ufldl.stanford.edu/housenumbers/): MATLAB v5 files with ``X`` of
shape ``[32, 32, 3, N]`` (``uint8``) and ``y`` of shape ``[N, 1]`` with labels ``1..10``, where
``10`` stands for the digit 0.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "read_idx",
    "read_idx_pair",
    "read_cifar_batches",
    "read_cifar_tar",
    "read_svhn_mat",
    "CIFAR_RECORD_BYTES",
]

CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
"""Bytes per CIFAR-10 binary record: one label byte plus a 3x32x32 image."""

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> numpy big-endian dtype.
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DatasetError(ValueError):
    """A dataset is missing, cannot be downloaded, or one of its files is malformed."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and the bound engine need to know about a dataset.

    ``input_shape`` is ``(C, H, W)``; ``mean``/``std`` have ``C`` entries each, in pixel units
    (the data are in ``domain``); ``domain`` is the box every input lies in, so an eps-ball can
    be clipped to ``[max(x - eps, lo), min(x + eps, hi)]``. ``classes``: the class names, when
    known (a dataset function may give them).
    """

    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    domain: tuple[float, float] = (0.0, 1.0)
    classes: tuple[str, ...] | None = None


MAX_IDX_BYTES = 1 << 31
"""The largest IDX data a file may declare (2 GiB; MNIST's images are 47 MB): a header that
declares more is refused before anything is inflated."""


def _open_idx(path: Path):
    """``(stream, size)``: a binary stream of the IDX bytes of ``path`` (inflated on the fly if
    gzip) and their total size as the file says it (a gzip file's trailer gives it modulo 2^32)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0, os.SEEK_END)
            length = fh.tell()
            if head == _GZIP_MAGIC and length >= 18:
                fh.seek(-4, os.SEEK_END)
                size = int.from_bytes(fh.read(4), "little")
            else:
                size = length
    except OSError as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc.strerror or exc}") from exc
    stream = gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")
    return stream, size, head == _GZIP_MAGIC


def _read_exactly(stream, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"dataset file {path} is a damaged or truncated gzip file ({exc}); delete it and get it again"
        ) from exc


def read_idx(
    path: str | Path, expect: Callable[[tuple[int, ...], np.dtype], None] | None = None
) -> np.ndarray:
    """Parse one IDX file (raw or gzip) into a numpy array of its declared shape and type.

    Checks, before the data is read (or inflated): the first two magic bytes are zero, the type
    byte is a known IDX type, the dimension header is complete, the declared data size is at
    most :data:`MAX_IDX_BYTES` and agrees with the file's own size (a gzip file's trailer), so a
    gzip bomb is refused without inflating it. Then the data size must equal
    ``prod(dims) * itemsize`` exactly (a shorter file is reported as truncated, a longer one as
    having trailing bytes). ``expect(dims, dtype)`` may refuse the declared shape and type
    (raise DatasetError) before any data is read.
    """
    path = Path(path)
    stream, size, zipped = _open_idx(path)
    with stream:
        head = _read_exactly(stream, 4, path)
        if len(head) < 4:
            raise DatasetError(
                f"IDX file {path} is truncated: only {len(head)} bytes, not even a header"
            )
        if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
            raise DatasetError(
                f"{path} is not an IDX file: wrong magic number 0x{head[:4].hex()} "
                "(expected 0x0000 followed by a type byte 08/09/0b/0c/0d/0e and the number of dimensions)"
            )
        dtype = np.dtype(_IDX_TYPES[head[2]])
        ndim = head[3]
        if ndim == 0:
            raise DatasetError(f"IDX file {path} declares zero dimensions")
        header = 4 + 4 * ndim
        dim_bytes = _read_exactly(stream, 4 * ndim, path)
        if len(dim_bytes) < 4 * ndim:
            raise DatasetError(
                f"IDX file {path} is truncated inside its header ({4 + len(dim_bytes)} of {header} bytes)"
            )
        dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">u4", count=ndim))
        expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
        if expected > MAX_IDX_BYTES:
            raise DatasetError(
                f"IDX file {path} declares dims {dims} ({expected} bytes), more than the "
                f"{MAX_IDX_BYTES} an IDX dataset may hold; refusing to read it"
            )
        if expect is not None:
            expect(dims, dtype)
        if zipped and (header + expected) % (1 << 32) != size:
            raise DatasetError(
                f"IDX file {path} declares dims {dims} ({expected} data bytes) but its gzip "
                f"trailer says it inflates to {size} bytes: the file is damaged or not what it claims"
            )
        data = _read_exactly(stream, expected + 1, path)
    found = len(data)
    if found < expected:
        raise DatasetError(
            f"IDX file {path} is truncated: dims {dims} need {expected} data bytes, found {found}"
        )
    if found > expected:
        raise DatasetError(f"IDX file {path} has unexpected trailing bytes after dims {dims}")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx_pair(
    images_path: str | Path,
    labels_path: str | Path,
    n_classes: int = 10,
    image_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file ``[N, H, W]`` (uint8) and its label file ``[N]``.

    Returns ``(images [N, 1, H, W] uint8, labels [N] int64)``; checks the shapes agree (and
    ``(H, W) == image_hw`` when given) from the headers, before the images are inflated, and
    that the labels lie in ``0 .. n_classes - 1``.
    """

    def label_shape(dims: tuple[int, ...], dtype: np.dtype) -> None:
        if len(dims) != 1:
            raise DatasetError(
                f"IDX label file {labels_path} should hold a vector [N], got shape {dims}"
            )

    labels = read_idx(
        labels_path, expect=label_shape
    )  # the small file first: its N bounds the images'

    def image_shape(
        dims: tuple[int, ...], dtype: np.dtype
    ) -> None:  # checked before the data is inflated
        if len(dims) != 3 or dtype != np.uint8:
            raise DatasetError(
                f"IDX image file {images_path} should hold uint8 images [N, H, W], its header "
                f"declares {dtype} {dims}"
            )
        if image_hw is not None and tuple(dims[1:]) != tuple(image_hw):
            raise DatasetError(
                f"IDX image file {images_path} declares images of shape (1, {dims[1]}, {dims[2]}), "
                f"expected (1, {image_hw[0]}, {image_hw[1]})"
            )
        if dims[0] != labels.shape[0]:
            raise DatasetError(
                f"{images_path} has {dims[0]} images but {labels_path} has {labels.shape[0]} labels"
            )

    images = read_idx(images_path, expect=image_shape)
    labels = labels.astype(np.int64)
    _check_labels(labels, n_classes, labels_path)
    return images[:, None, :, :], labels


def _check_labels(labels: np.ndarray, n_classes: int, where: object) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(
            f"labels in {where} should lie in 0..{n_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )


def _parse_cifar_records(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % CIFAR_RECORD_BYTES:
        raise DatasetError(
            f"CIFAR-10 binary file {where} has {len(data)} bytes, not a positive multiple of the "
            f"{CIFAR_RECORD_BYTES}-byte record size (1 label byte + 3072 pixel bytes): wrong record size or truncated"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 10, where)
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def read_cifar_batches(paths: Iterable[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR-10 binary batch files.

    Returns ``(images [N, 3, 32, 32] uint8, labels [N] int64)``.
    """
    xs, ys = [], []
    for p in paths:
        p = Path(p)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read CIFAR-10 file {p}: {exc.strerror or exc}") from exc
        x, y = _parse_cifar_records(data, str(p))
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DatasetError("no CIFAR-10 batch files given")
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar_tar(archive: str | Path, members: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 batches straight out of ``cifar-10-binary.tar.gz`` without extracting it.

    ``members`` are base names such as ``data_batch_1.bin``; they are looked up under
    ``cifar-10-batches-bin/`` (or at the top level) of the archive.
    """
    archive = Path(archive)
    xs, ys = [], []
    try:
        with tarfile.open(archive, "r:*") as tar:
            by_name = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in members:
                member = by_name.get(name)
                if member is None:
                    raise DatasetError(f"CIFAR-10 archive {archive} has no member {name}")
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have a handle
                x, y = _parse_cifar_records(handle.read(), f"{archive}:{member.name}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"CIFAR-10 archive {archive} is damaged or truncated ({exc}); delete it and get it again"
        ) from exc
    return np.concatenate(xs), np.concatenate(ys)


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN ``*_32x32.mat`` file.

    Returns ``(images [N, 3, 32, 32] uint8, labels [N] int64)`` with label 10 mapped to 0.
    """
    from scipy.io import loadmat  # scipy is heavy; import only when SVHN is used

    path = Path(path)
    try:
        mat = loadmat(str(path))
    except (ValueError, OSError, TypeError, EOFError, NotImplementedError) as exc:
        raise DatasetError(
            f"cannot read SVHN file {path} as a MATLAB v5 .mat file ({exc})"
        ) from exc
    except Exception as exc:  # scipy raises assorted private error types on corrupt files
        raise DatasetError(f"cannot read SVHN file {path}: {type(exc).__name__}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(
            f"SVHN file {path} should hold variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(f"SVHN file {path}: X should have shape [H, W, 3, N], got {x.shape}")
    if x.shape[3] != y.shape[0]:
        raise DatasetError(f"SVHN file {path} has {x.shape[3]} images but {y.shape[0]} labels")
    if x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"SVHN file {path}: pixel values outside 0..255")
        x = x.astype(np.uint8)
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(
            f"SVHN file {path}: labels should lie in 1..10, found {labels.min()}..{labels.max()}"
        )
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels

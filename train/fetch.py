"""Download one file over HTTP(S) with a timeout, a progress bar and a checksum check.

Used by :func:`train.data.load_dataset` when ``download=True``. Files are written to a
temporary name next to the target and moved into place (``os.replace``) only after the
checksum matched, so an interrupted or corrupted download never leaves a file that looks
complete. Any network failure becomes one :class:`~train.dataformats.DatasetError`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from train.dataformats import DatasetError

__all__ = ["DOWNLOAD_TIMEOUT_S", "file_digest", "download_file"]

DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds to wait for a connection or for the next block of data before giving up."""

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes (``algorithm`` is any :mod:`hashlib` name, e.g. md5, sha256)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    urls: Sequence[str],
    target: str | Path,
    checksum: str,
    algorithm: str = "md5",
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Fetch ``target`` from the first of ``urls`` that works and verify its checksum.

    ``checksum`` is the expected hex digest under ``algorithm``. Mirrors are tried in order;
    a mirror that serves a file with the wrong checksum counts as failed. Raises
    :class:`DatasetError` naming every URL tried and the last reason when none succeeds.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the download folder {target.parent}: {exc.strerror or exc}"
        ) from exc
    tmp = target.with_name(target.name + ".part")
    reasons: list[str] = []
    for url in urls:
        try:
            _fetch(url, tmp, timeout)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reasons.append(f"{url}: {reason}")
            tmp.unlink(missing_ok=True)
            continue
        digest = file_digest(tmp, algorithm)
        if digest.lower() != checksum.lower():
            reasons.append(
                f"{url}: {algorithm} checksum {digest} does not match the official {checksum}"
            )
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, target)
        return target
    raise DatasetError(f"could not download {target.name} ({'; '.join(reasons)})")


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest`` with a progress bar (hidden when stderr is not a terminal)."""
    request = urllib.request.Request(url, headers={"User-Agent": "cert-landscape dataset fetcher"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get("Content-Length")
        with (
            open(dest, "wb") as out,
            tqdm(
                total=int(total) if total and total.isdigit() else None,
                unit="B",
                unit_scale=True,
                desc=dest.name.removesuffix(".part"),
                disable=None,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                bar.update(len(block))

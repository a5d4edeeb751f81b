"""One writer per file: an advisory lock beside the file, and the file's identity checked at
every write.

:class:`WriterLock` holds an exclusive ``fcntl.flock`` on the sidecar ``.NAME.lock`` in the
file's folder (the file itself cannot carry the lock: every atomic write replaces its inode).
A second writer of the same file is refused at once (:class:`FileBusyError`), and the lock
goes with its process, so a killed writer never leaves the file locked. The lock file is
removed when the lock is released; a process that locked a lock file which was removed under
it locks the new one instead.

:class:`Stamp` is the identity of the file a writer last wrote or read (device, inode, size
and modification time). Before rewriting, a writer compares the file on disk with its stamp
(:func:`check_stamp`): a file that was replaced, changed or deleted by someone else is never
overwritten with a mix of its content and the writer's (:class:`FileChangedError`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

try:  # POSIX; elsewhere writers are not locked (the stamps still guard every write)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from common.store.files import StoreError

__all__ = [
    "WriterLock",
    "FileBusyError",
    "FileChangedError",
    "Stamp",
    "stamp_of",
    "check_stamp",
    "lock_path",
]


class FileBusyError(StoreError):
    """Another process is writing the file."""


class FileChangedError(StoreError):
    """The file changed on disk (replaced, rewritten or deleted) since this writer last wrote it."""


@dataclass(frozen=True)
class Stamp:
    """Identity of one version of a file: ``(st_dev, st_ino, st_size, st_mtime_ns)``."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


def stamp_of(st: os.stat_result) -> Stamp:
    return Stamp(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_stamp(path: str, expected: Stamp | None, st: os.stat_result | None) -> None:
    """Raise :class:`FileChangedError` unless ``st`` (the file's stat now; None: it is gone) is
    the version ``expected``."""
    if expected is None:
        return
    if st is None:
        raise FileChangedError(
            f"{path} was deleted while this process was writing it; nothing was written. "
            "Run the command again to start it anew"
        )
    if stamp_of(st) != expected:
        raise FileChangedError(
            f"{path} was replaced or changed by another process while this one was writing it; it was left as "
            "the other process made it. Choose another --out, or delete it and run the command again"
        )


def lock_path(path: str | os.PathLike) -> str:
    """The sidecar lock file of ``path`` (of the file a link points to): ``.NAME.lock`` beside it."""
    path = os.path.realpath(os.fspath(path))  # one lock for a file and every link to it
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


class WriterLock:
    """An exclusive, non-blocking advisory lock on ``path`` for this process (a context manager).

    :meth:`acquire` raises :class:`FileBusyError` naming the file when another process holds
    it. In a folder where no lock file can be made (read-only), nothing can be written either,
    so the lock is then not taken (``held`` stays False) and the writes fail on their own.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.lock_file = lock_path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        if self._fd is not None or fcntl is None:
            return self
        for _ in range(100):  # another process may remove the lock file between our open and flock
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.EPERM):
                    return self  # no lock file here: nothing can be written here either
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FileBusyError(
                        f"{self.path} is being written by another process (it holds {self.lock_file}); wait for it to "
                        "finish or choose another --out"
                    ) from None
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_file))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)  # the lock file we locked was removed by its last holder: lock the new one
        raise FileBusyError(f"{self.path}: could not lock {self.lock_file}")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.lock_file)):
                    os.unlink(
                        self.lock_file
                    )  # while still holding it, so no one holds a removed file
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped without release: the process still lets go
        try:
            self.release()
        except Exception:
            pass

"""The lock files of ``landscape reproduce``: one per run (``runs/<setting>/seed<k>/<method>/.lock``)
and one for the figures and summary (``<out>/.summary.lock``), so that two processes writing into
one ``--out`` (two plans, ``--jobs`` workers, cluster jobs, a rerun while jobs still run) never
work on the same run at once. An advisory ``flock`` is released by the kernel when its holder
dies, so a killed plan leaves no stale lock; a waiter logs who holds the lock (the holder writes
``pid host`` into the file).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from landscape.reproduce.steps import log

__all__ = ["RunLock", "summary_lock"]


class RunLock:
    """An advisory lock on one file (``fcntl.flock``): held by at most one open file of any
    process, released when that file is closed or its process dies. The holder writes
    ``pid host`` into the file so that a waiter can say who it waits for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds (or last held) the lock, as its holder wrote it."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "another process"
        pid, _, host = text.partition(" ")
        return f"process {pid} on {host}" if pid else "another process"

    def acquire(self, wait: bool = True, what: str = "", poll: float = 1.0) -> bool:
        """Take the lock; when another process holds it, log who and wait for it (``wait``), else
        return False."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                if not told:
                    log(
                        f"{what or self.path} is being worked on by {self.holder()} ({self.path}); waiting for it"
                    )
                    told = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        if told:
            log(f"{what or self.path}: the other process is done with it")
        return True

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with a waiter)."""
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def summary_lock(out: Path) -> RunLock:
    """The lock taken (and waited for) while the figures and the summary of ``out`` are written."""
    lock = RunLock(Path(out) / ".summary.lock")
    lock.acquire(what="the summary")
    return lock

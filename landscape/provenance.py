"""What made a result file: the root attributes every file the toolkit writes carries."""

from __future__ import annotations

import hashlib
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from common.names import VERSION


def command_line(argv: Sequence[str] | None = None) -> str:
    """The ``landscape`` command that is running (from ``sys.argv``), shell-quoted."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["landscape", *(shlex.quote(a) for a in args)])


def provenance(command: str | None = None) -> dict[str, str]:
    """``{"command", "toolkit_version", "created"}``: the command (default: this process's
    ``landscape`` command line), the toolkit's version and the UTC time, to second precision."""
    return {
        "command": command_line() if command is None else command,
        "toolkit_version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (a checkpoint's identity in the files made from it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""The command line's first check: the toolkit's packages are the installed ones.

The packages have generic names (``common``, ``bounds``, ``train``, ``landscape``,
``figures``), and ``python -m landscape.cli`` or ``torchrun -m landscape.cli`` puts the working
directory first on ``sys.path``: a user's own ``train.py`` there would be imported in place of
the toolkit's ``train`` and fail far from the cause. :func:`refuse_shadowed` finds each package
without importing it and stops with one line naming the file that stands in the way.

This check cannot live in the ground floor :mod:`common`, since ``common`` is one of the names
it guards; it imports only the standard library and runs before any other toolkit import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES: tuple[str, ...] = ("common", "bounds", "train", "landscape", "figures")
"""The toolkit's top-level packages, all installed side by side in one folder."""


def _origin(name: str) -> Path | None:
    """Where ``name`` is (or would be) loaded from, without importing it; None if nowhere."""
    module = sys.modules.get(name)
    if module is not None:
        where = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        where = spec.origin if spec is not None else None
    return Path(where).resolve() if where else None


def shadowed(root: Path | None = None) -> list[str]:
    """One line per toolkit package that does not resolve to ``root/<name>/__init__.py``
    (``root`` defaults to the folder that holds this package)."""
    root = (root or Path(__file__).resolve().parents[1]).resolve()
    found = []
    for name in PACKAGES:
        expected = root / name / "__init__.py"
        origin = _origin(name)
        if origin != expected:
            where = origin if origin is not None else "nowhere"
            found.append(f"{name!r} resolves to {where}, not to the toolkit's {expected.parent}")
    return found


def refuse_shadowed() -> None:
    """Exit with status 2 and one line on stderr when a toolkit package is shadowed."""
    found = shadowed()
    if found:
        print(
            f"Error: {found[0]}; rename or move that module (or run from another directory)",
            file=sys.stderr,
        )
        raise SystemExit(2)

"""The drawing half of each scan kind, found by the kind's name.

:data:`common.names.SCAN_KINDS` names, for each kind, the ``module:function`` that draws its
records (``figure``); a kind that names none is drawn as the others with its number of axes
(1D: :func:`figures.curves.plot_line_scans`). The table holds names, not functions, so that
it stays free of matplotlib, and :mod:`figures` of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from common.names import SCAN_KINDS

__all__ = ["kind_figure"]

Figure = Callable[..., list[Path]]
"""``(records, out_dir, stem, formats, log=...) -> written paths``."""


def kind_figure(kind: str) -> Figure:
    """The function that draws a list of 1D records of scan kind ``kind`` (``[n]`` values
    along one axis per label)."""
    from figures import curves

    entry = SCAN_KINDS[kind].figure if kind in SCAN_KINDS else ""
    if not entry:
        return curves.plot_line_scans
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)

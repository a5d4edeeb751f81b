"""Types every layer shares that need no torch (``figures`` may import them).

:data:`Sink` is how results leave a layer that must not know the store: ``train`` records its
steps and ``landscape`` its probes through a sink, and the command line hands them one that
appends to the run's HDF5 file (``partial(common.store.append_rows, path)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Sink = Callable[[str, dict[str, np.ndarray]], None]
"""``sink(group, rows)``: receives columns (name -> array, rows along axis 0) of one group of a
result file (``"steps"``, ``"epochs"``, ``"grads"``, a probe's group)."""

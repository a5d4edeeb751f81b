"""Figures drawn from the toolkit's HDF5 results (numpy, h5py, matplotlib and seaborn only).

``figures.plot_file(paths, out_dir)`` (:func:`figures.dispatch.plot_file`) draws whatever the
files hold, chosen by their root attribute ``kind``; the modules below hold one kind of figure
each:

* :mod:`figures.curves` - 1D scans and gradient-direction scans;
* :mod:`figures.surfaces` - 2D scans (contour, heatmap, 3D surface);
* :mod:`figures.training` - probe statistics and loss / error curves over training;
* :mod:`figures.tables` - verified-error tables and the tightness-versus-smoothness scatter;
* :mod:`figures.style` - the shared seaborn look; :mod:`figures.data` - reading the files.

This package never imports torch; matplotlib loads on first use of ``plot_file``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plot_file"]


def __getattr__(name: str) -> Any:
    if name == "plot_file":
        from figures.dispatch import plot_file

        return plot_file
    raise AttributeError(f"module 'figures' has no attribute {name!r}")

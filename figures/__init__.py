"""Figures drawn from the toolkit's HDF5 results (numpy, h5py, matplotlib and seaborn only).

``figures.plot_file(paths, out_dir)`` (:func:`figures.dispatch.plot_file`) draws whatever the
files hold, chosen by their root attribute ``kind``; the modules below hold one kind of figure
each:

* :mod:`figures.curves` - 1D scans and gradient-direction scans;
* :mod:`figures.surfaces` - 2D scans (contour, heatmap, 3D surface; a PCA scan's trajectory),
  every panel on one colour scale;
* :mod:`figures.spectra` - Hessian scans (spectral densities, top eigenvalues);
* :mod:`figures.training` - probe statistics and loss / error curves over training;
* :mod:`figures.tables` - verified-error tables and the tightness-versus-smoothness scatter;
* :mod:`figures.style` - the shared seaborn look, line styles and legends outside the data;
  :mod:`figures.labels` - method, run and loss names; :mod:`figures.data` - reading the files
  into the records of :mod:`figures.records`.

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

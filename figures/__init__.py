"""Figures drawn from the toolkit's HDF5 results (numpy, h5py, matplotlib and seaborn only).

``figures.plot_file(paths, out_dir)`` draws whatever the files hold, chosen by their root
attribute ``kind``; the modules below hold one kind of figure each:

* :mod:`figures.curves` - 1D scans and gradient-direction scans;
* :mod:`figures.surfaces` - 2D scans (contour, heatmap, 3D surface);
* :mod:`figures.training` - probe statistics and loss / error curves over training;
* :mod:`figures.tables` - verified-error tables and the tightness-versus-smoothness scatter;
* :mod:`figures.style` - the shared seaborn look; :mod:`figures.data` - reading the files.

This package never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


def plot_file(
    paths: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    formats: Sequence[str] | str = ("png", "pdf"),
    surface3d: bool = False,
) -> list[Path]:
    """Draw every figure the result files in ``paths`` support into ``out_dir``; see
    :func:`figures.dispatch.plot_file`."""
    from figures.dispatch import plot_file as _plot_file

    return _plot_file(paths, out_dir, formats=formats, surface3d=surface3d)


__all__ = ["plot_file"]

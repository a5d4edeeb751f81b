"""The plot-ready records :mod:`figures.data` reads result files into, one kind per file kind.

* :class:`Meta` - what made the file (kind, method, eps, checkpoint, dataset, model) and the
  name of its run;
* :class:`LineScan` - a 1D scan (``gradient``, ``random-1d``, ``interpolate``);
* :class:`SurfaceScan` - a 2D scan (``random-2d``, ``pca``): one grid per panel, and for a PCA
  scan the trajectory and the explained variance of its axes;
* :class:`SpectrumScan` - a Hessian scan: eigenvalues, trace and spectral density per loss;
* :class:`TrainRun` - a training run: per-step scalars, per-epoch metrics and the probes;
* :class:`CertifyResult` - rows of clean / PGD / verified error per method and eps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from figures.labels import legend_label, run_name


@dataclass
class Meta:
    """What made a result file; :meth:`label` is what legends show, :attr:`run` the run's name."""

    path: Path
    kind: str
    method: str | None = None
    eps: float | None = None
    checkpoint: str | None = None
    dataset: str | None = None
    model: str | None = None
    attrs: dict = field(default_factory=dict)
    name: str = ""  # unique short name among the files of one plot call (for output file names)

    def label(self, method: str | None = None, with_run: bool = False) -> str:
        """Legend text: the method (of this file, or ``method``), eps, and the run if asked."""
        return legend_label(method or self.method, self.eps, self.run if with_run else None)

    @property
    def run(self) -> str:
        """The name of the run the file comes from (:func:`figures.labels.run_name`)."""
        return run_name(self.checkpoint, self.path)


@dataclass
class LineScan:
    """A 1D scan: ``coord`` along one axis, per-method arrays in ``series[method][name]``
    (``loss`` always; a gradient scan also ``cosine``, ``rms``, ``smoothness``)."""

    meta: Meta
    coord: np.ndarray
    coord_label: str
    series: dict[str, dict[str, np.ndarray]]
    n_computed: int = 0


@dataclass
class SurfaceScan:
    """A 2D scan: ``loss[key]`` has shape ``[len(x), len(y)]``, one panel per key (the scanned
    loss's label, or label and run when files are merged). Per key, optionally: ``methods`` (the
    loss label, when the key is more), ``runs`` (the run named in the panel), ``paths`` (a PCA
    trajectory [n, 2] in the (x, y) plane) and ``variance`` (the explained variance ratio of
    the two PCA directions)."""

    meta: Meta
    x: np.ndarray
    y: np.ndarray
    loss: dict[str, np.ndarray]
    n_computed: int = 0
    methods: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    paths: dict[str, np.ndarray] = field(default_factory=dict)
    path_steps: dict[str, np.ndarray] = field(default_factory=dict)
    """Per key of a PCA scan: the training step of each checkpoint of the path (NaN if unknown)."""
    variance: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    """The error grids stored beside the loss (``clean_err``, ``pgd_err``, ``verified_err``: the
    model's at each point, the same under every label), when the scan has them."""

    def method(self, key: str) -> str | None:
        """The loss label of panel ``key``."""
        m = self.methods.get(key, key)
        return self.meta.method if m == "loss" else m


@dataclass
class SpectrumScan:
    """A Hessian scan: for each computed loss label, ``eigenvalues`` [k] (largest first),
    ``density_grid`` and ``density`` [G], and the scalars ``trace``, ``trace_stderr``, ``loss``."""

    meta: Meta
    spectra: dict[str, dict]
    n_computed: int = 0


@dataclass
class TrainRun:
    """A training run: ``steps``/``epochs`` columns and ``probes`` columns (each probe a row;
    2-D arrays ``[n_probes, n_t]`` for the gradient scans along ``probe_t``)."""

    meta: Meta
    steps: dict[str, np.ndarray]
    epochs: dict[str, np.ndarray]
    probes: dict[str, np.ndarray]
    probe_t: np.ndarray | None


@dataclass
class CertifyResult:
    """Rows of a verified-error table: dicts with ``method, eps, clean_err, pgd_err,
    verified_err`` and optionally one ``verified_<bound>`` per bound method."""

    meta: Meta
    rows: list[dict]


Record = LineScan | SurfaceScan | SpectrumScan | TrainRun | CertifyResult

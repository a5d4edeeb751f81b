"""The ground floor every package of the toolkit may import: it imports none of them.

- :mod:`common.names`: every name the toolkit knows, and its version (standard library only);
- :mod:`common.store`: the HDF5 store of runs, scans and certifications (h5py, numpy and the
  standard library; never torch), which is all :mod:`figures` reads;
- :mod:`common.types`: :data:`~common.types.Sink`, how result rows leave a layer (no torch);
- :mod:`common.tensors`: flat parameter vectors and the ``LossFn`` type, the one module here that
  needs torch (``figures`` never imports it).

This file imports nothing, so ``import common.names`` stays as light as the standard library.
"""

"""Loss-landscape analysis of certified training.

This package's ``__init__`` is deliberately free of imports, so that importing one of its
torch-free modules never loads torch. The HDF5 store it writes lives in :mod:`common.store`.
"""

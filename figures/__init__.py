"""Figures drawn from the toolkit's HDF5 results (numpy, h5py, matplotlib and seaborn only)."""

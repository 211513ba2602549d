"""Kernels: pure functions on NumPy arrays and pandas/arrow tables.

A kernel takes arrays and plain parameters and returns arrays or tables. It
never touches Dask, files or global state, so it can be tested against an
independent reference on a whole (small) array and then mapped over blocks by a
driver. Each kernel's docstring states its array shapes and units.

Submodules are imported explicitly (``from vollseg_dask.kernels.histogram import
block_histogram``); importing this package loads none of them.
"""

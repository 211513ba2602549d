"""Value checks every reader shares, so that the same wrong input gets the same message everywhere.

- Frames (time indices) must be integers >= 0: a spot at t = -1 would give an invalid CTC line,
  a napari point that is dropped and ``FRAME="-1"`` in TrackMate XML.
- Labels must be >= 0 (0 is background): measurement, evaluation and the ground-truth predictor
  refuse negative ones alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vollseg_dask.errors import InvalidDataError

__all__ = ["check_frames", "check_labels_nonnegative", "numeric_column"]


def numeric_column(values: Any, what: str) -> np.ndarray:
    """``values`` as a float or integer array; a value that is not a number is an error naming it.

    Parameters
    ----------
    values : array-like or pandas.Series
        A column read from a file (CSV cells may be text).
    what : str
        Words naming the column, e.g. ``"spot table column 'x'"``.

    Raises
    ------
    InvalidDataError
        A value is not a number (``"abc"``), naming the first one and its row.
    """
    import pandas as pd

    s = pd.Series(values)
    if s.dtype.kind in "iufb":
        return s.to_numpy()
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InvalidDataError(f"{what} holds a value that is not a number: {s.iloc[row]!r} (row {row})")
    return num.to_numpy()


def check_frames(t: Any, what: str) -> np.ndarray:
    """Frame indices as int64; refuse NaN, non-integer, negative or non-numeric frames.

    Parameters
    ----------
    t : array-like
        Frame (time point) indices.
    what : str
        Words naming where they come from, e.g. ``"spot table column 't'"``.

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    InvalidDataError
        ``"<what>: frames must be integers >= 0; found <value> (row <i>)"``.
    """
    arr = numeric_column(t, what)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.size:
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < 0)
        else:
            bad = arr < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidDataError(f"{what}: frames must be integers >= 0; found {arr[row]!r} (row {row})")
    return arr.astype(np.int64)


def check_labels_nonnegative(labels: np.ndarray, what: str) -> None:
    """Refuse negative labels (0 is background, objects are >= 1).

    Raises
    ------
    InvalidDataError
        ``"<what>: labels must be >= 0 (0 = background); found <min>"``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "i" and labels.size:
        low = labels.min()
        if low < 0:
            raise InvalidDataError(f"{what}: labels must be >= 0 (0 = background); found {int(low)}")

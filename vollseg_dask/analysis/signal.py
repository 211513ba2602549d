"""Intensity time series of one cell: smoothing, normalisation and Fourier spectrum (pure NumPy).

Conventions (the paper's oscillation analysis, made explicit)
------------------------------------------------------------
1. The signal is the cell's **total intensity** per frame (``total_intensity_c0`` in a cell table,
   ``TOTAL_INTENSITY_CH1`` in a TrackMate file).
2. Frames missing inside a tracklet (gap closing) are filled by linear interpolation so that the
   series is sampled every ``frame_interval`` (:func:`resample_to_frames`).
3. Optionally a centred moving average of ``N`` frames is applied (:func:`moving_average`); at the
   ends the window is truncated and the mean taken over the samples present, so no zero padding
   pulls the ends down.
4. The series is normalised (:func:`normalize_signal`): ``"zscore"`` (default) subtracts the mean and
   divides by the standard deviation; ``"max"`` subtracts the mean and divides by the largest
   absolute deviation (values in [-1, 1]); ``"none"`` leaves the values unchanged.
5. The one-sided amplitude spectrum of the real FFT is returned (:func:`intensity_spectrum`):
   frequencies ``k / (n * frame_interval)`` for ``k = 0 .. n // 2`` (in 1 / time unit), amplitudes
   ``2 |X_k| / n`` (``|X_k| / n`` at 0 and at the Nyquist bin) so that a sinusoid of amplitude ``A``
   at a bin frequency has amplitude ``A``. The **dominant frequency** is the non-zero frequency of
   largest amplitude; its resolution is one bin, ``1 / (n * frame_interval)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vollseg_dask.errors import InvalidDataError, ShapeError

__all__ = [
    "NORMALIZATIONS",
    "Spectrum",
    "moving_average",
    "normalize_signal",
    "resample_to_frames",
    "amplitude_spectrum",
    "intensity_spectrum",
]

#: Accepted values of the ``normalize`` argument.
NORMALIZATIONS: tuple[str, ...] = ("zscore", "max", "none")


def _series(values: ArrayLike, where: str) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ShapeError(f"{where} must be 1-D (one value per frame), got shape {x.shape}")
    return x


def moving_average(values: ArrayLike, window: int | None) -> NDArray[np.float64]:
    """Centred moving average with truncated windows at the ends.

    Parameters
    ----------
    values : array_like, shape (n,)
        Signal sampled every frame (no NaN).
    window : int or None
        Window length in frames (>= 1). ``None`` or 1 returns a copy. An even window ``N`` averages
        ``N // 2`` samples before and ``N - 1 - N // 2`` after each sample.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        Mean over the samples of the window that exist.
    """
    x = _series(values, "values")
    if window is None:
        return x.copy()
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise InvalidDataError(f"moving-average window must be an integer >= 1 frame, got {window!r}")
    if window == 1 or len(x) == 0:
        return x.copy()
    if not np.isfinite(x).all():
        raise InvalidDataError("moving_average needs finite values (resample gaps first)")
    before = int(window) // 2
    after = int(window) - 1 - before
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo = np.clip(i - before, 0, len(x))
    hi = np.clip(i + after + 1, 0, len(x))
    return (csum[hi] - csum[lo]) / (hi - lo)


def normalize_signal(values: ArrayLike, method: str = "zscore") -> NDArray[np.float64]:
    """Normalise a signal (see the module docstring for the conventions).

    Parameters
    ----------
    values : array_like, shape (n,)
    method : {"zscore", "max", "none"}
        ``"zscore"``: ``(x - mean) / std`` (population std); ``"max"``: ``(x - mean) / max|x - mean|``;
        ``"none"``: unchanged. A constant signal becomes all zeros (``zscore``/``max``).

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    x = _series(values, "values")
    if method not in NORMALIZATIONS:
        raise InvalidDataError(f"normalize must be one of {list(NORMALIZATIONS)}, got {method!r}")
    if method == "none" or len(x) == 0:
        return x.copy()
    centred = x - x.mean()
    scale = centred.std() if method == "zscore" else np.abs(centred).max()
    if not np.isfinite(scale) or scale == 0:
        return np.zeros_like(centred)
    return centred / scale


def resample_to_frames(t: ArrayLike, values: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Put a series sampled at integer frames onto every frame from its first to its last.

    Parameters
    ----------
    t : array_like of int, shape (n,)
        Frame indices, strictly increasing after sorting (no frame twice).
    values : array_like, shape (n,)
        Value at each frame; NaN values are dropped before interpolation.

    Returns
    -------
    frames : numpy.ndarray of int64, shape (m,)
        ``t.min() .. t.max()`` (empty when no finite value).
    resampled : numpy.ndarray of float64, shape (m,)
        Values at the frames, linearly interpolated where a frame is missing.
    """
    tt = np.asarray(t)
    v = _series(values, "values")
    if tt.shape != v.shape:
        raise ShapeError(f"t and values must have the same shape, got {tt.shape} and {v.shape}")
    ok = np.isfinite(v)
    tt, v = tt[ok].astype(np.int64), v[ok]
    if len(tt) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    order = np.argsort(tt, kind="stable")
    tt, v = tt[order], v[order]
    if np.any(np.diff(tt) == 0):
        dup = int(tt[1:][np.diff(tt) == 0][0])
        raise InvalidDataError(f"frame {dup} appears twice in one series")
    frames = np.arange(tt[0], tt[-1] + 1, dtype=np.int64)
    return frames, np.interp(frames, tt, v)


def amplitude_spectrum(
    values: ArrayLike, frame_interval: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One-sided amplitude spectrum of a uniformly sampled real signal.

    Parameters
    ----------
    values : array_like, shape (n,)
        Signal, one value per frame (finite).
    frame_interval : float
        Time between samples (> 0), in the data's time unit.

    Returns
    -------
    frequency : numpy.ndarray of float64, shape (n // 2 + 1,)
        ``k / (n * frame_interval)``, in 1 / time unit.
    amplitude : numpy.ndarray of float64, shape (n // 2 + 1,)
        ``2 |rfft(x)_k| / n``, halved at frequency 0 and (n even) at the Nyquist frequency.
    """
    x = _series(values, "values")
    dt = float(frame_interval)
    if not np.isfinite(dt) or dt <= 0:
        raise InvalidDataError(f"frame_interval must be finite and > 0, got {frame_interval!r}")
    if not np.isfinite(x).all():
        raise InvalidDataError("the spectrum needs finite values (resample gaps first)")
    n = len(x)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    amp = np.abs(np.fft.rfft(x)) * (2.0 / n)
    amp[0] /= 2.0
    if n % 2 == 0:
        amp[-1] /= 2.0
    return np.fft.rfftfreq(n, d=dt), amp


@dataclass(frozen=True)
class Spectrum:
    """Processed intensity series of one cell and its spectrum.

    Attributes
    ----------
    frames : numpy.ndarray of int64, shape (n,)
        Frame indices of the processed series (every frame from first to last).
    resampled : numpy.ndarray of float64, shape (n,)
        Intensity at every frame, linearly interpolated at missing frames (before smoothing).
    signal : numpy.ndarray of float64, shape (n,)
        Interpolated, smoothed and normalised intensity.
    frequency : numpy.ndarray of float64, shape (n // 2 + 1,)
        1 / time unit.
    amplitude : numpy.ndarray of float64, shape (n // 2 + 1,)
        One-sided amplitude (units of ``signal``).
    dominant_frequency : float
        Non-zero frequency of largest amplitude (NaN with fewer than 3 samples or a flat signal).
    resolution : float
        Frequency bin width ``1 / (n * frame_interval)`` (NaN when empty).
    """

    frames: NDArray[np.int64]
    resampled: NDArray[np.float64]
    signal: NDArray[np.float64]
    frequency: NDArray[np.float64]
    amplitude: NDArray[np.float64]
    dominant_frequency: float
    resolution: float

    @property
    def dominant_period(self) -> float:
        """``1 / dominant_frequency`` in the time unit (NaN when undefined)."""
        f = self.dominant_frequency
        return float(1.0 / f) if np.isfinite(f) and f > 0 else float("nan")


def intensity_spectrum(
    t: ArrayLike,
    intensity: ArrayLike,
    frame_interval: float,
    *,
    moving_average_window: int | None = None,
    normalize: str = "zscore",
) -> Spectrum:
    """Dominant frequency and spectrum of one cell's intensity over time.

    Parameters
    ----------
    t : array_like of int, shape (n,)
        Frame of each sample.
    intensity : array_like, shape (n,)
        Intensity (normally total intensity) at each frame; NaN samples are ignored.
    frame_interval : float
        Time between frames (> 0); frequencies are in 1 / that time unit.
    moving_average_window : int, optional
        Frames of the centred moving average applied before normalisation.
    normalize : {"zscore", "max", "none"}
        See :func:`normalize_signal`.

    Returns
    -------
    Spectrum
    """
    frames, values = resample_to_frames(t, intensity)
    smoothed = moving_average(values, moving_average_window)
    signal = normalize_signal(smoothed, normalize)
    freq, amp = amplitude_spectrum(signal, frame_interval)
    n = len(signal)
    resolution = 1.0 / (n * float(frame_interval)) if n else float("nan")
    dominant = float("nan")
    if n >= 3 and len(amp) > 1:
        k = int(np.argmax(amp[1:])) + 1
        if amp[k] > 1e-12 * max(1.0, float(np.abs(signal).max())):
            dominant = float(freq[k])
    return Spectrum(
        frames=frames,
        resampled=values,
        signal=signal,
        frequency=freq,
        amplitude=amp,
        dominant_frequency=dominant,
        resolution=resolution,
    )

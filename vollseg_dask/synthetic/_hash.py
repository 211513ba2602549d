"""Counter-based random numbers: a pure function of (seed, stream, integer keys).

The synthetic generator must give the same value for the same object whatever
part of the volume is being rendered, so per-object randomness cannot come from
a sequential generator. SplitMix64 finalisers mix the seed, a stream constant
(one per purpose) and any number of integer keys (lattice indices, generation,
time ...) into 64 well-mixed bits, vectorised over NumPy arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hash_u64", "uniform", "normal", "unit_vectors"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11 = np.uint64(11)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective on uint64, wraps on overflow by design)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def hash_u64(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Hash ``(seed, stream, *keys)`` to uint64, broadcasting the keys.

    Parameters
    ----------
    seed, stream : int
        Non-negative integers; ``stream`` separates independent uses.
    *keys : array_like of int
        Integer keys (negative values are allowed and wrap to uint64).

    Returns
    -------
    numpy.ndarray of uint64, the broadcast shape of ``keys``.
    """
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLDEN * np.uint64(stream + 1), np.uint64))
        for k in keys:
            kk = np.asarray(k).astype(np.int64).astype(np.uint64)
            h = _mix(h ^ (kk + _GOLDEN))
    return np.asarray(h, dtype=np.uint64)


def uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1) (53 random bits), one per broadcast key."""
    return (hash_u64(seed, stream, *keys) >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Standard normal floats (Box-Muller on two hashed uniforms)."""
    u1 = uniform(seed, stream, *keys, 0)
    u2 = uniform(seed, stream, *keys, 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def unit_vectors(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniformly random 3D unit vectors, shape ``broadcast(keys).shape + (3,)``."""
    v = np.stack([normal(seed, stream, *keys, c) for c in range(3)], axis=-1)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)

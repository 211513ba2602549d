"""Lazy TensorFlow import with modest threading (TensorFlow is never imported at module import)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["import_tf", "set_seed"]

_CONFIGURED = False


def import_tf(threads: int | None = None) -> Any:
    """Import TensorFlow, quieting its C++ log and (first call only) limiting its thread pools.

    Parameters
    ----------
    threads : int or None
        Intra-op threads; ``None`` reads ``VOLLSEG_TF_THREADS`` (else TensorFlow's default).
        Thread pools can only be set before TensorFlow initialises its runtime; later calls
        leave them as they are.

    Returns
    -------
    module
        The ``tensorflow`` module.
    """
    global _CONFIGURED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _CONFIGURED:
        _CONFIGURED = True
        if threads is None:
            env = os.environ.get("VOLLSEG_TF_THREADS")
            threads = int(env) if env else None
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
            except RuntimeError:  # runtime already initialised by someone else
                pass
    return tf


def set_seed(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG (used by csbdeep/stardist samplers) and Keras."""
    import random

    import numpy as np

    import_tf()
    import keras

    random.seed(seed)
    np.random.seed(seed % (2**32))
    keras.utils.set_random_seed(seed)

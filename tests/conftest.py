"""Shared fixtures: real data location, small deterministic RNGs, temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real data made by others (``VOLLSEG_TEST_DATA``); skips when absent."""
    root = os.environ.get("VOLLSEG_TEST_DATA")
    if not root:
        pytest.skip("VOLLSEG_TEST_DATA is not set: real-data test skipped (CI sets it to ../shared/data)")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"VOLLSEG_TEST_DATA={root} is not a directory: real-data test skipped")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)

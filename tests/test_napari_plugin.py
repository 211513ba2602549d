"""The napari plugin tests, run in a separate Python process.

napari's Qt stack (PyQt6, vispy/OpenGL) and TensorFlow crash with a segmentation fault when both are
loaded into one process, whichever comes first. The suite loads TensorFlow for the network tests, so
the plugin's tests (``tests/isolated/napari_plugin_cases.py``) run in a child pytest process and this
test reports its outcome.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "isolated" / "napari_plugin_cases.py"


@pytest.mark.skipif(importlib.util.find_spec("napari") is None,
                    reason="napari is not installed (pip install 'vollseg-dask[napari]')")
def test_napari_plugin_in_its_own_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore", str(CASES)],
        capture_output=True, text=True, timeout=600, cwd=CASES.parents[2],
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    print(report)  # shown with -s / on failure: which cases ran and which skipped, with reasons

"""The walkthrough notebooks in ``notebooks/`` execute end to end (tiny parameters) and produce their outputs.

Each notebook is run with ``nbclient`` on the ``python3`` kernel of this interpreter, in a temporary
working directory. As papermill does, a cell tagged ``injected-parameters`` is inserted after the
cell tagged ``parameters``; it overrides the parameters with tiny values. The notebooks are stored
without outputs; nothing is written back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell; each notebook takes well under a minute with these parameters

#: tiny parameters per notebook (values are written into the injected cell with repr)
TINY: dict[str, dict[str, object]] = {
    "01_training.ipynb": {
        "WORKDIR": "out/01",
        "SYN_SHAPE": (2, 16, 48, 48),
        "SYN_CELLS": 12,
        "TRAINING": dict(PatchZ=8, PatchY=32, PatchX=32, n_patches_per_image=2, n_augmented_copies=1,
                         NetworkDepth=2, startfilter=4, Kernel=3, Rays=16, star_conv_after_unet=8,
                         Epochs=1, steps_per_epoch=1, batch_size=2, LearningRate=1e-3,
                         TrainN2V=True, TrainSTAR=True, TrainUNET=True, denoised_copies=True, boundary_width=1),
        "NMS_THRESHOLDS": (0.4,),
    },
    "02_segmentation_dask.ipynb": {
        "WORKDIR": "out/02",
        "SYN_SHAPE": (1, 24, 64, 64),
        "SYN_CELLS": 30,
        "CLUSTER": dict(kind="local", n_workers=2, threads_per_worker=1),
        "PREDICTOR": "ground-truth",
        "SEGMENT": dict(block_shape=(24, 32, 32), halo=(8, 16, 16), connectivity=6),
        "IOU_THRESHOLDS": (0.3, 0.5, 0.7),
    },
    "03_distance_to_boundary.ipynb": {
        "WORKDIR": "out/03",
        "SYNTHETIC": dict(shape=(6, 24, 48, 48), n_cells=20, voxel_size=(1.0, 0.5, 0.5),
                          division_rate=0.25, min_cycle_frames=2, seed=1),
        "PREDICTOR": "ground-truth",
        "CLUSTER": dict(kind="threads", n_workers=2),
        "SEGMENT": dict(block_shape=(24, 48, 48), halo=(8, 24, 24)),
        "MIN_TRACK_SPOTS": 2,
    },
    "04_intensity_oscillations.ipynb": {
        "WORKDIR": "out/04",
        "SIGNAL_FRAMES": 32,
        "N_SIGNALS": 8,
        "SYNTHETIC": dict(shape=(8, 24, 48, 48), n_cells=15, voxel_size=(1.0, 0.5, 0.5), division_rate=0.0, seed=11),
        "MIN_TRACKLET_FRAMES": 8,
        "PREDICTOR": "ground-truth",
        "CLUSTER": dict(kind="threads", n_workers=2),
        "SEGMENT": dict(block_shape=(24, 48, 48), halo=(8, 24, 24)),
    },
}


def _inject_parameters(nb, values: dict[str, object]) -> None:
    """Insert a cell assigning ``values`` right after the cell tagged ``parameters``."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    source = "# Injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    nb.cells.insert(tagged[0] + 1, cell)


def _use_this_python(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make kernel name ``python3`` run this interpreter (``sys.executable``), whatever kernels the
    user or the system have installed: a kernel spec in a directory put first on ``JUPYTER_PATH``."""
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (vollseg-dask tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(root))


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, dict]:
    from jupyter_client.kernelspec import KernelSpecManager

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:  # stored clean
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), \
            f"{name} is stored with outputs"
    _inject_parameters(nb, TINY[name])
    # quiet, deterministic kernels; the kernel inherits this environment
    monkeypatch.setenv("VOLLSEG_PROGRESS", "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("VOLLSEG_TF_THREADS", "2")
    monkeypatch.delenv("VOLLSEG_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("VOLLSEG_N_WORKERS", raising=False)
    _use_this_python(tmp_path.parent / f"{tmp_path.name}-jupyter", monkeypatch)
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    summary = json.loads((tmp_path / TINY[name]["WORKDIR"] / "summary.json").read_text())
    return nb, summary


def _figures(tmp_path: Path, name: str) -> set[str]:
    folder = tmp_path / TINY[name]["WORKDIR"] / "figures"
    return {p.name for p in folder.glob("*.png") if p.stat().st_size > 1000}


def test_notebooks_are_clean_and_parametrised():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(TINY), names
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1 and params[0].cell_type == "code", name
        # every tiny override names an existing parameter
        assigned = {line.split("=")[0].strip() for line in params[0].source.splitlines()
                    if "=" in line and not line.startswith((" ", "#"))}
        assert set(TINY[name]) <= assigned, (name, set(TINY[name]) - assigned)
        assert any(c.cell_type == "markdown" for c in nb.cells)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


@pytest.mark.slow
def test_01_training(tmp_path, monkeypatch):
    pytest.importorskip("stardist")
    _, summary = _execute("01_training.ipynb", tmp_path, monkeypatch)
    assert set(summary["folders"]) == {"n2v", "stardist", "unet"}
    for kind, folder in summary["folders"].items():
        assert (Path(folder) / "config.json").is_file() and (Path(folder) / "weights_best.h5").is_file(), kind
    assert Path(folder).is_relative_to(tmp_path)
    th = json.loads((Path(summary["folders"]["stardist"]) / "thresholds.json").read_text())
    assert 0 < th["prob"] < 1 and th["nms"] == pytest.approx(0.4)
    assert summary["n_train_patches"] > 0 and summary["n_val_patches"] > 0
    assert {"training_data.png", "loss_curves.png", "patches.png", "network_outputs.png"} <= _figures(
        tmp_path, "01_training.ipynb")


@pytest.mark.slow
def test_02_segmentation_dask(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    nb, summary = _execute("02_segmentation_dask.ipynb", tmp_path, monkeypatch)
    assert summary["cluster"] == "local" and summary["predictor"] == "ground-truth"
    assert set(summary["n_objects"]) == {"vollseg", "stardist", "unet"}
    assert all(n["0"] > 5 for n in summary["n_objects"].values()), summary["n_objects"]
    assert all(summary["all_certified"].values())
    assert all(0.5 < f1 <= 1.0 for f1 in summary["f1_at_0.5"].values()), summary["f1_at_0.5"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "#SBATCH" in text and "--gres=gpu:1" in text  # the SLURM job script was printed
    work = tmp_path / "out/02"
    import pandas as pd

    table = pd.read_csv(work / "evaluation.csv")
    assert len(table) == 3 * 3 and set(table["mode"]) == {"vollseg", "stardist", "unet"}
    assert {"segmentations.png", "f1_vs_iou.png"} <= _figures(tmp_path, "02_segmentation_dask.ipynb")
    assert (work / "figures" / "comparison" / "f1_vs_iou.png").is_file()


@pytest.mark.slow
def test_03_distance_to_boundary(tmp_path, monkeypatch):
    _, summary = _execute("03_distance_to_boundary.ipynb", tmp_path, monkeypatch)
    assert summary["n_cells_measured"] > 0 and summary["n_tracks"] > 0
    assert summary["n_true_divisions"] > 0 and summary["n_divisions"] > 0
    assert 0 < summary["n_dividing_tracks"] < summary["n_tracks"]
    assert set(summary["mean_distance_um"]) == {"dividing", "non-dividing"}
    assert {"tissue_mask.png", "boundary_distance.png", "distance_over_time.png",
            "example_track_distance.png"} <= _figures(tmp_path, "03_distance_to_boundary.ipynb")
    import pandas as pd

    stats = pd.read_csv(tmp_path / "out/03" / "distance_over_time.csv")
    assert len(stats) > 0 and stats["mean"].notna().all()


@pytest.mark.slow
def test_04_intensity_oscillations(tmp_path, monkeypatch):
    _, summary = _execute("04_intensity_oscillations.ipynb", tmp_path, monkeypatch)
    check = summary["synthetic_check"]
    assert check["n_correct"] >= 0.8 * check["n_signals"]
    tracked = summary["tracked"]
    assert tracked["n_long_tracklets"] > 0
    # the oscillation injected into the image is found on most tracked cells
    assert tracked["n_correct"] >= 0.7 * tracked["n_long_tracklets"], tracked
    assert {"synthetic_signal_spectrum.png", "tracklet_intensity_spectra.png", "dominant_frequencies.png",
            "track_intensity.png"} <= _figures(tmp_path, "04_intensity_oscillations.ipynb")

"""The embedded default run: synthetic tissue → the whole pipeline → a printed summary."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["demo_config", "run_demo"]


def demo_config(store: Path, out: Path, *, predictor: str = "network", n_workers: int | None = None) -> object:
    """The :class:`~vollseg_dask.pipeline.RunConfig` of the demo for a synthetic ``store``.

    Tracker distances follow the synthetic defaults (cells about 9 µm across moving about 1 µm per
    frame): links up to 5 µm, gaps of up to 2 frames within 6 µm, divisions within 8 µm.
    """
    from vollseg_dask.pipeline import RunConfig

    cluster = {"kind": "local"}
    if n_workers:
        cluster["n_workers"] = int(n_workers)
    return RunConfig.model_validate({
        "input": {"path": str(store)},
        "output": str(out),
        "labels_name": "cells",
        "cluster": cluster,
        "predictor": {"kind": predictor, "models": "bundled"},
        # membrane data: the U-Net's interior mask leaves walls and thin cells out; StarDist's foreground
        # joins it as the flood region, and objects meeting at a face of high probability (lobes of one
        # cell) are merged; merge threshold chosen on the bundled models' validation seed
        "segment": {"block_shape": (32, 64, 64), "halo": (8, 24, 24), "foreground_threshold": 0.1,
                    "merge_threshold": 0.33},
        "measure": {"tissue_mask": "auto"},
        "track": {
            "LINKING_MAX_DISTANCE": 5.0,
            "ALLOW_GAP_CLOSING": True,
            "GAP_CLOSING_MAX_DISTANCE": 6.0,
            "MAX_FRAME_GAP": 2,
            "ALLOW_TRACK_SPLITTING": True,
            "SPLITTING_MAX_DISTANCE": 8.0,
            "min_tracklet_length": 0,
        },
    })


def run_demo(out: str | os.PathLike[str], *, shape: tuple[int, int, int, int] = (4, 32, 128, 128),
             n_cells: int = 200, predictor: str = "network", n_workers: int | None = None,
             seed: int = 20261124, synthetic_only: bool = False) -> str:
    """Write a synthetic store under ``out`` and run the pipeline on it; return a printable summary.

    The store is reused when it already exists with the same settings, and every stage resumes, so
    running the demo twice is cheap.
    """
    from vollseg_dask.config import load_config
    from vollseg_dask.errors import StoreExistsError
    from vollseg_dask.synthetic import BUNDLED_MODEL_TISSUE, CONFIG_FILE, SyntheticConfig, write_synthetic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "demo.ome.zarr"
    # the tissue the bundled networks were trained on (mostly convex cells)
    syn = SyntheticConfig(shape=shape, n_cells=n_cells, seed=seed, **BUNDLED_MODEL_TISSUE)
    if not (store / "zarr.json").is_file():
        write_synthetic(store, syn)
    elif not (store / CONFIG_FILE).is_file() or load_config(SyntheticConfig, store / CONFIG_FILE) != syn:
        raise StoreExistsError(f"{store} exists but was not written by this demo with these settings "
                               f"(shape {tuple(shape)}, {n_cells} cells, seed {seed}); remove it or choose "
                               "another --out")
    if synthetic_only:
        return f"synthetic store: {store}"

    from vollseg_dask.evaluate import evaluate_store
    from vollseg_dask.pipeline import run

    report = run(demo_config(store, out, predictor=predictor, n_workers=n_workers))
    lines = [report.summary()]
    if report.ok:
        table = evaluate_store(store, "cells", "ground_truth", thresholds=(0.5, 0.7), per_t=False, ssim=False)
        lines.append("accuracy against the synthetic ground truth (all time points):")
        for _, row in table.iterrows():
            lines.append(f"  IoU {row['thresh']:.1f}: F1 {row['f1']:.3f}  precision {row['precision']:.3f}  "
                         f"recall {row['recall']:.3f}")
    return "\n".join(lines)

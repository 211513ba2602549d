"""Synthetic membrane-labelled tissue time-lapses with exact ground truth.

Densely packed, irregular (partly non-star-convex) cells with curved walls inside a smooth tissue
blob; smooth motion and divisions; labels that follow the Cell Tracking Challenge convention
(label value = track id) with the lineage as a table and ``man_track.txt``. Every value is a pure
function of the configuration (seed included), and any block of any frame renders on its own, so
:func:`write_synthetic` can write stores far larger than memory, one storage unit per task.

Main entry points
-----------------
SyntheticConfig            parameters (pydantic, described fields)
write_synthetic(path, cfg) OME-Zarr image + ``labels/ground_truth`` + lineage Parquet + man_track.txt
render_labels / render_image(cfg, t, region)   any region of any frame in memory
lineage(cfg)               track_id, start, end, parent
seed_table(cfg, t)         generating point of each cell (µm)
true_centroids(cfg, times) exact label centroids (µm) per (t, track_id)
"""

from vollseg_dask.synthetic.api import (
    LINEAGE_COLUMNS,
    iter_lineage,
    lineage,
    render_image,
    render_labels,
    scene_for,
    seed_table,
    true_centroids,
)
from vollseg_dask.synthetic.config import BUNDLED_MODEL_TISSUE, SyntheticConfig
from vollseg_dask.synthetic.write import (
    CONFIG_FILE,
    LABELS_NAME,
    LINEAGE_FILE,
    MAN_TRACK_FILE,
    SyntheticStore,
    write_man_track,
    write_synthetic,
)

__all__ = [
    "SyntheticConfig",
    "BUNDLED_MODEL_TISSUE",
    "SyntheticStore",
    "write_synthetic",
    "write_man_track",
    "render_labels",
    "render_image",
    "lineage",
    "iter_lineage",
    "seed_table",
    "true_centroids",
    "scene_for",
    "LINEAGE_COLUMNS",
    "LABELS_NAME",
    "LINEAGE_FILE",
    "MAN_TRACK_FILE",
    "CONFIG_FILE",
]

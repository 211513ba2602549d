"""``vollseg-dask optimize-thresholds``: choose a StarDist model's probability and NMS thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _ints(values: tuple[str, ...]) -> list[int] | None:
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise click.BadParameter(f"time point {part!r} is not an integer") from None
    return out or None


@click.command("optimize-thresholds")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--images", "-i", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Validation image (TIFF/.npy, z,y,x); repeat for several.")
@click.option("--labels", "-l", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Label volume for each --images, same order.")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="OME-Zarr image store instead of --images.")
@click.option("--labels-name", default="ground_truth", show_default=True, help="Labels group of --store.")
@click.option("--timepoints", "-t", multiple=True, help="Time points of --store (e.g. -t 0 -t 3 or -t 0,3).")
@click.option("--channel", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--nms", "nms_threshs", multiple=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="NMS thresholds to try (default 0.3 0.4 0.5).")
@click.option("--iou", "iou_threshs", multiple=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="IoU thresholds averaged in the score (default 0.3 0.5 0.7).")
@click.option("--pmin", type=float, default=1.0, show_default=True, help="Low normalisation percentile.")
@click.option("--pmax", type=float, default=99.8, show_default=True, help="High normalisation percentile.")
@click.option("--n-tiles", type=int, nargs=3, default=None, help="Tiles (z y x) for large volumes.")
@click.option("--max-candidates", type=click.IntRange(min=10), default=3000, show_default=True,
              help="At most this many candidates per volume at the lowest probability tried.")
def command(model_dir: Path, images: tuple[Path, ...], labels: tuple[Path, ...], store: Path | None,
            labels_name: str, timepoints: tuple[str, ...], channel: int, nms_threshs: tuple[float, ...],
            iou_threshs: tuple[float, ...], pmin: float, pmax: float, n_tiles: tuple[int, int, int] | None,
            max_candidates: int) -> None:
    """Optimise the thresholds of the StarDist3D model in MODEL_DIR on validation volumes.

    Writes MODEL_DIR/thresholds.json and prints it.
    """
    from vollseg_dask.errors import ConfigError
    from vollseg_dask.networks.folders import inspect_model_folder

    if bool(images) == (store is not None):
        raise ConfigError("give validation --images/--labels or a --store, not both / neither")
    if images and len(images) != len(labels):
        raise ConfigError(f"{len(images)} --images but {len(labels)} --labels")
    inspect_model_folder(model_dir, "stardist")  # fail fast, before TensorFlow loads

    from vollseg_dask.networks.thresholds import optimize_thresholds

    th = optimize_thresholds(
        model_dir, list(images) or None, list(labels) or None, store=store, labels_name=labels_name,
        timepoints=_ints(timepoints), channel=channel, nms_threshs=nms_threshs or (0.3, 0.4, 0.5),
        iou_threshs=iou_threshs or (0.3, 0.5, 0.7), n_tiles=tuple(n_tiles) if n_tiles else None,
        pmin=pmin, pmax=pmax, max_candidates=max_candidates)
    click.echo(json.dumps(th))

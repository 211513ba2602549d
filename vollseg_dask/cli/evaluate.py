"""``vollseg-dask evaluate``: compare predicted labels with ground truth in one OME-Zarr store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vollseg_dask.errors import InvalidDataError

_SHOWN = ["thresh", "tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "mean_matched_score",
          "panoptic_quality", "mse", "ssim"]


def _parse_thresholds(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    try:
        values = tuple(float(s) for s in items)
    except ValueError:
        raise InvalidDataError(f"--thresholds must be comma-separated numbers, got {text!r}") from None
    return values


def _parse_block(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise InvalidDataError(f"--block-shape must be comma-separated integers, got {text!r}") from None


@click.command(name="evaluate")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--pred", "pred_names", multiple=True, required=True,
              help="Labels group with the prediction; repeat to compare several methods.")
@click.option("--gt", "gt_name", required=True, help="Labels group with the ground truth.")
@click.option("--thresholds", default=None, help="Comma-separated IoU thresholds (default 0.1,0.2,...,0.9).")
@click.option("--per-t", is_flag=True, help="Also print one row per time point (JSON always has them).")
@click.option("--json", "as_json", is_flag=True, help="Write the full result as JSON on stdout.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), default=None,
              help="Write accuracy/F1/TP-vs-τ and MSE/SSIM plots (PNG) into this folder.")
@click.option("--level", default=0, show_default=True, help="Pyramid level to compare.")
@click.option("--block-shape", default=None, help="Spatial block shape, e.g. 32,256,256 (default: chunks).")
@click.option("--no-ssim", is_flag=True, help="Skip the SSIM of the binarised masks.")
def command(store: Path, pred_names: tuple[str, ...], gt_name: str, thresholds: str | None, per_t: bool,
            as_json: bool, plots_dir: Path | None, level: int, block_shape: str | None, no_ssim: bool) -> None:
    """Compare predicted labels with ground truth: IoU matching at τ, precision, recall, F1, AP, MSE, SSIM.

    Both are labels groups of the OME-Zarr STORE. Prints the metrics per IoU threshold τ,
    aggregated over all time points (StarDist's matching_dataset).
    """
    import pandas as pd

    from vollseg_dask.evaluate import evaluate_store, plot_metrics
    from vollseg_dask.metrics import DEFAULT_THRESHOLDS

    thr = _parse_thresholds(thresholds) or DEFAULT_THRESHOLDS
    bs = _parse_block(block_shape)
    results: dict[str, pd.DataFrame] = {}
    for name in pred_names:
        results[name] = evaluate_store(store, name, gt_name, thr, per_t=True, level=level, block_shape=bs,
                                       ssim=not no_ssim)
    if plots_dir is not None:
        paths = plot_metrics(results, plots_dir)
        if not as_json:
            click.echo(f"plots written: {', '.join(str(p) for p in paths.values())}")
    if as_json:
        payload = {
            "store": str(store),
            "gt": gt_name,
            "thresholds": list(thr),
            "methods": {name: json.loads(df.to_json(orient="records")) for name, df in results.items()},
        }
        click.echo(json.dumps(payload, indent=2))
        return
    for name, df in results.items():
        shown = df if per_t else df[df["t"].isna()]
        cols = (["t"] if per_t else []) + _SHOWN
        click.echo(f"{name} vs {gt_name} ({'per time point and ' if per_t else ''}all time points):")
        click.echo(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        click.echo("")

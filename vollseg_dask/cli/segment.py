"""``vollseg-dask segment``: block-wise VollSeg segmentation of an OME-Zarr store into a labels group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vollseg_dask.errors import ConfigError


def _parse_triple(text: str | None, name: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be three comma-separated integers Z,Y,X, got {text!r}") from None
    if len(values) != 3:
        raise ConfigError(f"{name} must be three comma-separated integers Z,Y,X, got {text!r}")
    return values  # type: ignore[return-value]


def network_predictor(models: str | None, *, stardist: str | None = None, unet: str | None = None,
                      n2v: str | None = None, need_unet: bool = True, **kwargs: object):
    """The network-backed predictor for ``--models DIR|bundled`` and/or single model folders.

    ``--stardist/--unet/--n2v`` name one network each (upstream VollSeg folders included: csbdeep CARE
    U-Nets, ``n2v`` package models) and replace that network of ``--models``.
    """
    import importlib

    from vollseg_dask.errors import MissingDependencyError, ModelNotFoundError

    if models is not None and models != "bundled" and not Path(models).is_dir():
        raise ModelNotFoundError(f"model folder {models!r} does not exist")
    try:
        module = importlib.import_module("vollseg_dask.predictors.network")
    except ModuleNotFoundError as exc:
        if exc.name != "vollseg_dask.predictors.network":
            raise
        module = None
    factory = getattr(module, "predictor_from_folders", None) if module is not None else None
    if factory is None:
        raise MissingDependencyError(
            "the network predictor (StarDist3D/U-Net/N2V inference) is not available in this installation yet; "
            "use --predictor ground-truth for synthetic data with ground-truth labels"
        )
    return factory(models, stardist=stardist, unet=unet, n2v=n2v, need_unet=need_unet, **kwargs)


def _scale_option(text: str | None, no_rescale: bool, object_diameter: float | None) -> object:
    if no_rescale:
        if text is not None or object_diameter is not None:
            raise ConfigError("--no-rescale cannot be combined with --scale or --object-diameter")
        return None
    if text is None:
        return "auto"
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--scale must be three numbers Z,Y,X, got {text!r}") from None
    if len(values) != 3 or object_diameter is not None:
        raise ConfigError(f"--scale must be three numbers Z,Y,X (and excludes --object-diameter), got {text!r}")
    return values


@click.command(name="segment")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", "out_name", required=True, help="Name of the labels group to write.")
@click.option("--models", default=None, help="Folder of model folders (stardist/, unet/, n2v/) or 'bundled'.")
@click.option("--stardist", "stardist_dir", default=None, type=click.Path(path_type=Path),
              help="StarDist3D model folder (replaces --models' stardist/).")
@click.option("--unet", "unet_dir", default=None, type=click.Path(path_type=Path),
              help="U-Net model folder: vollseg-dask's or a csbdeep CARE folder (upstream VollSeg's U-Net; its mask "
                   "is the output above the per-t Otsu threshold). Not needed with --mode stardist.")
@click.option("--n2v", "n2v_dir", default=None, type=click.Path(path_type=Path),
              help="Noise2Void model folder (vollseg-dask's or the n2v package's): denoise first.")
@click.option("--scale", "scale_text", default=None, metavar="Z,Y,X",
              help="Scale-aware inference: store voxel / model voxel per axis (default: from the store's voxel size "
                   "and the model's model_scale.json).")
@click.option("--object-diameter", type=click.FloatRange(0, min_open=True), default=None,
              help="Typical object diameter in the data (µm): rescale so that objects have the model's size.")
@click.option("--no-rescale", is_flag=True, help="Run the networks on the store's grid as it is.")
@click.option("--unet-threshold", type=float, default=None,
              help="CARE U-Net: threshold on its output instead of the per-t Otsu threshold.")
@click.option("--predictor", "predictor_kind", type=click.Choice(["ground-truth"]), default=None,
              help="Derive the network outputs from ground-truth labels in the store (tests, benchmarks).")
@click.option("--gt-labels", default="ground_truth", show_default=True,
              help="Labels group the ground-truth predictor reads.")
@click.option("--drop-fraction", type=float, default=0.0, show_default=True,
              help="Ground-truth predictor: fraction of StarDist objects removed.")
@click.option("--merge-fraction", type=float, default=0.0, show_default=True,
              help="Ground-truth predictor: fraction of touching cell pairs the U-Net merges.")
@click.option("--false-rate", type=float, default=0.0, show_default=True,
              help="Ground-truth predictor: false candidates per 16^3 lattice cell.")
@click.option("--noise", type=float, default=0.0, show_default=True,
              help="Ground-truth predictor: noise std on the probability maps.")
@click.option("--seed", type=int, default=0, show_default=True, help="Ground-truth predictor perturbation seed.")
@click.option("--n-rays", type=int, default=96, show_default=True, help="Ground-truth predictor: StarDist rays.")
@click.option("--mode", type=click.Choice(["vollseg", "stardist", "unet"]), default=None,
              help="Segmentation mode (default: the config's, vollseg).")
@click.option("--block", default=None, help="Block core shape Z,Y,X (overrides the config).")
@click.option("--foreground-threshold", type=click.FloatRange(0, 1), default=None,
              help="vollseg: StarDist probability above which voxels join the U-Net mask as the flood region "
                   "(overrides the config; the bundled models use 0.1).")
@click.option("--merge-threshold", type=click.FloatRange(0, 1), default=None,
              help="vollseg: merge touching objects whose shared face has at least this mean StarDist "
                   "probability (overrides the config; the bundled models use 0.33).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SegmentationConfig file (.yaml/.toml).")
@click.option("--workers", type=int, default=None, help="Local Dask workers (default: sized to the machine).")
@click.option("--memory-limit", default=None,
              help="Memory per local worker, e.g. 1.5GiB (default: the machine's memory split evenly). Dask "
                   "enforces it; network tiles and watershed read regions are sized to fit it.")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option("--threads", "use_threads", is_flag=True,
              help="Run in this process on a thread pool instead of a local cluster (small data).")
@click.option("--overwrite", is_flag=True, help="Replace existing labels / a previous run with other settings "
              "(the new labels replace the old ones only when complete).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the run's intermediates (default: STORE.vollseg-scratch/NAME beside the store; "
                   "node-local disk is fastest). Removed when the run completes.")
@click.option("--keep-intermediates", is_flag=True, help="Keep the scratch folder after the run completes.")
@click.option("--json", "as_json", is_flag=True, help="Print the result summary as JSON.")
def command(store: Path, out_name: str, models: str | None, stardist_dir: Path | None, unet_dir: Path | None,
            n2v_dir: Path | None, scale_text: str | None, object_diameter: float | None, no_rescale: bool,
            unet_threshold: float | None, predictor_kind: str | None, gt_labels: str,
            drop_fraction: float, merge_fraction: float, false_rate: float, noise: float, seed: int, n_rays: int,
            mode: str | None, block: str | None, foreground_threshold: float | None, merge_threshold: float | None,
            config_file: Path | None, workers: int | None, memory_limit: str | None,
            scheduler: str | None, use_threads: bool, overwrite: bool, scratch: Path | None,
            keep_intermediates: bool, as_json: bool) -> None:
    """Segment STORE block by block (VollSeg) into labels group --out."""
    from vollseg_dask.config import load_config
    from vollseg_dask.segmentation import SegmentationConfig, segment

    networks = models is not None or stardist_dir is not None
    if networks == (predictor_kind is not None):
        raise ConfigError("give exactly one of --models DIR|bundled (or --stardist DIR [--unet DIR] [--n2v DIR]) or "
                          "--predictor ground-truth")
    if models is None and (unet_dir is not None or n2v_dir is not None) and stardist_dir is None:
        raise ConfigError("--unet/--n2v need --stardist DIR or --models DIR|bundled")
    cfg = load_config(SegmentationConfig, config_file) if config_file is not None else SegmentationConfig()
    updates: dict[str, object] = {}
    if mode is not None:
        updates["mode"] = mode
    if foreground_threshold is not None:
        updates["foreground_threshold"] = foreground_threshold
    if merge_threshold is not None:
        updates["merge_threshold"] = merge_threshold
    block_shape = _parse_triple(block, "--block")
    if block_shape is not None:
        updates["block_shape"] = block_shape
    given = set(cfg.model_fields_set) | set(updates)
    if updates:
        from vollseg_dask.config import parse_config

        cfg = parse_config(SegmentationConfig, {**cfg.model_dump(), **updates}, source="command line")
    if networks:
        need_unet = cfg.mode != "stardist"
        predictor = network_predictor(models, stardist=None if stardist_dir is None else str(stardist_dir),
                                      unet=None if unet_dir is None else str(unet_dir),
                                      n2v=None if n2v_dir is None else str(n2v_dir), need_unet=need_unet,
                                      channel=cfg.channel, unet_threshold=unet_threshold,
                                      scale=_scale_option(scale_text, no_rescale, object_diameter),
                                      object_diameter=object_diameter)
        from vollseg_dask.segmentation.config import apply_model_defaults

        cfg, applied = apply_model_defaults(cfg, predictor.segmentation_defaults, given)
        if applied:
            click.echo("using the model's segmentation defaults (segmentation_defaults.json; give an option or a "
                       "config key to override): " + ", ".join(f"{k}={v}" for k, v in applied.items()), err=True)
        if cfg.mode != "stardist" and not predictor.has_unet:
            raise ConfigError(f"mode {cfg.mode!r} needs a U-Net (--unet DIR or a models folder with unet/); "
                              f"--mode stardist runs without one")
    else:
        from vollseg_dask.predictors.ground_truth import GroundTruthPredictor

        predictor = GroundTruthPredictor(str(store), gt_labels, n_rays=n_rays, seed=seed, drop_fraction=drop_fraction,
                                         merge_fraction=merge_fraction, false_rate=false_rate, noise=noise)
    client: object
    if scheduler is not None:
        client = scheduler
    elif use_threads:
        client = {"kind": "threads", "n_workers": workers} if workers is not None else {"kind": "threads"}
    else:
        local = {k: v for k, v in (("n_workers", workers), ("memory_limit", memory_limit)) if v is not None}
        client = {"kind": "local", **local} if local else None
    result = segment(str(store), out_name, predictor, cfg, client=client, overwrite=overwrite, resume=not overwrite,
                     scratch=scratch, keep_intermediates=keep_intermediates)
    summary = {
        "labels": f"{store}/labels/{out_name}",
        "n_objects": {str(k): v for k, v in result.n_objects.items()},
        "blocks": result.n_blocks,
        "tasks": result.n_tasks,
        "certified": result.all_certified,
        "certificates": {s: sum(1 for c in result.certificates.values() if c["status"] == s)
                         for s in ("exact", "agreed", "disagree")},
        "timings": {k: round(v["wall_s"], 3) for k, v in result.timings.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        from vollseg_dask.runtime import format_stage_summary

        click.echo(f"wrote {summary['labels']}: {summary['n_objects']} objects, {result.n_blocks} blocks, "
                   f"certificates {summary['certificates']}")
        if result.timings:
            click.echo(format_stage_summary(result.timings))

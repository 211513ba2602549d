"""``vollseg-dask train CONFIG``: train StarDist3D, the U-Net and Noise2Void from a config file."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override Epochs (all networks).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None, help="Override steps_per_epoch.")
@click.option("--model-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Override model_dir.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="TensorFlow intra-op threads (default: VOLLSEG_TF_THREADS or TensorFlow's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", default=False, help="Show Keras progress per epoch.")
def command(config: Path, epochs: int | None, steps_per_epoch: int | None, model_dir: Path | None,
            threads: int | None, as_json: bool, progress: bool) -> None:
    """Train the networks described by the YAML/TOML CONFIG (a TrainingConfig).

    Keys take the paper's names or their snake_case forms: BaseDir (Raw/ + Segmentation/ TIFF
    pairs) or store (+ labels_name), GenerateNPZ, NPZfilename, PatchZ/PatchY/PatchX,
    n_patches_per_image, TrainN2V, TrainSTAR, TrainUNET, NetworkDepth, startfilter, Kernel, Epochs,
    LearningRate, batch_size, Rays, grid, boundary_width, model_dir, model_name ...
    Writes model_dir/model_name/{n2v,stardist,unet}.
    """
    from vollseg_dask.config import load_config
    from vollseg_dask.networks.training import TrainingConfig

    cfg = load_config(TrainingConfig, config)
    updates = {}
    if epochs is not None:
        updates.update(epochs=epochs, n2v_epochs=None, star_epochs=None, unet_epochs=None)
    if steps_per_epoch is not None:
        updates["steps_per_epoch"] = steps_per_epoch
    if model_dir is not None:
        updates["model_dir"] = str(model_dir)
    for k, v in updates.items():
        setattr(cfg, k, v)

    from vollseg_dask.networks._tf import import_tf

    import_tf(threads)
    from vollseg_dask.networks.training import train_from_config

    result = train_from_config(cfg, verbose=2 if progress else 0)
    out = {
        "folders": {k: str(v) for k, v in result.folders.items()},
        "seconds": result.seconds,
        "thresholds": result.thresholds,
        "npz": None if result.npz is None else str(result.npz),
        "n_train_patches": result.n_train,
        "n_val_patches": result.n_val,
        "final_loss": {k: h["loss"][-1] for k, h in result.histories.items() if h.get("loss")},
        "final_val_loss": {k: h["val_loss"][-1] for k, h in result.histories.items() if h.get("val_loss")},
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"patches: {result.n_train} training, {result.n_val} validation"
               + (f" -> {result.npz}" if result.npz else ""))
    for kind, folder in result.folders.items():
        click.echo(f"{kind:9s} {folder}  ({result.seconds.get(kind, 0):.1f} s, "
                   f"val_loss {out['final_val_loss'].get(kind, float('nan')):.4g})")
    if result.thresholds:
        click.echo(f"StarDist thresholds: prob={result.thresholds['prob']:.3f} nms={result.thresholds['nms']:.2f}")
    click.echo(f"total {result.seconds.get('total', 0):.1f} s")

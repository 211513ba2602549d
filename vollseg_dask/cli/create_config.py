"""``vollseg-dask create-config``: write a configuration file holding every default."""

from __future__ import annotations

from pathlib import Path

import click

from vollseg_dask.config_registry import CONFIG_MODELS

#: ``--kind train`` writes a TrainingConfig template (it needs a data source, so it is not a plain default)
TRAIN_KIND = "train"


def training_template(init_from: str | None, store: str | None, labels: str) -> object:
    """A TrainingConfig for fine-tuning ``init_from`` (its architecture keys set to what it needs).

    ``store`` defaults to the placeholder ``images.zarr`` (edit it, or give ``--store``).
    """
    from vollseg_dask.config import parse_config
    from vollseg_dask.networks.training import TrainingConfig, init_requirements

    data: dict[str, object] = {"store": store or "images.zarr", "labels_name": labels}
    if init_from is not None:
        data["init_from"] = init_from
        data.update(init_requirements(init_from, ("stardist", "unet")))
        data.update(epochs=10, steps_per_epoch=20)
    return parse_config(TrainingConfig, data, source="create-config --kind train")


@click.command("create-config", help="Write the default configuration of KIND to OUT (.yaml/.yml/.toml): every "
               "key with its description as a comment; keys without a default are present as null (YAML) or "
               "listed commented (TOML).")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(sorted([*CONFIG_MODELS, TRAIN_KIND])),
    default="run" if "run" in CONFIG_MODELS else "segment",
    show_default=True,
    help="Which configuration to write (train: a fine-tuning/training config for 'vollseg-dask train').",
)
@click.option("--init-from", default=None,
              help="train only: fine-tune these models ('bundled' or a folder of stardist/, unet/ [, n2v/]); the "
                   "architecture keys they need are filled in.")
@click.option("--store", default=None, help="train only: OME-Zarr store with the images and a labels group.")
@click.option("--labels", default="ground_truth", show_default=True, help="train only: labels group of --store.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def command(out: Path, kind: str, init_from: str | None, store: str | None, labels: str, overwrite: bool) -> None:
    from vollseg_dask.config import write_config_template
    from vollseg_dask.config_registry import config_model
    from vollseg_dask.errors import ConfigError, StoreExistsError

    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    if kind == TRAIN_KIND:
        model = training_template(init_from, store, labels)
    else:
        if init_from is not None or store is not None:
            raise ConfigError("--init-from and --store apply to --kind train only")
        model = config_model(kind)()
    write_config_template(model, out)
    click.echo(f"wrote default {kind} configuration to {out}"
               + (f" (fine-tuning {init_from}: edit store/labels_name, then 'vollseg-dask train {out}')"
                  if init_from else ""))

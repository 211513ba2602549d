"""``vollseg-dask create-config``: write a configuration file holding every default."""

from __future__ import annotations

from pathlib import Path

import click

from vollseg_dask.config_registry import CONFIG_MODELS


@click.command("create-config", help="Write the default configuration of KIND to OUT (.yaml/.yml/.toml): every "
               "key with its description as a comment; keys without a default are present as null (YAML) or "
               "listed commented (TOML).")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(sorted(CONFIG_MODELS)),
    default="run" if "run" in CONFIG_MODELS else "segment",
    show_default=True,
    help="Which configuration to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def command(out: Path, kind: str, overwrite: bool) -> None:
    from vollseg_dask.config import write_config_template
    from vollseg_dask.config_registry import config_model
    from vollseg_dask.errors import StoreExistsError

    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    model = config_model(kind)()
    write_config_template(model, out)
    click.echo(f"wrote default {kind} configuration to {out}")

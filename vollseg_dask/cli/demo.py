"""``vollseg-dask demo``: the embedded default — synthetic data, bundled models, a local cluster."""

from __future__ import annotations

from pathlib import Path

import click

#: synthetic seed of the demo data: never used to train the bundled models (see vollseg_dask/models/)
DEMO_SEED = 20261124


@click.command("demo", help="Make a synthetic membrane time-lapse and run the whole pipeline on it with the "
               "bundled models on a local Dask cluster; prints where every output is.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("vollseg_demo"),
              show_default=True, help="Output folder.")
@click.option("--shape", default="4,32,128,128", show_default=True, help="Synthetic shape T,Z,Y,X.")
@click.option("--cells", default=200, show_default=True, help="Approximate cells per time point.")
@click.option("--predictor", type=click.Choice(["network", "ground-truth"]), default="network", show_default=True,
              help="network: the bundled StarDist3D/U-Net models; ground-truth: maps from the synthetic truth "
              "(no network; for a quick look at the engine).")
@click.option("--workers", type=int, default=None, help="Local workers (default: sized to the machine).")
@click.option("--synthetic-only", is_flag=True, help="Only write the synthetic store.")
def command(out: Path, shape: str, cells: int, predictor: str, workers: int | None, synthetic_only: bool) -> None:
    from vollseg_dask.demo import run_demo

    dims = tuple(int(v) for v in shape.split(","))
    if len(dims) != 4:
        raise click.BadParameter(f"--shape needs 4 integers T,Z,Y,X, got {shape!r}")
    result = run_demo(out, shape=dims, n_cells=cells, predictor=predictor, n_workers=workers,
                      seed=DEMO_SEED, synthetic_only=synthetic_only)
    click.echo(result)

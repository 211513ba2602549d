"""``vollseg-dask run CONFIG``: the whole pipeline, resumable, on one data set or a batch."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("run", help="Run ingest → segment → measure → track → analyse → export as configured in CONFIG "
               "(YAML/TOML; `vollseg-dask create-config --kind run` writes one).")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip work a previous run with the same settings finished; --no-resume recomputes all.")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (overrides the config).")
def command(config: Path, resume: bool, scheduler: str | None) -> None:
    from vollseg_dask.pipeline import run

    report = run(config, client=scheduler, resume=resume)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)

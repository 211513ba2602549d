"""``vollseg-dask info``: describe an OME-Zarr store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def describe_store(store: Path) -> dict[str, Any]:
    """Everything ``info`` prints, as a JSON-ready dict (image levels and label groups)."""
    from vollseg_dask.io.omezarr import list_labels, open_image, open_labels

    def describe(levels: list[Any]) -> dict[str, Any]:
        first = levels[0]
        return {
            "axes": first.axes,
            "shape": list(first.shape),
            "dtype": str(first.dtype),
            "chunks": list(first.chunks),
            "shards": None if first.shards is None else list(first.shards),
            "scale": list(first.scale),
            "units": dict(first.units),
            "n_levels": first.n_levels,
            "levels": [{"path": lv.path, "shape": list(lv.shape), "chunks": list(lv.chunks), "scale": list(lv.scale)}
                       for lv in levels],
        }

    image = open_image(store, 0)
    out = {"store": str(image.store), "ngff_version": image.ngff_version}
    out.update(describe([open_image(store, k) for k in range(image.n_levels)]))
    labels = []
    from vollseg_dask.errors import InvalidDataError

    for name in list_labels(store):
        try:
            lab = open_labels(store, name, 0)
        except InvalidDataError as exc:  # flagged incomplete: say so instead of describing zeros
            labels.append({"name": name, "incomplete": str(exc)})
            continue
        labels.append({"name": name, **describe([open_labels(store, name, k) for k in range(lab.n_levels)])})
    out["labels"] = labels
    return out


def _fmt(values: list[Any] | None) -> str:
    return "-" if values is None else "(" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                                       for v in values) + ")"


@click.command("info")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def command(store: Path, as_json: bool) -> None:
    """Describe the OME-Zarr STORE: axes, shape, dtype, chunks, shards, scale, units, levels, labels."""
    info = describe_store(store)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    units = ", ".join(f"{k}: {v}" for k, v in info["units"].items()) or "-"
    click.echo(f"store:   {info['store']}  (NGFF {info['ngff_version']})")
    click.echo(f"axes:    {info['axes']}")
    click.echo(f"shape:   {_fmt(info['shape'])}   dtype: {info['dtype']}")
    click.echo(f"chunks:  {_fmt(info['chunks'])}   shards: {_fmt(info['shards'])}")
    click.echo(f"scale:   {_fmt(info['scale'])}   units: {units}")
    click.echo(f"levels:  {info['n_levels']}")
    for lv in info["levels"]:
        click.echo(f"  {lv['path']:>4}: shape {_fmt(lv['shape'])} scale {_fmt(lv['scale'])}")
    if not info["labels"]:
        click.echo("labels:  none")
    for lab in info["labels"]:
        if "incomplete" in lab:
            click.echo(f"labels/{lab['name']}: INCOMPLETE ({lab['incomplete']})")
            continue
        click.echo(f"labels/{lab['name']}: dtype {lab['dtype']}, shape {_fmt(lab['shape'])}, "
                   f"chunks {_fmt(lab['chunks'])}, {lab['n_levels']} level(s)")

"""``vollseg-dask track`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vollseg_dask.cli import main
from vollseg_dask.config import save_config
from vollseg_dask.errors import ConfigError, StoreNotFoundError
from vollseg_dask.io.tracks import read_tracks
from vollseg_dask.tracking import TrackerConfig, lap_track
from vollseg_dask.tracking._testing import random_lineages


@pytest.fixture(scope="module")
def movie() -> pd.DataFrame:
    return random_lineages(12, 15, noise=0.1, division_rate=0.15, min_cycle=4, seed=5).spots.drop(
        columns="cell"
    )


def _edges(path: Path) -> list[tuple[int, int, str]]:
    e = read_tracks(path).edges
    return sorted(zip(e["source_spot_id"], e["target_spot_id"], e["kind"].astype(str), strict=True))


def test_track_csv_with_trackmate_column_names(movie: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "spots.csv"
    movie.rename(
        columns={"t": "FRAME", "x": "POSITION_X", "y": "POSITION_Y", "z": "POSITION_Z", "spot_id": "ID"}
    ).to_csv(csv, index=False)
    cfg = TrackerConfig(linking_max_distance=5.0, allow_track_splitting=True, splitting_max_distance=6.0)
    save_config(cfg, tmp_path / "tracker.yaml")
    res = CliRunner().invoke(
        main,
        [
            "track",
            str(csv),
            "--out",
            str(tmp_path / "tracks"),
            "--config",
            str(tmp_path / "tracker.yaml"),
            "--no-progress",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["spots"] == len(movie) and summary["edges"]["split"] > 0
    ref = lap_track(movie, cfg)
    assert _edges(tmp_path / "tracks") == sorted(
        zip(ref["source_spot_id"], ref["target_spot_id"], ref["kind"], strict=True)
    )


def test_track_partitioned_parquet_and_overwrite(movie: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "table"
    for t, frame in movie.groupby("t"):
        (root / f"t={t}").mkdir(parents=True)
        frame.drop(columns="t").to_parquet(root / f"t={t}" / "part-0.parquet", index=False)
    out = tmp_path / "tracks"
    runner = CliRunner()
    res = runner.invoke(main, ["track", str(root), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "tracks" in res.output and out.is_dir()
    again = runner.invoke(main, ["track", str(root), "--out", str(out), "--no-progress"])
    assert again.exit_code != 0 and "exists" in str(again.exception)
    assert (
        runner.invoke(main, ["track", str(root), "--out", str(out), "--overwrite", "--no-progress"]).exit_code
        == 0
    )


def test_bad_config_key_is_named(movie: pd.DataFrame, tmp_path: Path) -> None:
    csv = tmp_path / "spots.csv"
    movie.to_csv(csv, index=False)
    (tmp_path / "bad.yaml").write_text("linking_max_distanse: 3\n")
    res = CliRunner().invoke(
        main, ["track", str(csv), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "bad.yaml")]
    )
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError) and "linking_max_distanse" in str(res.exception)
    assert not (tmp_path / "o").exists()


def test_unknown_table_format(tmp_path: Path) -> None:
    bad = tmp_path / "spots.txt"
    bad.write_text("nothing")
    res = CliRunner().invoke(main, ["track", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and ".csv" in str(res.exception)
    missing = CliRunner().invoke(main, ["track", str(tmp_path / "table"), "--out", str(tmp_path / "o")])
    assert missing.exit_code != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["track", str(empty), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, StoreNotFoundError)


@pytest.mark.realdata
def test_track_trackmate_xml_uses_its_settings(shared_data: Path, tmp_path: Path) -> None:
    xml = shared_data / "trackmate_xml" / "laptrack" / "trackmate_tracks_with_splitting_merging.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is absent")
    res = CliRunner().invoke(main, ["track", str(xml), "--out", str(tmp_path / "tracks"), "--no-progress"])
    assert res.exit_code == 0, res.output
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    tm = read_trackmate_xml(xml)
    data = read_tracks(tmp_path / "tracks")
    ours = set(zip(data.edges["source_spot_id"], data.edges["target_spot_id"], strict=True))
    assert ours == set(zip(tm.edges["source_spot_id"], tm.edges["target_spot_id"], strict=True))
    assert data.ndim == 2 and np.all(data.spots["z"] == 0)
    assert data.tracker_config["allow_track_merging"] is True

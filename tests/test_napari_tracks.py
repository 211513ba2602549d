"""napari tracks-layer data: shape, (id, t) order, lineage graph; the .npz file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.io.napari_tracks import read_napari_tracks, write_napari_tracks
from vollseg_dask.io.tracks import TrackData
from vollseg_dask.tracking.napari import napari_graph, to_napari_tracks


def _lineage(ndim: int = 3) -> TrackData:
    """Known lineage (spot IDs shuffled on purpose):

    M (t0-1) divides into D1 (t2-3) and D2 (t2-4); D1 divides into G1 (t4) and G2 (t4-5);
    an unrelated track U (t0, t2: gap) and an unlinked spot X (t1).
    """
    rows = [
        # spot_id, t, x, y, z, label
        (90, 0, 1.0, 2.0, 3.0, 1), (17, 1, 1.5, 2.5, 3.0, 1),                                 # M
        (55, 2, 4.0, 4.0, 3.0, 2), (33, 3, 4.5, 4.5, 3.5, 2),                                 # D1
        (12, 2, 0.0, 0.0, 2.0, 3), (70, 3, 0.0, -0.5, 2.0, 3), (71, 4, 0.0, -1.0, 2.0, 3),   # D2
        (8, 4, 6.0, 6.0, 4.0, 4),                                                            # G1
        (60, 4, 5.0, 7.0, 4.0, 5), (61, 5, 5.0, 7.5, 4.0, 5),                                # G2
        (40, 0, 20.0, 20.0, 1.0, 9), (41, 2, 21.0, 21.0, 1.0, 9),                            # U
        (99, 1, 50.0, 50.0, 0.0, 7),                                                         # X
    ]
    spots = pd.DataFrame(rows, columns=["spot_id", "t", "x", "y", "z", "label"])
    if ndim == 2:
        spots["z"] = 0.0
    spots["volume_um3"] = np.arange(len(spots), dtype=float) + 10
    edges = pd.DataFrame({
        "source_spot_id": [90, 17, 55, 17, 12, 70, 33, 33, 60, 40],
        "target_spot_id": [17, 55, 33, 12, 70, 71, 8, 60, 61, 41],
    })
    return TrackData(spots=spots, edges=edges, ndim=ndim)


def _tracklet_of(data: tuple, spot_id: int) -> int:
    arr, props, _ = data
    return int(arr[np.flatnonzero(props["spot_id"] == spot_id)[0], 0])


def test_shape_order_and_graph_of_known_lineage() -> None:
    out = to_napari_tracks(_lineage())
    arr, props, graph = out
    assert arr.shape == (12, 5)  # the unlinked spot is left out
    assert arr.dtype == np.float64
    # sorted by (track id, t), as napari requires
    order = np.lexsort((arr[:, 1], arr[:, 0]))
    assert np.array_equal(order, np.arange(len(arr)))
    for k, v in props.items():
        assert len(v) == len(arr), k
    m, d1, d2, g1, g2, u = (_tracklet_of(out, s) for s in (90, 55, 12, 8, 60, 40))
    assert len({m, d1, d2, g1, g2, u}) == 6
    assert _tracklet_of(out, 17) == m and _tracklet_of(out, 71) == d2 and _tracklet_of(out, 41) == u
    assert graph == {d1: [m], d2: [m], g1: [d1], g2: [d1]}
    # columns t, z, y, x of a known spot
    row = arr[np.flatnonzero(props["spot_id"] == 33)[0]]
    assert row[1:].tolist() == [3.0, 3.5, 4.5, 4.5]
    assert set(props) >= {"spot_id", "track_id", "tracklet_id", "t", "label", "volume_um3"}
    assert not {"x", "y", "z"} & set(props)
    # one lineage = one track_id for M, D1, D2, G1, G2; U is another
    tid = dict(zip(props["spot_id"].tolist(), props["track_id"].tolist(), strict=True))
    assert len({tid[s] for s in (90, 55, 12, 8, 60)}) == 1 and tid[40] != tid[90]


def test_2d_voxel_size_unlinked_and_property_choice() -> None:
    arr, props, graph = to_napari_tracks(_lineage(ndim=2), voxel_size=(0.5, 2.0), include_unlinked=True,
                                         properties=["volume_um3"])
    assert arr.shape == (13, 4)
    row = arr[np.flatnonzero(props["spot_id"] == 33)[0]]
    assert row.tolist()[1:] == [3.0, 4.5 / 0.5, 4.5 / 2.0]
    x_row = np.flatnonzero(props["spot_id"] == 99)[0]
    assert arr[x_row, 0] == arr[:, 0].max() and np.sum(arr[:, 0] == arr[x_row, 0]) == 1
    assert set(props) == {"spot_id", "track_id", "tracklet_id", "t", "volume_um3"}
    assert len(graph) == 4
    with pytest.raises(InvalidDataError, match="voxel_size must be 2"):
        to_napari_tracks(_lineage(ndim=2), voxel_size=(1.0, 1.0, 1.0))
    with pytest.raises(InvalidDataError, match="unknown property"):
        to_napari_tracks(_lineage(), properties=["nope"])


def test_merge_gives_two_parents() -> None:
    spots = pd.DataFrame({"spot_id": [1, 2, 3, 4], "t": [0, 0, 1, 2], "x": [0.0, 2.0, 1.0, 1.0], "y": 0.0, "z": 0.0})
    edges = pd.DataFrame({"source_spot_id": [1, 2, 3], "target_spot_id": [3, 3, 4]})
    data = TrackData(spots=spots, edges=edges)
    arr, props, graph = to_napari_tracks(data)
    a, b, c = (int(arr[np.flatnonzero(props["spot_id"] == s)[0], 0]) for s in (1, 2, 3))
    assert graph == {c: sorted([a, b])} == napari_graph(data)
    assert int(arr[np.flatnonzero(props["spot_id"] == 4)[0], 0]) == c


def test_graph_matches_ctc_ground_truth_lineage(shared_data: Path) -> None:
    from vollseg_dask.io.ctc import read_ctc

    folder = shared_data / "ctc" / "fluo_n2dh_sim_tra" / "fluo_simulated" / "TRA"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    gt = read_ctc(folder)
    arr, props, graph = to_napari_tracks(gt.to_track_data())
    expected = {int(r.label): [int(r.parent)] for r in gt.tracks.itertuples() if r.parent != 0}
    assert graph == expected
    assert arr.shape == (int((gt.tracks["end"] - gt.tracks["begin"] + 1).sum()), 4)
    assert set(np.unique(arr[:, 0]).astype(int)) == set(gt.tracks["label"])


def test_npz_round_trip(tmp_path: Path) -> None:
    arr, props, graph = to_napari_tracks(_lineage())
    p = write_napari_tracks(tmp_path / "tracks.npz", arr, props, graph)
    arr2, props2, graph2 = read_napari_tracks(p)
    assert np.array_equal(arr, arr2) and graph2 == graph
    assert set(props2) == set(props)
    for k in props:
        assert np.array_equal(props[k], props2[k]) and props2[k].dtype == props[k].dtype
    with pytest.raises(ShapeError):
        write_napari_tracks(tmp_path / "bad.npz", arr[:, :3], props, graph)
    with pytest.raises(ShapeError, match="property 'spot_id'"):
        write_napari_tracks(tmp_path / "bad.npz", arr, {"spot_id": props["spot_id"][:-1]}, graph)
    assert not (tmp_path / "bad.npz").exists()


def test_no_napari_import() -> None:
    """Building napari data (and every track format) never imports napari."""
    code = (
        "import sys, pandas as pd\n"
        "import vollseg_dask, vollseg_dask.io.trackmate_xml, vollseg_dask.io.ctc\n"
        "from vollseg_dask.tracking.napari import to_napari_tracks\n"
        "from vollseg_dask.io.tracks import TrackData\n"
        "to_napari_tracks(TrackData(spots=pd.DataFrame({'spot_id': [1], 't': [0], 'x': [0.0], 'y': [0.0], 'z': [0.0]})))\n"
        "assert 'napari' not in sys.modules, 'napari was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_napari_accepts_the_data() -> None:
    """When napari is installed, its Tracks layer takes our data, properties and graph as they are."""
    layers = pytest.importorskip("napari.layers", reason="napari not installed (optional extra 'napari')")
    arr, props, graph = to_napari_tracks(_lineage())
    layer = layers.Tracks(arr, properties=props, graph=graph)
    assert layer.graph == graph

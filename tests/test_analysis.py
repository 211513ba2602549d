"""Track analysis (S9): known answers for spectra, boundary distance, divisions, MSD; plots; CLI;
the real BTrackMate file of NapaTrackMater."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.analysis import (
    DISTANCE_COLUMN,
    add_boundary_distance,
    amplitude_spectrum,
    analyze_tracks,
    classify_tracks,
    division_events,
    intensity_spectrum,
    load_track_data,
    mean_squared_displacement,
    moving_average,
    normalize_signal,
    resample_to_frames,
    run_analysis,
    select_track,
    step_speeds,
    tracklet_lineage,
    write_analysis,
)
from vollseg_dask.errors import InvalidDataError, StoreExistsError
from vollseg_dask.io.tracks import TrackData, read_tracks, write_tracks

# ------------------------------------------------------------------------------------------------
# Intensity spectrum
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freq", "dt", "n", "window"),
    [
        (0.11, 1.0, 64, None),  # 1/frame
        (0.013, 5.0, 100, None),  # 1/s with a 5 s frame interval
        (0.31, 0.5, 41, None),  # odd length
        (0.004, 10.0, 150, 3),  # slow oscillation, smoothed
        (1.7, 0.1, 90, None),  # fast oscillation, 0.1 min frames
    ],
)
def test_dominant_frequency_of_noisy_sinusoid_within_one_bin(
    freq: float, dt: float, n: int, window: int | None, rng: np.random.Generator
) -> None:
    for _ in range(5):
        t = np.arange(n) + int(rng.integers(0, 20))
        phase = rng.uniform(0, 2 * np.pi)
        signal = 1e5 + 2e4 * np.sin(2 * np.pi * freq * t * dt + phase) + rng.normal(0, 6e3, n)
        spec = intensity_spectrum(t, signal, dt, moving_average_window=window)
        resolution = 1.0 / (n * dt)
        assert spec.resolution == pytest.approx(resolution)
        assert abs(spec.dominant_frequency - freq) <= resolution, (spec.dominant_frequency, freq, resolution)
        assert spec.frequency[1] == pytest.approx(resolution)


def test_dominant_frequency_with_missing_frames(rng: np.random.Generator) -> None:
    n, dt, freq = 80, 2.0, 0.05
    t = np.arange(n)
    keep = np.ones(n, bool)
    keep[rng.choice(np.arange(1, n - 1), 10, replace=False)] = False  # gap-closed frames
    values = 50 + 10 * np.cos(2 * np.pi * freq * t * dt) + rng.normal(0, 2, n)
    spec = intensity_spectrum(t[keep], values[keep], dt)
    assert len(spec.frames) == n
    assert abs(spec.dominant_frequency - freq) <= 1 / (n * dt)


def test_amplitude_spectrum_scaling_and_frequencies() -> None:
    n, dt = 48, 0.25
    k = 6  # an exact bin
    t = np.arange(n) * dt
    x = 3.0 + 2.5 * np.sin(2 * np.pi * k / (n * dt) * t)
    f, amp = amplitude_spectrum(x, dt)
    np.testing.assert_allclose(f, np.arange(n // 2 + 1) / (n * dt))
    assert amp[0] == pytest.approx(3.0)
    assert amp[k] == pytest.approx(2.5)
    others = np.delete(amp, [0, k])
    assert np.all(others < 1e-9)


def test_normalisations_and_moving_average(rng: np.random.Generator) -> None:
    x = rng.normal(10, 3, 37)
    z = normalize_signal(x, "zscore")
    assert z.mean() == pytest.approx(0, abs=1e-12) and z.std() == pytest.approx(1)
    m = normalize_signal(x, "max")
    assert np.abs(m).max() == pytest.approx(1) and m.mean() == pytest.approx(0, abs=1e-12)
    np.testing.assert_array_equal(normalize_signal(x, "none"), x)
    assert np.all(normalize_signal(np.full(5, 7.0)) == 0)
    for w in (1, 2, 3, 4, 7):
        got = moving_average(x, w)
        before, after = w // 2, w - 1 - w // 2
        ref = np.array([x[max(0, i - before) : i + after + 1].mean() for i in range(len(x))])
        np.testing.assert_allclose(got, ref)
    with pytest.raises(InvalidDataError, match="zscore"):
        normalize_signal(x, "std")
    with pytest.raises(InvalidDataError, match="0"):
        moving_average(x, 0)


def test_resample_to_frames_interpolates_gaps() -> None:
    frames, v = resample_to_frames([5, 7, 8], [1.0, 3.0, 10.0])
    np.testing.assert_array_equal(frames, [5, 6, 7, 8])
    np.testing.assert_allclose(v, [1, 2, 3, 10])
    with pytest.raises(InvalidDataError, match="frame 7"):
        resample_to_frames([5, 7, 7], [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------------------------
# Hand-built lineage
# ------------------------------------------------------------------------------------------------


def _lineage() -> TrackData:
    """Known lineage.

    Track A: M (t0-2) divides at t2 into D1 (t3-5) and D2 (t3-4); D1 divides at t5 into G1 (t6-7)
    and G2 (t6). Track B: non-dividing, t0-6 with a gap at t3. Track C: non-dividing, t4-7.
    Spot U (t1) is unlinked.
    """
    rows = []
    sid = 100

    def chain(ts: list[int], x0: float) -> list[int]:
        nonlocal sid
        ids = []
        for t in ts:
            rows.append((sid, t, x0 + t, 2.0 * t, 1.0))
            ids.append(sid)
            sid += 1
        return ids

    m = chain([0, 1, 2], 0.0)
    d1 = chain([3, 4, 5], 10.0)
    d2 = chain([3, 4], 20.0)
    g1 = chain([6, 7], 30.0)
    g2 = chain([6], 40.0)
    b = chain([0, 1, 2, 4, 5, 6], 50.0)
    c = chain([4, 5, 6, 7], 60.0)
    u = chain([1], 70.0)
    edges = []
    for ch in (m, d1, d2, g1, b, c):
        edges += list(zip(ch[:-1], ch[1:], strict=True))
    edges += [(m[-1], d1[0]), (m[-1], d2[0]), (d1[-1], g1[0]), (d1[-1], g2[0])]
    spots = pd.DataFrame(rows, columns=["spot_id", "t", "x", "y", "z"])
    spots["total_intensity_c0"] = 100.0 + spots["t"]
    e = pd.DataFrame(edges, columns=["source_spot_id", "target_spot_id"])
    data = TrackData(spots=spots, edges=e, frame_interval=2.0, time_units="min")
    data.extra_ids = {"M": m, "D1": d1, "D2": d2, "G1": g1, "G2": g2, "B": b, "C": c, "U": u}  # type: ignore[attr-defined]
    return data


def test_division_classes_match_ground_truth() -> None:
    data = _lineage()
    ids = data.extra_ids  # type: ignore[attr-defined]
    a = analyze_tracks(data)
    spots = a.timeseries.set_index("spot_id")
    track_of = {k: int(spots.loc[v[0], "track_id"]) for k, v in ids.items() if k != "U"}
    tracklet_of = {k: int(spots.loc[v[0], "tracklet_id"]) for k, v in ids.items() if k != "U"}
    assert ids["U"][0] not in spots.index  # unlinked spots are not in the time series
    tr = a.tracks.set_index("track_id")
    assert tr.loc[track_of["M"], "track_class"] == "dividing"
    assert tr.loc[track_of["M"], "n_divisions"] == 2
    assert tr.loc[track_of["M"], "n_tracklets"] == 5
    for k in ("B", "C"):
        assert tr.loc[track_of[k], "track_class"] == "non-dividing"
        assert tr.loc[track_of[k], "n_divisions"] == 0
    assert len(a.tracks) == 3 and int(a.tracks["dividing"].sum()) == 1

    dv = a.divisions
    assert dv["t"].tolist() == [2, 5]
    assert dv["mother_spot_id"].tolist() == [ids["M"][-1], ids["D1"][-1]]
    assert dv["mother_tracklet_id"].tolist() == [tracklet_of["M"], tracklet_of["D1"]]
    assert dv["daughter_tracklet_ids"].iloc[0] == ";".join(
        str(v) for v in sorted([tracklet_of["D1"], tracklet_of["D2"]])
    )
    assert dv["n_daughters"].tolist() == [2, 2]

    tl = a.tracklets.set_index("tracklet_id")
    expect = {
        "M": ("mother", 0, False),
        "D1": ("mother", 1, True),
        "D2": ("daughter", 1, True),
        "G1": ("daughter", 2, True),
        "G2": ("daughter", 2, True),
        "B": ("root", 0, False),
        "C": ("root", 0, False),
    }
    for k, (role, gen, is_d) in expect.items():
        row = tl.loc[tracklet_of[k]]
        assert (row["role"], int(row["generation"]), bool(row["is_daughter"])) == (role, gen, is_d), k
    # B has a gap: one tracklet from t0 to t6 with 6 spots
    assert tl.loc[tracklet_of["B"], ["start_t", "end_t", "n_spots"]].tolist() == [0, 6, 6]

    pf = a.per_frame.set_index("t")
    assert pf["n_divisions"].to_dict() == {0: 0, 1: 0, 2: 1, 3: 0, 4: 0, 5: 1, 6: 0, 7: 0}
    assert pf.loc[1, "n_cells"] == 3 and pf.loc[1, "n_tracked"] == 2  # M, B and unlinked U
    assert pf.loc[6, "n_cells"] == 4  # G1, G2, B, C


def test_lineage_kernels_directly() -> None:
    data = _lineage()
    from vollseg_dask.io.tracks import with_lineage

    data = with_lineage(data)
    ev = division_events(data.spots, data.edges)
    cls = classify_tracks(data.spots, ev)
    assert cls["n_divisions"].sort_values().tolist() == [0, 0, 2]
    roles = tracklet_lineage(data.tracklets, ev)
    assert sorted(roles["role"].tolist()) == ["daughter"] * 3 + ["mother"] * 2 + ["root"] * 2
    assert division_events(data.spots, data.edges.iloc[0:0]).empty


def test_select_track_keeps_one_lineage() -> None:
    data = _lineage()
    a = analyze_tracks(data)
    tid = int(a.tracks.loc[a.tracks["dividing"], "track_id"].iloc[0])
    one = select_track(data, tid)
    assert set(one.spots["track_id"]) == {tid}
    b = analyze_tracks(one)
    assert len(b.divisions) == 2
    pd.testing.assert_frame_equal(
        b.tracklets.reset_index(drop=True),
        a.tracklets[a.tracklets["track_id"] == tid].reset_index(drop=True),
    )
    with pytest.raises(InvalidDataError, match="track 999"):
        select_track(data, 999)


# ------------------------------------------------------------------------------------------------
# Motion
# ------------------------------------------------------------------------------------------------


def _straight(n: int, v: np.ndarray, dt: float, t0: int = 0, drop: tuple[int, ...] = ()) -> TrackData:
    t = np.array([i for i in range(n) if i not in drop]) + t0
    p0 = np.array([3.0, -2.0, 5.0])
    xyz = p0 + np.outer((t - t0) * dt, v)
    spots = pd.DataFrame(
        {"spot_id": np.arange(len(t)) + 1, "t": t, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    )
    e = pd.DataFrame(
        {
            "source_spot_id": spots["spot_id"].to_numpy()[:-1],
            "target_spot_id": spots["spot_id"].to_numpy()[1:],
        }
    )
    return TrackData(spots=spots, edges=e, frame_interval=dt)


@pytest.mark.parametrize("drop", [(), (4, 9)])
def test_msd_of_constant_velocity_path_is_v_tau_squared(drop: tuple[int, ...]) -> None:
    v = np.array([0.3, -0.4, 1.2])  # µm / s, |v| = 1.3
    dt = 2.5
    data = _straight(20, v, dt, t0=3, drop=drop)
    speed = float(np.linalg.norm(v))
    a = analyze_tracks(data, max_lag=12)
    msd = a.msd
    np.testing.assert_allclose(msd["lag_time"], msd["lag"] * dt)
    np.testing.assert_allclose(msd["msd"], (speed * msd["lag_time"]) ** 2, rtol=1e-12)
    np.testing.assert_allclose(a.msd_tracks["msd"], (speed * a.msd_tracks["lag_time"]) ** 2, rtol=1e-12)
    assert msd["lag"].max() == 12
    if not drop:
        assert msd["n_pairs"].tolist() == [20 - k for k in range(1, 13)]
    # speeds and displacement of a straight path
    np.testing.assert_allclose(a.timeseries["speed"].dropna(), speed)
    tl = a.tracklets.iloc[0]
    assert tl["displacement"] == pytest.approx(speed * 19 * dt)
    assert tl["path_length"] == pytest.approx(speed * 19 * dt)
    # the kernel agrees
    s = data.spots
    lag_time, m, c = mean_squared_displacement(s["t"], s[["x", "y", "z"]], dt, max_lag=12)
    np.testing.assert_allclose(m, (speed * lag_time) ** 2, rtol=1e-12)


def test_msd_matches_brute_force_on_random_walk(rng: np.random.Generator) -> None:
    t = np.sort(rng.choice(np.arange(40), 30, replace=False))
    xyz = np.cumsum(rng.normal(size=(30, 3)), axis=0)
    lag_time, msd, counts = mean_squared_displacement(t, xyz, 1.5)
    for k in range(1, t.max() - t.min() + 1):
        pairs = [(i, j) for i in range(30) for j in range(30) if t[j] - t[i] == k]
        if pairs:
            ref = np.mean([np.sum((xyz[j] - xyz[i]) ** 2) for i, j in pairs])
            assert msd[k - 1] == pytest.approx(ref) and counts[k - 1] == len(pairs)
        else:
            assert np.isnan(msd[k - 1]) and counts[k - 1] == 0
    sp = step_speeds(t, xyz, 1.5)
    assert np.isnan(sp[0])
    np.testing.assert_allclose(sp[1:], np.linalg.norm(np.diff(xyz, axis=0), axis=1) / (np.diff(t) * 1.5))


def test_msd_pools_tracklets_of_a_track_and_of_a_class() -> None:
    a = analyze_tracks(_lineage())
    m = a.msd.groupby("lag").agg(s=("msd", lambda x: 0), n=("n_pairs", "sum"))
    # pooled MSD = sum(msd * n) / sum(n) over tracklets, per track and per class
    w = a.msd.assign(w=a.msd["msd"] * a.msd["n_pairs"])
    by_track = w.groupby(["track_id", "lag"]).agg(w=("w", "sum"), n=("n_pairs", "sum"))
    got = a.msd_tracks.set_index(["track_id", "lag"])
    np.testing.assert_allclose(got["msd"], (by_track["w"] / by_track["n"]).reindex(got.index))
    assert int(a.msd_classes["n_pairs"].sum()) == int(m["n"].sum())


# ------------------------------------------------------------------------------------------------
# Distance to the tissue boundary
# ------------------------------------------------------------------------------------------------


def test_boundary_distance_of_radial_motion_in_a_sphere() -> None:
    vs = np.array([1.0, 0.5, 0.5])  # anisotropic voxels (z, y, x), µm
    shape = (26, 52, 52)
    centre = np.array([12.5, 12.7, 12.4])  # µm, not on a voxel centre
    R = 11.0
    zz, yy, xx = np.meshgrid(*(np.arange(s) * v for s, v in zip(shape, vs, strict=True)), indexing="ij")
    mask = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= R**2
    direction = np.array([0.3, -0.5, 0.81])
    direction /= np.linalg.norm(direction)
    n = 12
    r = 0.5 + 0.8 * np.arange(n)  # µm from the centre, moving outwards
    zyx = centre + np.outer(r, direction)
    spots = pd.DataFrame(
        {"spot_id": np.arange(n) + 1, "t": np.arange(n), "x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0]}
    )
    static = add_boundary_distance(spots, mask, vs)
    per_frame = add_boundary_distance(spots, np.repeat(mask[None], n, axis=0), vs)
    np.testing.assert_array_equal(static[DISTANCE_COLUMN], per_frame[DISTANCE_COLUMN])
    exact = R - r
    # sampling at the nearest voxel and measuring to the nearest background voxel centre: the error is
    # bounded by one voxel diagonal
    tol = float(np.linalg.norm(vs))
    np.testing.assert_allclose(static[DISTANCE_COLUMN], exact, atol=tol)
    assert np.all(np.diff(static[DISTANCE_COLUMN]) < 0)  # moving outwards, the distance shrinks

    e = pd.DataFrame(
        {
            "source_spot_id": spots["spot_id"][:-1].to_numpy(),
            "target_spot_id": spots["spot_id"][1:].to_numpy(),
        }
    )
    a = analyze_tracks(TrackData(spots=static, edges=e, frame_interval=3.0))
    assert a.has_distance
    curve = a.timeseries.sort_values("t")
    np.testing.assert_allclose(curve[DISTANCE_COLUMN], static[DISTANCE_COLUMN])
    np.testing.assert_allclose(curve["time"], np.arange(n) * 3.0)
    tl = a.tracklets.iloc[0]
    assert tl["start_distance_um"] == pytest.approx(static[DISTANCE_COLUMN].iloc[0])
    assert tl["end_distance_um"] == pytest.approx(static[DISTANCE_COLUMN].iloc[-1])
    assert abs(tl["start_distance_um"] - exact[0]) <= tol and abs(tl["end_distance_um"] - exact[-1]) <= tol
    # a cell outside the tissue gets a negative distance
    out = add_boundary_distance(spots.assign(x=spots["x"] + 30), mask, vs)
    assert (out[DISTANCE_COLUMN].iloc[-3:] < 0).all()


# ------------------------------------------------------------------------------------------------
# Plots, files, CLI
# ------------------------------------------------------------------------------------------------


def _with_distance(data: TrackData) -> TrackData:
    s = data.spots.copy()
    s[DISTANCE_COLUMN] = 20.0 - 0.5 * s["x"] / 10 - s["t"]
    return TrackData(
        spots=s, edges=data.edges, frame_interval=data.frame_interval, time_units=data.time_units
    )


def _is_not_blank(path: Path) -> None:
    from matplotlib.image import imread

    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape
    flat = img.reshape(-1, img.shape[-1])
    assert len(np.unique(flat[:, :3], axis=0)) > 10, path  # not one colour
    assert (flat[:, :3] < 0.5).mean() > 0.002, path  # something dark is drawn on the white page


def test_plots_are_written_and_not_blank(tmp_path: Path) -> None:
    a = analyze_tracks(_with_distance(_lineage()), moving_average=2)
    out = write_analysis(a, tmp_path / "ana", formats=["png"], track_plots=1, dpi=50)
    for stem in ("track_lengths", "divisions_per_frame", "cells_per_frame", "distance_to_boundary", "msd"):
        _is_not_blank(out / "plots" / f"{stem}.png")
    tid = int(a.tracks.loc[a.tracks["dividing"], "track_id"].iloc[0])
    for kind in ("intensity", "distance"):
        _is_not_blank(out / "plots" / "tracks" / f"track_{tid}_{kind}.png")
    assert len(list((out / "plots" / "tracks").glob("*.png"))) == 2
    for name in ("tracks", "tracklets", "divisions", "msd", "spectra", "timeseries"):
        pq = pd.read_parquet(out / "tables" / f"{name}.parquet")
        csv = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(pq) == len(csv) == len(a.table(name)) and len(pq) > 0
    svg = write_analysis(a, tmp_path / "svg", formats=["svg"], table_formats=["csv"], track_plots=0)
    text = (svg / "plots" / "distance_to_boundary.svg").read_text(encoding="utf-8")
    assert "<svg" in text[:2000] and text.count("<path") > 20
    assert not list((svg / "tables").glob("*.parquet"))
    settings = json.loads((out / "analysis.json").read_text())
    assert settings["n_divisions"] == 2 and settings["moving_average"] == 2
    with pytest.raises(StoreExistsError, match="ana"):
        write_analysis(a, out)
    write_analysis(a, out, formats=[], overwrite=True)
    assert not (out / "plots").exists()
    with pytest.raises(InvalidDataError, match="gif"):
        write_analysis(a, tmp_path / "x", formats=["gif"])
    assert not (tmp_path / "x").exists()


def test_plot_figures_hold_the_track_data() -> None:
    from vollseg_dask.analysis.plots import plot_track_distance, plot_track_intensity

    a = analyze_tracks(_with_distance(_lineage()))
    tid = int(a.tracks.loc[a.tracks["dividing"], "track_id"].iloc[0])
    fig = plot_track_distance(a, tid)
    lines = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("tracklet")]
    assert len(lines) == 5
    ys = np.concatenate([ln.get_ydata() for ln in lines])
    ref = a.timeseries.loc[a.timeseries["track_id"] == tid, DISTANCE_COLUMN].to_numpy()
    np.testing.assert_allclose(np.sort(ys), np.sort(ref))
    fig = plot_track_intensity(a, tid)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) >= 5


def _tracks_dir(tmp_path: Path) -> Path:
    return write_tracks(tmp_path / "tracks", _with_distance(_lineage()))


def test_cli_analyze(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    src = _tracks_dir(tmp_path)
    out = tmp_path / "analysis"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "analyze",
            str(src),
            "--out",
            str(out),
            "--frame-interval",
            "4",
            "--moving-average",
            "3",
            "--formats",
            "png",
            "--track-plots",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (
        summary["frame_interval"] == 4.0 and summary["n_divisions"] == 2 and summary["n_dividing_tracks"] == 1
    )
    assert summary["has_distance_to_boundary"] and summary["intensity_column"] == "total_intensity_c0"
    ts = pd.read_parquet(out / "tables" / "timeseries.parquet")
    np.testing.assert_allclose(ts["time"], ts["t"] * 4.0)
    assert (out / "plots" / "msd.png").is_file()
    res = runner.invoke(main, ["analyze", str(src), "--out", str(out)])
    assert res.exit_code != 0 and "exists" in str(res.exception or res.output)
    res = runner.invoke(
        main, ["analyze", str(src), "--out", str(tmp_path / "b"), "--intensity-column", "nope"]
    )
    assert res.exit_code != 0 and "nope" in str(res.exception)
    assert not (tmp_path / "b").exists()


def test_bad_settings_are_named() -> None:
    data = _lineage()
    with pytest.raises(InvalidDataError, match="median"):
        analyze_tracks(data, normalize="median")
    with pytest.raises(InvalidDataError, match="-1"):
        analyze_tracks(data, frame_interval=-1)
    with pytest.raises(InvalidDataError, match="0"):
        analyze_tracks(data, moving_average=0)


# ------------------------------------------------------------------------------------------------
# Real data: NapaTrackMater's BTrackMate file (3D+t, 11 splits)
# ------------------------------------------------------------------------------------------------


def test_real_btrackmate_tracks_have_eleven_divisions(shared_data: Path, tmp_path: Path) -> None:
    xml = shared_data / "trackmate_xml" / "napatrackmater" / "tracks.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is absent")
    data = load_track_data(xml)
    a = analyze_tracks(data, moving_average=3)
    assert len(a.divisions) == 11
    assert (a.divisions["n_daughters"] == 2).all()
    # independent count: split edges in the file come in pairs from one mother spot
    assert int((data.edges["kind"] == "split").sum()) == 22
    # classes agree with the track table derived by the XML converter
    mine = a.tracks.set_index("track_id")["n_divisions"]
    theirs = data.tracks.set_index("track_id")["n_divisions"].reindex(mine.index)
    np.testing.assert_array_equal(mine.to_numpy(), theirs.to_numpy())
    assert int(a.tracks["dividing"].sum()) == int((data.tracks["n_divisions"] > 0).sum())
    assert a.intensity_column == "TOTAL_INTENSITY_CH1" and not a.has_distance
    assert int(a.per_frame["n_divisions"].sum()) == 11 and int(a.per_frame["n_cells"].sum()) == 686
    # every daughter starts one frame after its mother's division
    tl = a.tracklets.set_index("tracklet_id")
    for _, d in a.divisions.iterrows():
        for dt in d["daughter_tracklet_ids"].split(";"):
            assert tl.loc[int(dt), "start_t"] == d["t"] + 1
            assert tl.loc[int(dt), "parent_tracklet_id"] == d["mother_tracklet_id"]
    ok = a.tracklets["n_spots"] >= 3
    f = a.tracklets.loc[ok, "dominant_frequency"]
    assert f.notna().all() and (f > 0).all() and (f <= 0.5).all()  # Nyquist at 1 frame
    out = run_analysis(xml, tmp_path / "real", formats=["png"], track_plots=1)
    assert len(out.divisions) == 11
    assert (tmp_path / "real" / "plots" / "divisions_per_frame.png").is_file()
    back = read_tracks(_tracks_dir(tmp_path))  # round trip through TRACKS_DIR keeps the analysis
    assert len(analyze_tracks(back).divisions) == 2

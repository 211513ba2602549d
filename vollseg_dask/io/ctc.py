"""Cell Tracking Challenge (CTC) format: ``res_track.txt`` / ``man_track.txt`` plus label masks.

A CTC folder holds one mask per frame (``mask000.tif`` for results, ``man_track000.tif`` for
ground truth; three digits, four from 1000 frames on) and a track file with one line ``L B E P``
per track: label ``L`` is present in every mask from frame ``B`` to frame ``E`` (inclusive), and
``P`` is the label of the parent track (0 for none), which must end before ``B``.

Mapping to :class:`~vollseg_dask.io.tracks.TrackData`: every tracklet (a division-free branch) is a
CTC track; a tracklet with missing frames (a closed gap) is cut at each gap, the later part getting
a new label whose parent is the part before it. CTC labels are numbered 1.. in order of
``(begin, tracklet_id, part)``. Merges cannot be written in CTC: a tracklet keeps one parent
(``tracklets.parent_tracklet_id``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, ShapeError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io.tracks import TrackData, with_lineage

__all__ = [
    "CTCData",
    "read_ctc",
    "read_ctc_tracks",
    "write_ctc",
    "ctc_tracks_from",
    "mask_name",
]

log = logging.getLogger(__name__)

_TRACK_FILES = ("res_track.txt", "man_track.txt", "tracks.txt")
_MASK_RE = re.compile(r"^(?:mask|man_track|man_seg)?(\d+)\.tiff?$")
_SLAB_BYTES = 64 * 2**20


def mask_name(t: int, n_frames: int, prefix: str = "mask") -> str:
    """CTC file name of frame ``t``: ``mask007.tif`` (four digits when there are ≥ 1000 frames)."""
    width = max(3, len(str(max(n_frames - 1, 0))))
    return f"{prefix}{t:0{width}d}.tif"


def read_ctc_tracks(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CTC track file (``L B E P`` per line).

    Returns
    -------
    pandas.DataFrame
        ``label``, ``begin``, ``end``, ``parent`` (int64), in file order.

    Raises
    ------
    StoreNotFoundError
        The file does not exist.
    InvalidDataError
        A line that is not four non-negative integers, a repeated label, ``end < begin``, or a
        parent that is not a label of the file.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"CTC track file not found: {p}")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise InvalidDataError(f"{p}:{i}: expected 4 integers 'L B E P', got {line!r}")
        try:
            vals = [int(x) for x in parts]
        except ValueError:
            raise InvalidDataError(f"{p}:{i}: expected 4 integers 'L B E P', got {line!r}") from None
        if min(vals) < 0 or vals[0] == 0:
            raise InvalidDataError(f"{p}:{i}: labels and frames must be ≥ 0 and L ≥ 1, got {line!r}")
        rows.append(vals)
    df = pd.DataFrame(rows, columns=["label", "begin", "end", "parent"], dtype=np.int64)
    if df["label"].duplicated().any():
        raise InvalidDataError(f"{p}: label {int(df.loc[df['label'].duplicated(), 'label'].iloc[0])} appears twice")
    bad = df[df["end"] < df["begin"]]
    if len(bad):
        raise InvalidDataError(f"{p}: track {int(bad['label'].iloc[0])} ends before it begins")
    orphans = df[(df["parent"] != 0) & ~df["parent"].isin(df["label"])]
    if len(orphans):
        raise InvalidDataError(
            f"{p}: track {int(orphans['label'].iloc[0])} names parent {int(orphans['parent'].iloc[0])}, which is not a track"
        )
    return df


@dataclass
class CTCData:
    """A CTC folder: its track table and (lazily read) masks.

    Attributes
    ----------
    folder : pathlib.Path
    tracks : pandas.DataFrame
        ``label``, ``begin``, ``end``, ``parent``.
    mask_paths : dict of int to pathlib.Path
        Frame → mask file.
    """

    folder: Path
    tracks: pd.DataFrame
    mask_paths: dict[int, Path]

    @property
    def n_frames(self) -> int:
        """Number of frames: one past the last mask (or the last track end without masks)."""
        if self.mask_paths:
            return max(self.mask_paths) + 1
        return int(self.tracks["end"].max()) + 1 if len(self.tracks) else 0

    def read_mask(self, t: int) -> np.ndarray:
        """Mask of frame ``t`` (2D ``(y, x)`` or 3D ``(z, y, x)``)."""
        import tifffile

        if t not in self.mask_paths:
            raise StoreNotFoundError(f"{self.folder}: no mask for frame {t}")
        return tifffile.imread(self.mask_paths[t])

    def iter_masks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t, mask)`` in frame order."""
        for t in sorted(self.mask_paths):
            yield t, self.read_mask(t)

    def to_track_data(
        self,
        *,
        voxel_size: tuple[float, ...] | None = None,
        frame_interval: float = 1.0,
        spatial_units: str = "pixel",
        time_units: str = "frame",
    ) -> TrackData:
        """Spots (mask centroids), edges and tracklets of this CTC folder.

        Each CTC track is one tracklet (``tracklet_id`` = CTC label) and each spot keeps its CTC
        label in ``label``; ``spot_id`` = ``t · 2³² + label``; ``track_id`` = the label of the
        lineage's root track. Consecutive observations of a track are joined (``link``, or ``gap``
        where the label is missing from frames inside ``[B, E]``); a child's first spot is joined
        to its parent's last spot (``split`` when the parent has several children, else ``link``
        or ``gap``).

        Parameters
        ----------
        voxel_size : tuple of float, optional
            ``(z, y, x)`` or ``(y, x)`` size of a voxel; centroids are multiplied by it. Default 1.
        frame_interval, spatial_units, time_units
            Stored in the result.

        Raises
        ------
        InvalidDataError
            A track that is never seen in any mask, or a mask of another dimensionality.
        """
        if not self.mask_paths:
            raise StoreNotFoundError(f"{self.folder}: no mask files, cannot compute spot positions")
        rows = []
        ndim = None
        for t, mask in self.iter_masks():
            if ndim is None:
                ndim = mask.ndim
                vs = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, np.float64)
                if vs.shape != (ndim,):
                    raise ShapeError(f"voxel_size {voxel_size!r} does not match {ndim}D masks")
            elif mask.ndim != ndim:
                raise InvalidDataError(f"{self.mask_paths[t]} is {mask.ndim}D, earlier masks are {ndim}D")
            cent = _centroids(mask)
            if cent is None:
                continue
            labels, counts, means = cent
            pos = means * vs
            zyx = pos if ndim == 3 else np.column_stack([np.zeros(len(labels)), pos])
            rows.append(pd.DataFrame({
                "spot_id": np.int64(t) * 2**32 + labels.astype(np.int64),
                "t": t, "x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0],
                "label": labels.astype(np.int64), "n_voxels": counts.astype(np.int64),
            }))
        spots = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
            {"spot_id": [], "t": [], "x": [], "y": [], "z": [], "label": [], "n_voxels": []})
        tr = self.tracks
        spots = spots[spots["label"].isin(tr["label"])].reset_index(drop=True)
        unknown = set(pd.concat(rows)["label"].tolist()) - set(tr["label"].tolist()) if rows else set()
        if unknown:
            log.warning("%s: mask labels %s are not in the track file (ignored)", self.folder, sorted(unknown)[:5])
        seen = spots.groupby("label")["t"].agg(["min", "max"])
        never = sorted(set(tr["label"].tolist()) - set(seen.index.tolist()))
        if never:
            raise InvalidDataError(f"{self.folder}: track {never[0]} is in the track file but in no mask")
        info = tr.set_index("label")
        outside = spots[(spots["t"] < info.loc[spots["label"], "begin"].to_numpy())
                        | (spots["t"] > info.loc[spots["label"], "end"].to_numpy())]
        if len(outside):
            r = outside.iloc[0]
            raise InvalidDataError(f"{self.folder}: label {int(r['label'])} is in mask {int(r['t'])}, outside its track's frames")

        # root of each lineage
        parent = info["parent"].to_dict()
        root: dict[int, int] = {}
        for lab in info.index.tolist():
            chain = [lab]
            while parent[chain[-1]] != 0 and chain[-1] not in root:
                chain.append(parent[chain[-1]])
                if len(chain) > len(parent) + 1:
                    raise InvalidDataError(f"{self.folder}: parent links of track {lab} form a cycle")
            r = root.get(chain[-1], chain[-1])
            for c in chain:
                root[c] = r
        spots["track_id"] = spots["label"].map(root).astype(np.int64)
        spots["tracklet_id"] = spots["label"]
        spots = spots.sort_values(["label", "t"], kind="stable").reset_index(drop=True)

        same = spots["label"].to_numpy()[1:] == spots["label"].to_numpy()[:-1]
        sid = spots["spot_id"].to_numpy()
        tt = spots["t"].to_numpy()
        within = pd.DataFrame({"source_spot_id": sid[:-1][same], "target_spot_id": sid[1:][same],
                               "kind": np.where(tt[1:][same] - tt[:-1][same] > 1, "gap", "link")})
        first = spots.groupby("label").head(1).set_index("label")
        last = spots.groupby("label").tail(1).set_index("label")
        children = tr[tr["parent"] != 0]
        n_children = children.groupby("parent").size()
        cross = pd.DataFrame({
            "source_spot_id": last.loc[children["parent"], "spot_id"].to_numpy(),
            "target_spot_id": first.loc[children["label"], "spot_id"].to_numpy(),
        })
        gap = first.loc[children["label"], "t"].to_numpy() - last.loc[children["parent"], "t"].to_numpy() > 1
        cross["kind"] = np.where(n_children.reindex(children["parent"]).to_numpy() >= 2, "split",
                                 np.where(gap, "gap", "link"))
        edges = pd.concat([within, cross], ignore_index=True)
        edges["cost"] = np.nan
        tracklets = pd.DataFrame({
            "tracklet_id": tr["label"].to_numpy(),
            "track_id": tr["label"].map(root).to_numpy(),
            "parent_tracklet_id": np.where(tr["parent"].to_numpy() == 0, -1, tr["parent"].to_numpy()),
            "start_t": seen.loc[tr["label"], "min"].to_numpy(),
            "end_t": seen.loc[tr["label"], "max"].to_numpy(),
            "n_spots": spots.groupby("label").size().loc[tr["label"]].to_numpy(),
        })
        from vollseg_dask.io.tracks import summarize_tracks

        return TrackData(
            spots=spots,
            edges=edges,
            tracks=summarize_tracks(spots, edges, frame_interval),
            tracklets=tracklets,
            spatial_units=spatial_units,
            time_units=time_units,
            frame_interval=frame_interval,
            ndim=int(ndim or 2),
        )


def _centroids(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Labels (> 0), voxel counts and mean coordinates (axis order of ``mask``)."""
    flat = mask.ravel()
    nz = np.flatnonzero(flat)
    if len(nz) == 0:
        return None
    lab = flat[nz]
    labels, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    coords = np.unravel_index(nz, mask.shape)
    means = np.column_stack([np.bincount(inv, weights=c, minlength=len(labels)) / counts for c in coords])
    return labels, counts, means


def read_ctc(folder: str | os.PathLike[str], *, track_file: str | None = None) -> CTCData:
    """Read a CTC result or ground-truth folder.

    Parameters
    ----------
    folder : path-like
        Holds the track file and ``mask*.tif`` / ``man_track*.tif`` / ``NNN.tif`` masks. A
        ground-truth sequence folder with a ``TRA`` subfolder is accepted too.
    track_file : str, optional
        Name of the track file; default the first of ``res_track.txt``, ``man_track.txt``,
        ``tracks.txt`` that exists.

    Raises
    ------
    StoreNotFoundError
        The folder or its track file is missing (the message lists what was looked for).
    """
    root = Path(folder)
    if not root.is_dir():
        raise StoreNotFoundError(f"CTC folder not found: {root}")
    if track_file is None and not any((root / n).is_file() for n in _TRACK_FILES) and (root / "TRA").is_dir():
        root = root / "TRA"
    names = (track_file,) if track_file else _TRACK_FILES
    found = next((root / n for n in names if (root / n).is_file()), None)
    if found is None:
        raise StoreNotFoundError(f"{root} holds none of the CTC track files {list(names)}")
    tracks = read_ctc_tracks(found)
    masks: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        m = _MASK_RE.match(p.name)
        if m and p.is_file():
            t = int(m.group(1))
            if t in masks:
                raise InvalidDataError(f"{root}: two mask files for frame {t}: {masks[t].name}, {p.name}")
            masks[t] = p
    return CTCData(folder=root, tracks=tracks, mask_paths=masks)


def ctc_tracks_from(data: TrackData, *, include_unlinked: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CTC track table of ``data`` and the CTC label of every spot (pure; no files).

    Parameters
    ----------
    data : TrackData
        Tracklets are derived from the edges when ``data`` has none.
    include_unlinked : bool
        Write spots without a tracklet (``tracklet_id`` −1) as one-frame tracks.

    Returns
    -------
    tracks : pandas.DataFrame
        ``label``, ``begin``, ``end``, ``parent`` sorted by label.
    spot_labels : pandas.DataFrame
        ``spot_id``, ``t``, ``label`` (the spot's segmentation label), ``ctc_label``.

    Raises
    ------
    InvalidDataError
        Two spots of one tracklet in the same frame.
    """
    data = with_lineage(data)
    spots = data.spots
    assert spots is not None
    s = spots[["spot_id", "t", "label", "tracklet_id"]].copy()
    if not include_unlinked:
        s = s[s["tracklet_id"] >= 0]
    s = s.sort_values(["tracklet_id", "t", "spot_id"], kind="stable").reset_index(drop=True)
    linked = s["tracklet_id"].to_numpy() >= 0
    tl = s["tracklet_id"].to_numpy()
    tt = s["t"].to_numpy().astype(np.int64)
    same_tl = np.zeros(len(s), bool)
    same_tl[1:] = (tl[1:] == tl[:-1]) & linked[1:]
    dup = same_tl & np.r_[False, tt[1:] == tt[:-1]]
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InvalidDataError(
            f"tracklet {int(tl[i])} has two spots in frame {int(tt[i])} "
            f"(spot_id {int(s['spot_id'].iat[i - 1])} and {int(s['spot_id'].iat[i])})"
        )
    new_part = ~same_tl | np.r_[False, tt[1:] - tt[:-1] > 1]
    part_id = np.cumsum(new_part) - 1  # one id per CTC track
    s["part"] = part_id
    parts = s.groupby("part").agg(begin=("t", "min"), end=("t", "max"), tracklet_id=("tracklet_id", "first"),
                                  first_spot=("spot_id", "min"))
    parts["unlinked"] = parts["tracklet_id"] < 0
    # order: begin, then tracklet (unlinked spots after linked ones of the same frame), then part
    parts["tl_key"] = np.where(parts["unlinked"], np.iinfo(np.int64).max, parts["tracklet_id"])
    parts = parts.sort_values(["begin", "tl_key", "first_spot"], kind="stable")
    parts["label"] = np.arange(1, len(parts) + 1, dtype=np.int64)
    parts = parts.sort_index()
    # parent: previous part of the same tracklet, else the last part of the parent tracklet
    prev_same = np.r_[False, (parts["tracklet_id"].to_numpy()[1:] == parts["tracklet_id"].to_numpy()[:-1])
                      & ~parts["unlinked"].to_numpy()[1:]]
    label = parts["label"].to_numpy()
    parent = np.zeros(len(parts), np.int64)
    parent[1:][prev_same[1:]] = label[:-1][prev_same[1:]]
    last_part = parts[~parts["unlinked"]].groupby("tracklet_id")["label"].last()
    assert data.tracklets is not None
    ptl = data.tracklets.set_index("tracklet_id")["parent_tracklet_id"]
    heads = ~prev_same & ~parts["unlinked"].to_numpy()
    head_parent_tl = ptl.reindex(parts["tracklet_id"].to_numpy()[heads]).fillna(-1).astype(np.int64).to_numpy()
    parent[heads] = last_part.reindex(head_parent_tl).fillna(0).astype(np.int64).to_numpy()
    tracks = pd.DataFrame({"label": label, "begin": parts["begin"].to_numpy().astype(np.int64),
                           "end": parts["end"].to_numpy().astype(np.int64), "parent": parent})
    ends = tracks.set_index("label")["end"]
    has_p = tracks["parent"] > 0
    late = tracks[has_p & (ends.reindex(tracks["parent"]).to_numpy() >= tracks["begin"].to_numpy())]
    if len(late):
        r = late.iloc[0]
        raise InvalidDataError(f"CTC track {int(r['label'])} begins at {int(r['begin'])}, before its parent ends")
    n_merges = int((data.edges["kind"] == "merge").sum())
    if n_merges:
        log.warning("%d merge edges cannot be written in CTC format: each tracklet keeps one parent", n_merges)
    spot_labels = pd.DataFrame({"spot_id": s["spot_id"].to_numpy(), "t": s["t"].to_numpy(),
                                "label": s["label"].to_numpy(), "ctc_label": parts.loc[s["part"], "label"].to_numpy()})
    return tracks.sort_values("label").reset_index(drop=True), spot_labels


def _relabel(block: np.ndarray, keys: np.ndarray, vals: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Map segmentation labels ``keys`` (sorted) to ``vals``; everything else to 0. Also returns the
    number of voxels found per key."""
    out = np.zeros(block.shape, dtype)
    if len(keys) == 0:
        return out, np.zeros(0, np.int64)
    idx = np.searchsorted(keys, block)
    idx_c = np.minimum(idx, len(keys) - 1)
    hit = keys[idx_c] == block
    out[hit] = vals[idx_c[hit]]
    return out, np.bincount(idx_c[hit].ravel(), minlength=len(keys))


def write_ctc(
    out_dir: str | os.PathLike[str],
    data: TrackData,
    labels: Any = None,
    *,
    include_unlinked: bool = True,
    overwrite: bool = False,
    track_file: str = "res_track.txt",
    mask_prefix: str = "mask",
) -> Path:
    """Write tracks in CTC format (atomically: written aside, then renamed into place).

    Parameters
    ----------
    out_dir : path-like
        Target folder (e.g. ``01_RES``).
    data : TrackData
        Tracks; tracklets are derived from the edges when missing.
    labels : array-like, optional
        Segmentation labels ``(t, z, y, x)`` or ``(t, y, x)`` (NumPy or Dask; read one frame, and
        within a frame one z-slab, at a time). Each spot's ``label`` names its object in frame
        ``t``. When given, ``mask000.tif``… are written for every frame of ``labels``, relabelled
        to the CTC track labels (objects of no spot become background), with the image's pixel
        size (``data.image``) as their TIFF resolution.
    include_unlinked : bool
        Write spots without tracklet as one-frame tracks.
    overwrite : bool
        Replace an existing ``out_dir``.
    track_file, mask_prefix : str
        ``res_track.txt`` and ``mask`` for results; ``man_track.txt`` and ``man_track`` for
        ground truth.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    StoreExistsError
        ``out_dir`` exists and ``overwrite`` is false.
    InvalidDataError
        Two spots of one tracklet in one frame; with ``labels``: a spot whose ``label`` is −1 or
        absent from its frame, two spots naming one object, a spot beyond the last frame, or
        non-integer labels.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass overwrite=True to replace it")
    tracks, spot_labels = ctc_tracks_from(data, include_unlinked=include_unlinked)
    if labels is not None:
        if not hasattr(labels, "shape") or len(labels.shape) not in (3, 4):
            raise ShapeError(f"labels must be (t, y, x) or (t, z, y, x), got shape {getattr(labels, 'shape', None)}")
        if np.dtype(labels.dtype).kind not in "iu":
            raise InvalidDataError(f"labels must be integers, got dtype {labels.dtype}")
        n_frames = int(labels.shape[0])
        unknown = spot_labels[spot_labels["label"] < 0]
        if len(unknown):
            raise InvalidDataError(f"spot {int(unknown['spot_id'].iat[0])} has label -1: cannot write its mask")
        beyond = spot_labels[spot_labels["t"] >= n_frames]
        if len(beyond):
            raise InvalidDataError(f"spot {int(beyond['spot_id'].iat[0])} is in frame {int(beyond['t'].iat[0])}, "
                                   f"but labels has {n_frames} frames")
        twice = spot_labels[spot_labels.duplicated(["t", "label"], keep=False)]
        if len(twice):
            raise InvalidDataError(f"spots {twice['spot_id'].tolist()[:2]} both name object {int(twice['label'].iat[0])} "
                                   f"in frame {int(twice['t'].iat[0])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / track_file, "w", encoding="utf-8") as fh:
            for r in tracks.itertuples(index=False):
                fh.write(f"{r.label} {r.begin} {r.end} {r.parent}\n")
        if labels is not None:
            _write_masks(tmp, labels, spot_labels, n_frames, mask_prefix, len(tracks), _tiff_calibration(data))
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tiff_calibration(data: TrackData) -> dict[str, Any]:
    """The image's pixel size, when the tracks know it, as TIFF resolution tags (pixels per cm)."""
    vs = (data.image or {}).get("voxel_size")
    if not vs or data.spatial_units != "µm":
        return {}
    return {"resolution": (1e4 / float(vs[-1]), 1e4 / float(vs[-2])), "resolutionunit": "CENTIMETER"}


def _write_masks(folder: Path, labels: Any, spot_labels: pd.DataFrame, n_frames: int, prefix: str,
                 n_tracks: int, calib: dict[str, Any]) -> None:
    import tifffile

    dtype = np.dtype(np.uint16 if n_tracks <= np.iinfo(np.uint16).max else np.uint32)
    if dtype != np.uint16:
        log.warning("%d CTC tracks exceed uint16: masks written as uint32", n_tracks)
    by_t = {int(t): g for t, g in spot_labels.groupby("t")}
    frame_shape = tuple(int(s) for s in labels.shape[1:])
    plane_bytes = int(np.prod(frame_shape[-2:])) * 8
    slab = max(1, _SLAB_BYTES // max(plane_bytes, 1))
    for t in range(n_frames):
        g = by_t.get(t)
        if g is None:
            keys = np.zeros(0, np.int64)
            vals = np.zeros(0, np.int64)
        else:
            g = g.sort_values("label")
            keys = g["label"].to_numpy(np.int64)
            vals = g["ctc_label"].to_numpy(np.int64)
        found = np.zeros(len(keys), np.int64)
        path = folder / mask_name(t, n_frames, prefix)
        if len(frame_shape) == 2:
            block = np.asarray(labels[t]).astype(np.int64, copy=False)
            img, cnt = _relabel(block, keys, vals, dtype)
            found += cnt if len(cnt) else 0
            tifffile.imwrite(path, img, photometric="minisblack", **calib)
        else:
            counts: list[np.ndarray] = []

            def planes(t: int = t, keys: np.ndarray = keys, vals: np.ndarray = vals,
                       counts: list[np.ndarray] = counts) -> Iterator[np.ndarray]:
                for z0 in range(0, frame_shape[0], slab):
                    block = np.asarray(labels[t, z0:z0 + slab]).astype(np.int64, copy=False)
                    img, cnt = _relabel(block, keys, vals, dtype)
                    counts.append(cnt)
                    yield from img

            tifffile.imwrite(path, data=planes(), shape=frame_shape, dtype=dtype, photometric="minisblack", **calib)
            for cnt in counts:
                if len(cnt):
                    found += cnt
        missing = np.flatnonzero(found == 0)
        if len(missing):
            sid = int(g.iloc[missing[0]]["spot_id"])  # type: ignore[union-attr]
            raise InvalidDataError(f"spot {sid}: object {int(keys[missing[0]])} is not in labels frame {t}")

"""Track structure from segments and segment links: tracklets, tracks, the minimum-length filter.

Pure kernels on small tables (one row per segment or piece, never per spot), so that the streaming
driver can decide the structure of a whole movie without holding its spots.

Definitions
-----------
*Segment*: a chain of frame-to-frame links (consecutive frames), from the first LAP step.

*Piece*: a segment cut where the second step attached something to its middle: after a mother
spot (the source of a split edge, cut between ``t_m`` and ``t_m + 1``) and before a merge target
(cut between ``t_b - 1`` and ``t_b``). A piece covers the frames ``start_t .. end_t`` of its
segment, one spot per frame.

*Piece graph*: consecutive pieces of a segment, gap edges (last piece of the source segment ->
first piece of the target segment), split edges (piece holding the mother -> first piece of the
daughter segment) and merge edges (last piece of the source segment -> piece starting at the
merge target).

*Tracklet*: a maximal chain of pieces joined by one-to-one piece edges (source out-degree 1 and
target in-degree 1): it ends at a division, before a merge, or at a track end; gap closing
continues it. This is :func:`vollseg_dask.io.tracks.derive_lineage`'s definition on spots.

*Track*: a connected component of the piece graph; a lone single-spot piece with no piece edge is
not a track (its spot is "unlinked").

Minimum tracklet length (``N``, BTrackMate's filter)
    A tracklet is a *short branch* when it starts right after a division (its first piece has one
    predecessor piece, whose out-degree is >= 2), ends at a track end without dividing or merging
    (no successor piece), and ``end_t - t_mother <= N``, where ``t_mother`` is the frame of the
    mother spot (so a daughter present in ``k`` consecutive frames after the division spans
    ``k`` frames). Every short branch is removed together (evaluated once, on the structure before
    removal): its spots become unlinked and its edges are dropped. Both daughters of a division can
    be removed; a removed branch's mother then just continues (or ends). ``N = 0`` disables it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from vollseg_dask.errors import TrackingError

__all__ = ["Lineage", "build_lineage", "locate_pieces", "number_lineage"]


@dataclass
class Lineage:
    """The piece graph of a movie and the decisions taken on it.

    Attributes
    ----------
    pieces : DataFrame
        One row per piece, sorted by ``(segment, start_t)``: ``segment``, ``start_t``, ``end_t``,
        ``n_spots``, ``removed`` (short branch), ``linked`` (belongs to a track),
        ``component`` (provisional track label, -1 if not linked), ``chain`` (provisional tracklet
        label, -1 if not linked).
    edges : DataFrame
        Kept piece edges ``src``, ``dst`` (piece row numbers) and ``kind`` in
        {"link", "gap", "split", "merge"} ("link" joins consecutive pieces of one segment).
    n_removed_branches : int
        Number of tracklets removed by the minimum-length filter.
    """

    pieces: pd.DataFrame
    edges: pd.DataFrame
    n_removed_branches: int


def _components(n: int, src: NDArray[np.intp], dst: NDArray[np.intp]) -> NDArray[np.intp]:
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.intp)


def locate_pieces(pieces: pd.DataFrame, segment: NDArray[np.int64], t: NDArray[np.int64]) -> NDArray[np.intp]:
    """Row of ``pieces`` holding each (segment, frame).

    Parameters
    ----------
    pieces : DataFrame
        ``segment``, ``start_t`` (sorted by segment then start_t, as in :class:`Lineage`).
    segment, t : ndarray of int, shape (k,)
        Segment and frame of ``k`` spots.
    """
    seg_p = pieces["segment"].to_numpy(np.int64)
    start_p = pieces["start_t"].to_numpy(np.int64)
    # Lexicographic search on (segment, start_t): the piece is the last one starting at or before t.
    span = int(max(start_p.max(initial=0), np.max(t, initial=0))) + 2
    key_p = seg_p * span + start_p
    key = np.asarray(segment, dtype=np.int64) * span + np.asarray(t, dtype=np.int64)
    row = np.searchsorted(key_p, key, side="right") - 1
    if row.size and (np.any(row < 0) or np.any(seg_p[row] != segment)):
        raise TrackingError("a spot's segment is not in the piece table")
    return row.astype(np.intp)


def build_lineage(
    segments: pd.DataFrame,
    segment_edges: pd.DataFrame,
    min_tracklet_length: int = 0,
) -> Lineage:
    """Cut segments into pieces, build the piece graph, apply the minimum-tracklet-length filter.

    Parameters
    ----------
    segments : DataFrame, one row per segment
        ``segment`` (int id, unique), ``start_t``, ``end_t`` (frames; the segment has one spot in
        each frame of ``start_t .. end_t``).
    segment_edges : DataFrame, one row per chosen segment link
        ``source_segment``, ``source_t``, ``target_segment``, ``target_t``, ``kind`` in
        {"gap", "split", "merge"}: a gap goes from the end of the source segment to the start of
        the target, a split from a middle spot (the mother, at ``source_t``) to the start of the
        target, a merge from the end of the source to a middle spot (at ``target_t``).
    min_tracklet_length : int
        ``N`` of the short-branch filter (module docstring); 0 disables it.

    Returns
    -------
    Lineage
    """
    if min_tracklet_length < 0:
        raise TrackingError(f"min_tracklet_length must be >= 0, got {min_tracklet_length}")
    seg_id = segments["segment"].to_numpy(np.int64)
    seg_start = segments["start_t"].to_numpy(np.int64)
    seg_end = segments["end_t"].to_numpy(np.int64)
    kinds = segment_edges["kind"].to_numpy(dtype=object) if len(segment_edges) else np.empty(0, object)
    s_seg = segment_edges["source_segment"].to_numpy(np.int64)
    s_t = segment_edges["source_t"].to_numpy(np.int64)
    g_seg = segment_edges["target_segment"].to_numpy(np.int64)
    g_t = segment_edges["target_t"].to_numpy(np.int64)

    # Piece starts: every segment start, one frame after each mother, at each merge target.
    is_split = kinds == "split"
    is_merge = kinds == "merge"
    cut_seg = np.concatenate([seg_id, s_seg[is_split], g_seg[is_merge]])
    cut_t = np.concatenate([seg_start, s_t[is_split] + 1, g_t[is_merge]])
    cuts = pd.DataFrame({"segment": cut_seg, "start_t": cut_t}).drop_duplicates()
    cuts = cuts.sort_values(["segment", "start_t"], kind="stable").reset_index(drop=True)
    end_of = pd.Series(seg_end, index=seg_id)
    seg_col = cuts["segment"].to_numpy(np.int64)
    start_col = cuts["start_t"].to_numpy(np.int64)
    last_in_seg = np.ones(len(cuts), dtype=bool)
    last_in_seg[:-1] = seg_col[1:] != seg_col[:-1]
    end_col = np.where(last_in_seg, end_of.reindex(seg_col).to_numpy(np.int64), np.roll(start_col, -1) - 1)
    pieces = pd.DataFrame({"segment": seg_col, "start_t": start_col, "end_t": end_col})
    pieces["n_spots"] = (pieces["end_t"] - pieces["start_t"] + 1).astype(np.int64)
    n = len(pieces)

    # Piece edges.
    within = np.flatnonzero(~last_in_seg)
    first_piece = pd.Series(np.arange(n), index=seg_col).groupby(level=0).min()
    last_piece = pd.Series(np.arange(n), index=seg_col).groupby(level=0).max()
    src_l = [within]
    dst_l = [within + 1]
    kind_l = [np.full(within.size, "link", dtype=object)]
    if len(segment_edges):
        is_gap = kinds == "gap"
        src_l.append(last_piece.reindex(s_seg[is_gap]).to_numpy(np.intp))
        dst_l.append(first_piece.reindex(g_seg[is_gap]).to_numpy(np.intp))
        kind_l.append(np.full(int(is_gap.sum()), "gap", dtype=object))
        src_l.append(locate_pieces(pieces, s_seg[is_split], s_t[is_split]))
        dst_l.append(first_piece.reindex(g_seg[is_split]).to_numpy(np.intp))
        kind_l.append(np.full(int(is_split.sum()), "split", dtype=object))
        src_l.append(last_piece.reindex(s_seg[is_merge]).to_numpy(np.intp))
        dst_l.append(locate_pieces(pieces, g_seg[is_merge], g_t[is_merge]))
        kind_l.append(np.full(int(is_merge.sum()), "merge", dtype=object))
    src = np.concatenate(src_l).astype(np.intp)
    dst = np.concatenate(dst_l).astype(np.intp)
    kind = np.concatenate(kind_l)

    removed = np.zeros(n, dtype=bool)
    n_removed = 0
    if min_tracklet_length > 0 and src.size:
        chain = _chains(n, src, dst)
        outdeg = np.bincount(src, minlength=n)
        indeg = np.bincount(dst, minlength=n)
        # The first and last piece of each chain, and the chain's predecessor piece.
        order = np.lexsort((pieces["start_t"].to_numpy(), chain))
        chain_sorted = chain[order]
        heads = order[np.r_[True, chain_sorted[1:] != chain_sorted[:-1]]]
        tails = order[np.r_[chain_sorted[1:] != chain_sorted[:-1], True]]
        pred_of = np.full(n, -1, dtype=np.intp)
        pred_of[dst] = src  # meaningful only where indeg == 1
        t_end_chain = pieces["end_t"].to_numpy(np.int64)[tails]
        head_pred = pred_of[heads]
        from_division = (indeg[heads] == 1) & (head_pred >= 0)
        from_division &= np.where(head_pred >= 0, outdeg[np.maximum(head_pred, 0)] >= 2, False)
        leaf = outdeg[tails] == 0
        t_mother = pieces["end_t"].to_numpy(np.int64)[np.maximum(head_pred, 0)]
        short = from_division & leaf & (t_end_chain - t_mother <= min_tracklet_length)
        short_chains = np.unique(chain[heads[short]])
        removed = np.isin(chain, short_chains)
        n_removed = int(short_chains.size)
        keep = ~(removed[src] | removed[dst])
        src, dst, kind = src[keep], dst[keep], kind[keep]

    pieces["removed"] = removed
    touched = np.zeros(n, dtype=bool)
    touched[src] = True
    touched[dst] = True
    linked = ~removed & ((pieces["n_spots"].to_numpy() > 1) | touched)
    comp = _components(n, src, dst)
    chain = _chains(n, src, dst)
    pieces["linked"] = linked
    pieces["component"] = np.where(linked, comp, -1).astype(np.int64)
    pieces["chain"] = np.where(linked, chain, -1).astype(np.int64)
    edges = pd.DataFrame({"src": src, "dst": dst, "kind": kind})
    return Lineage(pieces=pieces, edges=edges, n_removed_branches=n_removed)


def _chains(n: int, src: NDArray[np.intp], dst: NDArray[np.intp]) -> NDArray[np.intp]:
    outdeg = np.bincount(src, minlength=n)
    indeg = np.bincount(dst, minlength=n)
    one_to_one = (outdeg[src] == 1) & (indeg[dst] == 1)
    return _components(n, src[one_to_one], dst[one_to_one])


def number_lineage(
    lineage: Lineage,
    piece_min_spot: NDArray[np.int64],
    piece_first_spot: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], pd.DataFrame]:
    """Final track and tracklet IDs of every piece, and the tracklet table.

    Numbering follows :func:`vollseg_dask.io.tracks.derive_lineage`: tracks 0.. in order of their
    smallest spot ID, tracklets 0.. in order of their first spot ``(t, spot_id)``; a tracklet's
    parent is the smallest tracklet ID among the predecessors of its first spot (-1 for roots).

    Parameters
    ----------
    lineage : Lineage
    piece_min_spot : ndarray of int64, shape (n_pieces,)
        Smallest spot ID of each piece.
    piece_first_spot : ndarray of int64, shape (n_pieces,)
        Spot ID of each piece's first spot.

    Returns
    -------
    track_id, tracklet_id : ndarray of int64, shape (n_pieces,)
        -1 for pieces that are not linked.
    tracklets : DataFrame
        ``tracklet_id``, ``track_id``, ``parent_tracklet_id``, ``start_t``, ``end_t``, ``n_spots``.
    """
    p = lineage.pieces
    n = len(p)
    linked = p["linked"].to_numpy(bool)
    comp = p["component"].to_numpy(np.int64)
    chain = p["chain"].to_numpy(np.int64)
    track_id = np.full(n, -1, dtype=np.int64)
    tracklet_id = np.full(n, -1, dtype=np.int64)
    empty = pd.DataFrame(
        {
            "tracklet_id": np.empty(0, np.int64),
            "track_id": np.empty(0, np.int64),
            "parent_tracklet_id": np.empty(0, np.int64),
            "start_t": np.empty(0, np.int32),
            "end_t": np.empty(0, np.int32),
            "n_spots": np.empty(0, np.int64),
        }
    )
    if not linked.any():
        return track_id, tracklet_id, empty
    lk = np.flatnonzero(linked)
    # Tracks: by smallest spot id.
    comp_min = pd.Series(piece_min_spot[lk]).groupby(comp[lk]).min()
    rank = pd.Series(np.arange(len(comp_min)), index=comp_min.sort_values(kind="stable").index)
    track_id[lk] = rank.reindex(comp[lk]).to_numpy(np.int64)
    # Tracklets: by first spot (t, spot_id) of the chain's first piece.
    start_t = p["start_t"].to_numpy(np.int64)
    key = pd.DataFrame({"chain": chain[lk], "t": start_t[lk], "spot": piece_first_spot[lk], "row": lk})
    heads = key.sort_values(["t", "spot"], kind="stable").drop_duplicates("chain")
    chain_rank = pd.Series(np.arange(len(heads)), index=heads["chain"].to_numpy())
    tracklet_id[lk] = chain_rank.reindex(chain[lk]).to_numpy(np.int64)
    # Parents: predecessors of each tracklet's head piece.
    e = lineage.edges
    parent = np.full(len(heads), -1, dtype=np.int64)
    if len(e):
        s = e["src"].to_numpy(np.intp)
        d = e["dst"].to_numpy(np.intp)
        pe = pd.DataFrame({"child": tracklet_id[d], "parent": tracklet_id[s]})
        pe = pe[pe["child"] != pe["parent"]]
        # Only edges into a tracklet's head piece give parents (the child differs from the parent).
        best = pe.groupby("child")["parent"].min()
        parent[best.index.to_numpy(np.int64)] = best.to_numpy(np.int64)
    grp = pd.DataFrame(
        {
            "tl": tracklet_id[lk],
            "start": start_t[lk],
            "end": p["end_t"].to_numpy(np.int64)[lk],
            "n": p["n_spots"].to_numpy(np.int64)[lk],
        }
    ).groupby("tl")
    tracklets = pd.DataFrame(
        {
            "tracklet_id": np.arange(len(heads), dtype=np.int64),
            "track_id": track_id[heads["row"].to_numpy(np.intp)],
            "parent_tracklet_id": parent,
            "start_t": grp["start"].min().to_numpy().astype(np.int32),
            "end_t": grp["end"].max().to_numpy().astype(np.int32),
            "n_spots": grp["n"].sum().to_numpy().astype(np.int64),
        }
    )
    return track_id, tracklet_id, tracklets

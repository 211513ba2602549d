"""Cells of the synthetic tissue: lattice sites, multi-site cells, lineage trees, exact checks.

A **site** is a point of a jittered face-centred-cubic lattice in cell space ``Y`` (see
:mod:`~vollseg_dask.synthetic.geometry`); every voxel belongs to its nearest living site (a plain
Voronoi diagram in ``Y``). A **cluster** (a cell at t = 0) is one site or a chain of 2–6
nearest-neighbour sites going straight on or turning by a right angle (rods, L, Z, U shapes: the
union of their Voronoi regions is connected but, for bent chains, not star-convex). Chains are drawn inside
2×2×2-cube tiles of 32 sites by a generator seeded with the tile index, so that a cluster only
depends on its own tile.

Each cluster carries a binary **lineage tree** in heap order (node 1 the cell at t = 0, nodes
``2n``/``2n+1`` its daughters); a track's label is ``head_id·M + node`` where ``head_id`` is the
linear id of the cluster's first site. A multi-site node divides by cutting its chain at a bond; a
one-site node divides by a plane through the site (daughter normals are perpendicular to the
ancestors' planes).

Every cell is guaranteed to own at least one voxel at every frame of its life by **exact
checks** rather than bounds: a cell's anchor voxel (the voxel nearest its site, or nearest an
anchor point inside each half for a plane division) is rendered with the very rules of the
renderer — inside the image, inside the tissue, nearest site among *all* sites, on the right side
of its planes. A cluster that fails at any frame is not a cell at all (its sites do not compete),
and a plane division that fails does not happen. All of this depends only on sites within a
bounded distance, so any region can be computed on its own and agrees with any other region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from vollseg_dask.synthetic import _hash
from vollseg_dask.synthetic.geometry import cell_to_lab, cell_to_material, lab_to_cell, tissue_distance
from vollseg_dask.synthetic.scene import FCC_BASIS, Scene

__all__ = [
    "SiteSet",
    "CellTable",
    "mean_sites_per_cell",
    "tiles_for_box",
    "sites_of_tiles",
    "site_positions",
    "build_cell_table",
    "cell_table_for_region",
    "lineage_rows",
    "grow_tiles",
    "NEVER",
]

NEVER = np.iinfo(np.int32).max  # "does not divide"

# Hash streams.
_S_CHAIN, _S_JIT_R, _S_JIT_D, _S_JIT_T, _S_DIV, _S_BOND, _S_NORMAL, _S_SPC = 201, 202, 203, 204, 205, 206, 207, 208
_TILE_CUBES = 2
_SITES_PER_TILE = 4 * _TILE_CUBES**3


@lru_cache(maxsize=1)
def _tile_geometry() -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Local cube offsets and basis of the 32 sites of a tile, their positions and neighbour lists."""
    loc = []
    for di in range(_TILE_CUBES):
        for dj in range(_TILE_CUBES):
            for dk in range(_TILE_CUBES):
                for b in range(4):
                    loc.append((di, dj, dk, b))
    loc_arr = np.array(loc, dtype=np.int64)
    pos = loc_arr[:, :3] + FCC_BASIS[loc_arr[:, 3]]
    d2 = np.sum((pos[:, None] - pos[None]) ** 2, axis=-1)
    nbrs = [list(np.flatnonzero(np.isclose(d2[i], 0.5))) for i in range(len(pos))]
    return loc_arr, pos, nbrs


def _tile_chains(rng: np.random.Generator, p_start: float, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition the 32 sites of a tile into chains.

    Returns
    -------
    head, pos, length : ndarray (32,)
        Local index of each site's chain head, position along the chain, chain length.
    """
    _, xyz, nbrs = _tile_geometry()
    n = len(xyz)
    # Doubled integer coordinates: bonds compare exactly, and plain tuples are fast here.
    pts = [tuple(int(v) for v in np.rint(2 * p)) for p in xyz]
    head = np.arange(n)
    pos = np.zeros(n, np.int64)
    length = np.ones(n, np.int64)
    used = np.zeros(n, bool)
    for s in rng.permutation(n):
        if used[s]:
            continue
        used[s] = True
        if rng.random() >= p_start:
            continue
        target = int(rng.integers(2, max_len + 1))
        chain = [int(s)]
        prev: tuple[int, int, int] | None = None
        while len(chain) < target:
            cur = chain[-1]
            pc = pts[cur]
            cands = []
            for nb in nbrs[cur]:
                if used[nb]:
                    continue
                bond = (pts[nb][0] - pc[0], pts[nb][1] - pc[1], pts[nb][2] - pc[2])
                # Straight on or a right-angle turn (a sharper turn would just make the cell compact).
                if prev is None or bond == prev or bond[0] * prev[0] + bond[1] * prev[1] + bond[2] * prev[2] == 0:
                    cands.append((int(nb), bond))
            if not cands:
                break
            nxt, prev = cands[int(rng.integers(len(cands)))]
            used[nxt] = True
            chain.append(nxt)
        for i, m in enumerate(chain):
            head[m] = chain[0]
            pos[m] = i
            length[m] = len(chain)
    return head, pos, length


@lru_cache(maxsize=8192)
def _tile_chains_cached(seed: int, p_start: float, max_len: int, i: int, j: int, k: int,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chains of tile ``(i, j, k)`` (a pure function of its arguments, so it is cached per process:
    neighbouring tasks share tiles; 8192 tiles take about 2 MB)."""
    out = _tile_chains(np.random.default_rng([seed, _S_CHAIN, i, j, k]), p_start, max_len)
    for a in out:
        a.setflags(write=False)
    return out


@lru_cache(maxsize=64)
def mean_sites_per_cell(seed: int, p_start: float, max_len: int, n_tiles: int = 64) -> float:
    """Mean number of sites per cell of the chain process (simulated on ``n_tiles`` tiles)."""
    total_sites = 0
    total_cells = 0
    for i in range(n_tiles):
        rng = np.random.default_rng([seed, _S_SPC, i])
        head, _, _ = _tile_chains(rng, p_start, max_len)
        total_sites += len(head)
        total_cells += len(np.unique(head))
    return total_sites / total_cells


@dataclass(frozen=True)
class SiteSet:
    """Lattice sites with their chain membership.

    Attributes
    ----------
    site_id : ndarray (n,) int64
        ``((i·n_j + j)·n_k + k)·4 + b`` for cube ``(i, j, k)`` and basis site ``b``.
    Y0 : ndarray (n, 3)
        Static cell-space position (µm).
    head : ndarray (n,) int64
        ``site_id`` of the chain's first site (the cluster id).
    chain_pos, chain_len : ndarray (n,) int64
    omega : ndarray (n,)
        Angular frequency of the site's own jitter (rad/frame).
    phase : ndarray (n, 3)
        Jitter phases per axis.
    """

    site_id: np.ndarray
    Y0: np.ndarray
    head: np.ndarray
    chain_pos: np.ndarray
    chain_len: np.ndarray
    omega: np.ndarray
    phase: np.ndarray

    def __len__(self) -> int:
        return len(self.site_id)


def tiles_for_box(scene: Scene, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Tile indices (m, 3) whose sites can lie in the cell-space box ``[lo, hi]`` (µm), clipped to the lattice."""
    tile = scene.cube * _TILE_CUBES
    slack = scene.site_jitter + 1e-9
    n_tiles = scene.n_cubes // _TILE_CUBES
    a = np.floor((np.asarray(lo) - slack - scene.origin) / tile).astype(np.int64)
    b = np.floor((np.asarray(hi) + slack - scene.origin) / tile).astype(np.int64)
    a = np.clip(a, 0, n_tiles - 1)
    b = np.clip(b, 0, n_tiles - 1)
    if np.any(np.asarray(hi) + slack < scene.origin) or np.any(
            np.asarray(lo) - slack > scene.origin + n_tiles * tile):
        return np.zeros((0, 3), np.int64)
    grids = np.meshgrid(*[np.arange(a[i], b[i] + 1) for i in range(3)], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def sites_of_tiles(scene: Scene, tiles: np.ndarray) -> SiteSet:
    """All sites of ``tiles`` (m, 3), with static positions, jitter parameters and chains."""
    c = scene.config
    loc, _, _ = _tile_geometry()
    tiles = np.asarray(tiles, np.int64).reshape(-1, 3)
    m = len(tiles)
    cubes = (tiles[:, None, :] * _TILE_CUBES + loc[None, :, :3]).reshape(-1, 3)
    basis = np.tile(loc[:, 3], m)
    nj, nk = int(scene.n_cubes[1]), int(scene.n_cubes[2])
    site_id = ((cubes[:, 0] * nj + cubes[:, 1]) * nk + cubes[:, 2]) * 4 + basis
    seed = scene.seed
    r = scene.site_jitter * _hash.uniform(seed, _S_JIT_R, site_id) ** (1.0 / 3.0)
    Y0 = scene.origin + (cubes + FCC_BASIS[basis]) * scene.cube + r[:, None] * _hash.unit_vectors(seed, _S_JIT_D, site_id)
    omega = 2.0 * np.pi / (6.0 + 8.0 * _hash.uniform(seed, _S_JIT_T, site_id, 3))
    phase = 2.0 * np.pi * np.stack([_hash.uniform(seed, _S_JIT_T, site_id, a) for a in range(3)], axis=1)
    head = np.empty(len(site_id), np.int64)
    pos = np.empty(len(site_id), np.int64)
    length = np.empty(len(site_id), np.int64)
    for i, tile in enumerate(tiles):
        h, p, ln = _tile_chains_cached(seed, float(c.chain_probability), int(c.max_chain_length), int(tile[0]),
                                       int(tile[1]), int(tile[2]))
        sl = slice(i * _SITES_PER_TILE, (i + 1) * _SITES_PER_TILE)
        head[sl] = site_id[sl][h]
        pos[sl] = p
        length[sl] = ln
    return SiteSet(site_id=site_id, Y0=Y0, head=head, chain_pos=pos, chain_len=length, omega=omega, phase=phase)


def site_positions(scene: Scene, sites: SiteSet, t: float) -> np.ndarray:
    """Cell-space positions (n, 3) of ``sites`` at frame ``t``: static position plus smooth jitter."""
    return sites.Y0 + scene.jitter_amp * np.sin(sites.omega[:, None] * t + sites.phase)


@dataclass(frozen=True)
class CellTable:
    """Clusters of a region with their lineage trees (heap order, slot 0 unused).

    Attributes
    ----------
    sites : SiteSet
        Sites of the region's tiles ("core" sites); rendering uses those of living clusters.
    site_cluster : ndarray (n,) int64
        Cluster index of each site.
    head : ndarray (C,) int64
        Cluster id (site id of the first site).
    members : ndarray (C, L) int64
        Site indices (into ``sites``) in chain order, −1 padded.
    alive : ndarray (C,) bool
        The cluster is a cell (passes every check at every frame).
    exists : ndarray (C, M) bool
        Node exists (is a track).
    start, end : ndarray (C, M) int64
        First and last frame of each node's track.
    tdiv : ndarray (C, M) int64
        Frame at which the node's daughters appear (``NEVER`` when it does not divide).
    plane : ndarray (C, M) bool
        The node divides by a plane (one-site node) rather than at a chain bond.
    lo, hi, bond : ndarray (C, M) int64
        Chain range ``[lo, hi)`` of a node and the bond position where it splits.
    normal : ndarray (C, M, 3)
        Plane normal of a plane division.
    offset : ndarray (C, M, 3)
        Anchor (and nucleus centre) of the node relative to its site, for plane-split nodes.
    n_planes : ndarray (C, M) int64
        Number of plane divisions among the node's ancestors.
    """

    sites: SiteSet
    site_cluster: np.ndarray
    head: np.ndarray
    members: np.ndarray
    alive: np.ndarray
    exists: np.ndarray
    start: np.ndarray
    end: np.ndarray
    tdiv: np.ndarray
    plane: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    bond: np.ndarray
    normal: np.ndarray
    offset: np.ndarray
    n_planes: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.head)


def _anchor_check(scene: Scene, t: int, pts: np.ndarray, owner: np.ndarray, owner_Y: np.ndarray,
                  normals: np.ndarray, use: np.ndarray, tree: cKDTree) -> np.ndarray:
    """Exact check that the anchor voxel of each point renders to its owner.

    Parameters
    ----------
    scene : Scene
    t : int
        Frame.
    pts : ndarray (q, 3)
        Anchor points in cell space (µm).
    owner : ndarray (q,) int64
        Index of the owning site in the tree's data.
    owner_Y : ndarray (q, 3)
        Owner site positions at ``t``.
    normals : ndarray (q, P, 3)
        Signed plane normals: the voxel must satisfy ``(Y_v − owner_Y)·n > 0`` for each used one
        (the renderer puts ``(Y − Y_site)·n ≥ 0`` on the ``+`` side, so a strict check suffices).
    use : ndarray (q, P) bool
        Which normal slots apply.
    tree : cKDTree
        All sites (living or not) that can be nearest to the anchors, at frame ``t``.

    Returns
    -------
    ndarray (q,) bool
        Anchor voxel inside the image and the tissue, nearest to its owner, on the right sides.
    """
    if len(pts) == 0:
        return np.zeros(0, bool)
    x = cell_to_lab(pts, t, scene.flow, scene.warp)
    v = np.rint(x / scene.voxel)
    dims = np.array(scene.shape[1:], float)
    ok = np.all((v >= 0) & (v < dims), axis=1)
    X, Yv = lab_to_cell(v * scene.voxel, t, scene.flow, scene.warp)
    ok &= tissue_distance(X, scene.tissue) < 0
    _, nearest = tree.query(Yv, k=1)
    ok &= nearest == owner
    if normals.shape[1]:
        side = np.einsum("qpk,qk->qp", normals, Yv - owner_Y)
        ok &= np.all((side > 0) | ~use, axis=1)
    return ok


def _orthonormal_to(v: np.ndarray, basis: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Remove from unit vectors ``v`` (q, 3) their components along the first ``count`` rows of ``basis`` (q, P, 3)."""
    out = v.copy()
    for p in range(basis.shape[1]):
        use = (count > p)[:, None]
        b = basis[:, p]
        out = np.where(use, out - np.sum(out * b, axis=1, keepdims=True) * b, out)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(n > 1e-12, n, 1.0)


def build_cell_table(scene: Scene, core_tiles: np.ndarray, halo_tiles: np.ndarray) -> CellTable:
    """Clusters of ``core_tiles`` with alive flags and lineage trees.

    Parameters
    ----------
    scene : Scene
    core_tiles : ndarray (m, 3)
        Tiles whose clusters are wanted.
    halo_tiles : ndarray (h, 3)
        Tiles around them (must include every tile within one site spacing of a core tile;
        ``core_tiles`` may be repeated here).

    Returns
    -------
    CellTable
    """
    c = scene.config
    T = scene.n_frames
    M = scene.M
    D = c.max_generations
    seed = scene.seed
    sites = sites_of_tiles(scene, core_tiles)
    core_set = {tuple(x) for x in np.asarray(core_tiles).reshape(-1, 3).tolist()}
    extra = np.array([t for t in np.asarray(halo_tiles).reshape(-1, 3).tolist() if tuple(t) not in core_set],
                     np.int64).reshape(-1, 3)
    others = sites_of_tiles(scene, extra)
    n = len(sites)

    # Clusters: group core sites by head, members in chain order.
    heads, site_cluster = np.unique(sites.head, return_inverse=True)
    C = len(heads)
    L = int(sites.chain_len.max()) if n else 1
    members = np.full((C, L), -1, np.int64)
    members[site_cluster, sites.chain_pos] = np.arange(n)
    length = np.sum(members >= 0, axis=1)

    # Sites deeper than the margin below the tissue surface (static positions).
    X0 = cell_to_material(sites.Y0, scene.warp)
    site_ok = tissue_distance(X0, scene.tissue) < -scene.margin

    # Exact anchor checks of every site at every frame, against all nearby sites.
    all_Y0 = np.concatenate([sites.Y0, others.Y0])
    trees: list[cKDTree] = []
    Yt: list[np.ndarray] = []
    for t in range(T):
        y_core = site_positions(scene, sites, t)
        y_all = np.concatenate([y_core, site_positions(scene, others, t)]) if len(others) else y_core
        Yt.append(y_core)
        trees.append(cKDTree(y_all if len(y_all) else all_Y0))
        cand = np.flatnonzero(site_ok)
        ok = _anchor_check(scene, t, y_core[cand], cand, y_core[cand], np.zeros((len(cand), 0, 3)),
                           np.zeros((len(cand), 0), bool), trees[t])
        site_ok[cand[~ok]] = False
    alive = np.ones(C, bool)
    np.logical_and.at(alive, site_cluster, site_ok)

    # Lineage trees, generation by generation.
    exists = np.zeros((C, M), bool)
    start = np.zeros((C, M), np.int64)
    end = np.full((C, M), T - 1, np.int64)
    tdiv = np.full((C, M), NEVER, np.int64)
    plane = np.zeros((C, M), bool)
    lo = np.zeros((C, M), np.int64)
    hi = np.zeros((C, M), np.int64)
    bond = np.zeros((C, M), np.int64)
    normal = np.zeros((C, M, 3))
    offset = np.zeros((C, M, 3))
    n_planes = np.zeros((C, M), np.int64)
    anc_normals = np.zeros((C, M, max(D, 1), 3))  # unsigned plane normals of ancestors
    anc_signed = np.zeros((C, M, max(D, 1), 3))  # signed: the side the node lies on
    exists[:, 1] = alive
    hi[:, 1] = length
    rate = float(c.division_rate)
    log_keep = math.log1p(-rate) if rate > 0 else 0.0
    for g in range(D):
        nodes = np.arange(2**g, 2 ** (g + 1))
        for node in nodes:
            idx = np.flatnonzero(exists[:, node])
            if len(idx) == 0:
                continue
            u = _hash.uniform(seed, _S_DIV, heads[idx], node)
            if rate > 0:
                waits = np.floor(np.log1p(-u) / log_keep).astype(np.int64)
                life = waits + (1 if g == 0 else c.min_cycle_frames)
            else:
                life = np.full(len(idx), NEVER, np.int64)
            td = np.minimum(start[idx, node] + life, NEVER)
            cand = td <= T - 1
            idx, td = idx[cand], td[cand]
            if len(idx) == 0:
                continue
            nsites = hi[idx, node] - lo[idx, node]
            is_plane = nsites == 1
            # Chain nodes: cut at a random bond; always valid (every site is checked).
            ch = idx[~is_plane]
            if len(ch):
                span = hi[ch, node] - lo[ch, node] - 1
                b = lo[ch, node] + 1 + np.floor(_hash.uniform(seed, _S_BOND, heads[ch], node) * span).astype(np.int64)
                bond[ch, node] = b
            # Plane nodes: normal perpendicular to the ancestors' planes; check both daughters' anchors.
            pl = idx[is_plane]
            valid_pl = np.ones(len(pl), bool)
            if len(pl):
                v = _hash.unit_vectors(seed, _S_NORMAL, heads[pl], node)
                v = _orthonormal_to(v, anc_normals[pl, node], n_planes[pl, node])
                normal[pl, node] = v
                site_idx = members[pl, lo[pl, node]]
                tdp = td[is_plane]
                for sgn in (1.0, -1.0):
                    for t in range(int(tdp.min()), T):
                        q = np.flatnonzero((tdp <= t) & valid_pl)
                        if len(q) == 0:
                            continue
                        cl = pl[q]
                        s_idx = site_idx[q]
                        own = Yt[t][s_idx]
                        pts = own + offset[cl, node] + sgn * scene.anchor_offset * v[q]
                        nrm = np.concatenate([anc_signed[cl, node], (sgn * v[q])[:, None, :]], axis=1)
                        use = np.concatenate([np.arange(anc_signed.shape[2])[None, :] < n_planes[cl, node][:, None],
                                              np.ones((len(q), 1), bool)], axis=1)
                        ok = _anchor_check(scene, t, pts, s_idx, own, nrm, use, trees[t])
                        valid_pl[q[~ok]] = False
                plane[pl, node] = True
            div_ok = np.ones(len(idx), bool)
            div_ok[is_plane] = valid_pl
            idx, td = idx[div_ok], td[div_ok]
            tdiv[idx, node] = td
            end[idx, node] = td - 1
            for child, sgn in ((2 * node, 1.0), (2 * node + 1, -1.0)):
                exists[idx, child] = True
                start[idx, child] = td
                pl_mask = plane[idx, node]
                # Chain cut: first part [lo, bond) is child 2n, second [bond, hi) is 2n+1.
                lo[idx, child] = np.where(pl_mask, lo[idx, node], np.where(sgn > 0, lo[idx, node], bond[idx, node]))
                hi[idx, child] = np.where(pl_mask, hi[idx, node], np.where(sgn > 0, bond[idx, node], hi[idx, node]))
                np_parent = n_planes[idx, node]
                n_planes[idx, child] = np_parent + pl_mask
                anc_normals[idx, child] = anc_normals[idx, node]
                anc_signed[idx, child] = anc_signed[idx, node]
                offset[idx, child] = offset[idx, node]
                pi = idx[pl_mask]
                if len(pi):
                    slot = n_planes[pi, node]
                    anc_normals[pi, child, slot] = normal[pi, node]
                    anc_signed[pi, child, slot] = sgn * normal[pi, node]
                    offset[pi, child] = offset[pi, node] + sgn * scene.anchor_offset * normal[pi, node]
    return CellTable(sites=sites, site_cluster=site_cluster, head=heads, members=members, alive=alive,
                     exists=exists, start=start, end=end, tdiv=tdiv, plane=plane, lo=lo, hi=hi, bond=bond,
                     normal=normal, offset=offset, n_planes=n_planes)


def cell_table_for_region(scene: Scene, lab_lo: np.ndarray, lab_hi: np.ndarray) -> CellTable:
    """Cell table holding every cluster that can matter to voxels in the lab box ``[lab_lo, lab_hi]`` (µm)."""
    pad = scene.reach + scene.r_query + scene.max_jitter
    core = tiles_for_box(scene, np.asarray(lab_lo) - pad, np.asarray(lab_hi) + pad)
    halo = grow_tiles(scene, core)
    return build_cell_table(scene, core, halo)


def grow_tiles(scene: Scene, tiles: np.ndarray) -> np.ndarray:
    """Tiles plus a one-tile ring (a tile side ≥ 2.8 site spacings covers any nearest-site query)."""
    if len(tiles) == 0:
        return tiles
    n_tiles = scene.n_cubes // _TILE_CUBES
    a = np.maximum(tiles.min(axis=0) - 1, 0)
    b = np.minimum(tiles.max(axis=0) + 1, n_tiles - 1)
    grids = np.meshgrid(*[np.arange(a[i], b[i] + 1) for i in range(3)], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def lineage_rows(scene: Scene, table: CellTable) -> dict[str, np.ndarray]:
    """Track rows ``track_id, start, end, parent`` (int64) of the living clusters of ``table``."""
    M = scene.M
    ci, node = np.nonzero(table.exists & table.alive[:, None])
    tid = table.head[ci] * M + node
    parent = np.where(node > 1, table.head[ci] * M + node // 2, 0)
    order = np.argsort(tid, kind="stable")
    return {"track_id": tid[order], "start": table.start[ci, node][order], "end": table.end[ci, node][order],
            "parent": parent[order]}

"""Small deterministic label volumes and stores for segmentation tests and benchmarks.

A Voronoi tissue: cells are the nearest-seed regions of random points inside an ellipsoid, so they
are convex (star-convex), pack without gaps and touch each other, like membrane-labelled epithelia.
Extra seed points can be placed on chosen coordinates (block seams, 4-block edges, 8-block
corners) to put cells exactly where tiling could break them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vollseg_dask.errors import ShapeError

__all__ = ["voronoi_tissue", "grid_cells", "write_test_store"]


def voronoi_tissue(shape: Sequence[int], n_cells: int, *, seed: int = 0, extra_points: np.ndarray | None = None,
                   margin: float = 0.08, min_distance: float | None = None, membrane: bool = False) -> np.ndarray:
    """Voronoi cells inside an ellipsoid filling the volume.

    Parameters
    ----------
    shape : sequence of 3 int
        (Z, Y, X).
    n_cells : int
        Random seed points (before the extra ones).
    seed : int
        RNG seed.
    extra_points : numpy.ndarray, shape (K, 3), optional
        Additional cell centres (voxels), kept first so their labels are 1..K.
    margin : float
        Fraction of each axis left outside the ellipsoid (background).
    min_distance : float, optional
        Reject random points closer than this to an accepted one (more regular cells).
    membrane : bool
        Set a one-voxel membrane between touching cells to background: of every face-adjacent pair
        of voxels in different cells, the raster-earlier one (cells may still touch diagonally).

    Returns
    -------
    numpy.ndarray, shape ``shape``, uint32
        Cell labels 1..N (only cells with at least one voxel inside the tissue keep a label).
    """
    from scipy.spatial import cKDTree

    shp = np.array([int(s) for s in shape])
    if shp.size != 3 or (shp < 1).any():
        raise ShapeError(f"shape must be 3 positive ints, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    centre = (shp - 1) / 2.0
    radii = shp * (0.5 - margin)
    pts = [] if extra_points is None else [np.asarray(p, float) for p in np.asarray(extra_points, float).reshape(-1, 3)]
    tries = 0
    target = len(pts) + int(n_cells)
    while len(pts) < target and tries < 200 * target:
        tries += 1
        p = rng.uniform(0, 1, 3) * (shp - 1)
        if (((p - centre) / radii) ** 2).sum() > 1.0:
            continue
        if min_distance is not None and pts:
            d = np.sqrt(((np.asarray(pts) - p) ** 2).sum(axis=1)).min()
            if d < min_distance:
                continue
        pts.append(p)
    pts_a = np.asarray(pts)
    grid = np.indices(tuple(shp)).reshape(3, -1).T
    inside = ((((grid - centre) / radii) ** 2).sum(axis=1)) <= 1.0
    lab = np.zeros(grid.shape[0], np.uint32)
    _, nearest = cKDTree(pts_a).query(grid[inside], workers=1)
    lab[inside] = nearest.astype(np.uint32) + 1
    lab = lab.reshape(tuple(shp))
    if membrane:
        wall = np.zeros(lab.shape, bool)
        for ax in range(3):
            a = np.moveaxis(lab, ax, 0)
            w = np.moveaxis(wall, ax, 0)
            w[:-1] |= (a[:-1] != a[1:]) & (a[:-1] != 0) & (a[1:] != 0)
        lab[wall] = 0
    # compact: drop seeds that won no voxel
    u, inv = np.unique(lab, return_inverse=True)
    return inv.reshape(lab.shape).astype(np.uint32) if u[0] == 0 else (inv + 1).reshape(lab.shape).astype(np.uint32)


def grid_cells(shape: Sequence[int], cell: Sequence[int], gap: int = 0) -> np.ndarray:
    """A dense lattice of box cells of size ``cell`` (fast, for huge label counts).

    Parameters
    ----------
    shape, cell : sequence of 3 int
        Volume and lattice cell shapes.
    gap : int
        Background planes at the high end of every lattice cell along each axis (0: cells touch).

    Returns
    -------
    numpy.ndarray, shape ``shape``, uint32
        Label = 1 + linear index of the lattice cell (0 in the gaps).
    """
    shp = [int(s) for s in shape]
    c = [int(v) for v in cell]
    nz, ny, nx = (-(-s // k) for s, k in zip(shp, c, strict=True))
    z = (np.arange(shp[0]) // c[0])[:, None, None]
    y = (np.arange(shp[1]) // c[1])[None, :, None]
    x = (np.arange(shp[2]) // c[2])[None, None, :]
    lab = (z * ny + y) * nx + x + 1
    if lab.max() >= 2**32:
        raise ShapeError("too many lattice cells for uint32")
    lab = lab.astype(np.uint32)
    if gap:
        for ax, k in enumerate(c):
            idx = np.nonzero(np.arange(shp[ax]) % k >= k - gap)[0]
            np.moveaxis(lab, ax, 0)[idx] = 0
    return lab


def write_test_store(path, labels: np.ndarray, *, name: str = "ground_truth", scale=(1.0, 1.0, 1.0),
                     chunks: Sequence[int] | None = None, frame_interval: float = 1.0) -> str:
    """Write an image (membranes drawn from the labels) plus the labels as an OME-Zarr store.

    Parameters
    ----------
    path : path-like
        Store folder (must not exist).
    labels : numpy.ndarray, shape (T, Z, Y, X) or (Z, Y, X), integer
        Ground truth; a 3-D array becomes one time point.
    name : str
        Labels group name.
    scale : sequence of 3 float
        Voxel size (z, y, x) in µm.
    chunks : sequence of 4 int, optional
        Zarr chunks of (t, z, y, x).

    Returns
    -------
    str
        The store path.
    """
    from scipy import ndimage

    from vollseg_dask.io.omezarr import create_labels, write_image

    lab = np.asarray(labels)
    if lab.ndim == 3:
        lab = lab[None]
    if lab.ndim != 4:
        raise ShapeError(f"labels must be (T, Z, Y, X) or (Z, Y, X), got {lab.shape}")
    img = np.zeros(lab.shape, np.uint16)
    for t in range(lab.shape[0]):
        edge = ndimage.grey_dilation(lab[t], size=3) != ndimage.grey_erosion(lab[t], size=3)
        img[t] = np.where(edge, 1000, 100).astype(np.uint16)
    ck = tuple(chunks) if chunks is not None else (1, *[min(s, 64) for s in lab.shape[1:]])
    write_image(path, img, axes="tzyx", scale=(frame_interval, *scale), chunks=ck, n_levels=2)
    arr = create_labels(path, name, dtype="uint32", chunks=ck)
    arr[...] = lab.astype(np.uint32)
    return str(path)

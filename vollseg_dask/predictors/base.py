"""The interface every network predictor implements for the segmentation engine.

Stage S1 of :func:`vollseg_dask.segmentation.segment` calls :meth:`Predictor.predict_block` once
per (t, block) with the image over the block's *read region* (core + :attr:`Predictor.halo`) and
keeps what it returns for the *core*:

* ``prob`` - StarDist object probability, float32, full resolution over the core;
* ``foreground`` - U-Net foreground probability, float32 over the core;
* ``distance`` - optional scalar distance map (e.g. max over rays of the StarDist distances),
  float32 over the core, used when the watershed floods the distance map;
* sparse StarDist candidates owned by the block (centre inside the core) with probability at
  least the threshold: integer global centres, probabilities, and their ray lengths.
  Dense per-voxel ray distances are never returned or stored.

Predictors are pickled to the workers once per task: keep heavy state (TensorFlow models) out of
``__getstate__`` and load it on first use in the worker, e.g. through
``vollseg_dask.runtime.cached``. :meth:`Predictor.prepare` runs once on the client before S1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vollseg_dask.errors import DTypeError, ShapeError

__all__ = ["BlockPrediction", "Predictor", "validate_prediction", "make_rays"]


def make_rays(n_rays: int):
    """StarDist's golden-spiral rays (isotropic), the layout StarDist3D models use by default."""
    from stardist import Rays_GoldenSpiral

    return Rays_GoldenSpiral(int(n_rays))


@dataclass
class BlockPrediction:
    """Network outputs for one block's core.

    Attributes
    ----------
    prob : numpy.ndarray, shape (z, y, x), float32
        StarDist object probability over the core.
    foreground : numpy.ndarray, shape (z, y, x), float32
        U-Net foreground probability over the core.
    points : numpy.ndarray, shape (N, 3), int64
        Global (z, y, x) centres of the StarDist candidates whose centre lies in the core.
    cand_prob : numpy.ndarray, shape (N,), float32
        Candidate probabilities.
    dist : numpy.ndarray, shape (N, R), float32
        Candidate ray lengths in voxels (R = number of rays), positive.
    distance : numpy.ndarray or None, shape (z, y, x), float32
        Optional distance map over the core.
    info : dict
        Free-form diagnostics (kept in the manifest).
    """

    prob: np.ndarray
    foreground: np.ndarray
    points: np.ndarray
    cand_prob: np.ndarray
    dist: np.ndarray
    distance: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Predictor(ABC):
    """Source of StarDist and U-Net outputs, block by block.

    Subclasses: the network-backed predictor (StarDist3D + U-Net + optional N2V) and
    :class:`~vollseg_dask.predictors.ground_truth.GroundTruthPredictor` for tests and benchmarks.
    """

    #: whether :meth:`predict_block` needs the image (False: the driver passes ``None``)
    needs_image: bool = True

    @property
    @abstractmethod
    def halo(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) of context needed on each side of a block: the receptive field."""

    @property
    @abstractmethod
    def n_rays(self) -> int:
        """Number of StarDist rays."""

    @property
    def rays(self):
        """StarDist ``Rays_Base`` object of the candidates' ray lengths."""
        return make_rays(self.n_rays)

    @property
    def prob_threshold(self) -> float:
        """Default candidate threshold (a model's ``thresholds.json``)."""
        return 0.5

    @property
    def nms_threshold(self) -> float:
        """Default NMS overlap threshold (a model's ``thresholds.json``)."""
        return 0.4

    def prepare(self, store: str, *, n_t: int, volume_shape: tuple[int, int, int]) -> None:  # noqa: B027
        """Called once on the client before inference (e.g. to check inputs); default: nothing."""

    @abstractmethod
    def predict_block(self, image: np.ndarray | None, *, t: int, read: tuple[slice, slice, slice],
                      core: tuple[slice, slice, slice], volume_shape: tuple[int, int, int],
                      prob_threshold: float) -> BlockPrediction:
        """Outputs for the core of one block.

        Parameters
        ----------
        image : numpy.ndarray or None, shape (z, y, x)
            The image at time ``t`` over ``read`` (one channel), or None when
            :attr:`needs_image` is False.
        t : int
            Time index.
        read, core : tuple of 3 slice
            Global slices of the read region and of the core (``core`` inside ``read``).
        volume_shape : tuple of 3 int
            Shape (Z, Y, X) of one time point.
        prob_threshold : float
            Emit only candidates with probability >= this.
        """

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the predictor (recorded in the run manifest, part of resume checks)."""
        return {"class": type(self).__name__, "halo": list(self.halo), "n_rays": self.n_rays}


def validate_prediction(pred: BlockPrediction, core_shape: Sequence[int], core: Sequence[slice],
                        n_rays: int) -> BlockPrediction:
    """Check shapes/dtypes of a predictor's output; return it with canonical dtypes.

    Raises
    ------
    ShapeError, DTypeError
        Naming the offending field.
    """
    core_shape = tuple(int(s) for s in core_shape)
    for name in ("prob", "foreground", "distance"):
        arr = getattr(pred, name)
        if arr is None:
            if name == "distance":
                continue
            raise ShapeError(f"predictor returned no {name!r} map")
        arr = np.asarray(arr)
        if arr.shape != core_shape:
            raise ShapeError(f"predictor {name!r} has shape {arr.shape}, the block core is {core_shape}")
        if arr.dtype.kind not in "fiub":
            raise DTypeError(f"predictor {name!r} has dtype {arr.dtype}, expected float")
        setattr(pred, name, arr.astype(np.float32, copy=False))
    pts = np.asarray(pred.points)
    if pts.size == 0:
        pts = pts.reshape(0, 3)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeError(f"predictor points have shape {pts.shape}, expected (N, 3)")
    if pts.size and pts.dtype.kind not in "iu":
        if not np.array_equal(pts, np.round(pts)):
            raise DTypeError("predictor candidate centres must be integer voxel coordinates")
    pts = pts.astype(np.int64)
    n = len(pts)
    lo = np.array([s.start for s in core])
    hi = np.array([s.stop for s in core])
    if n and (((pts < lo) | (pts >= hi)).any()):
        raise ShapeError("predictor returned a candidate whose centre lies outside the block core")
    cp = np.asarray(pred.cand_prob, np.float32).reshape(-1)
    dist = np.asarray(pred.dist, np.float32)
    if n == 0:
        dist = dist.reshape(0, n_rays)
    if cp.shape != (n,) or dist.shape != (n, n_rays):
        raise ShapeError(f"candidate prob {cp.shape} / dist {dist.shape} do not match {n} points x {n_rays} rays")
    pred.points, pred.cand_prob, pred.dist = pts, cp, dist
    return pred

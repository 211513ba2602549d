"""Block plans: the grid of cores, halos and read regions over an N-d domain.

Every tiled stage (network inference, watershed, measurement) processes one
:class:`Block` per task. A block **owns** its *core* (the cores of a plan tile
the domain exactly once, so every voxel is written by exactly one task) and
**reads** its *read region*: the core grown by the halo on every side, clipped to
the array. Kernels run on the read region; the driver keeps only
``result[block.core_in_read]``.

Alignment to storage
--------------------
When ``chunks`` (a zarr chunk or shard shape) is given, every block boundary
falls on a chunk boundary, so that no two tasks ever write the same storage
unit. We *round the requested block shape up* to the next multiple of the chunk
shape rather than rejecting it: the block shape is a memory budget that users
state roughly, while the chunk shape is fixed by the store. The effective shape
is recorded in :attr:`BlockPlan.block_shape`. A grid ``origin`` must then itself
lie on a chunk boundary (otherwise a small first block would split a chunk), and
a plan that violates this raises :class:`~vollseg_dask.errors.ShapeError`.

Offset grids
------------
``origin`` moves the grid: block boundaries lie at ``origin + k * block_shape``
(every integer ``k``), so with ``origin=1`` the first block is one voxel thick.
Tests use such 1-voxel offsets to move the seams and check that results do not
depend on where the seams are.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from vollseg_dask.errors import ShapeError

__all__ = ["Block", "BlockPlan", "plan_blocks"]


def _slice_tuple_str(slices: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"


@dataclass(frozen=True)
class Block:
    """One task's share of the domain.

    Attributes
    ----------
    index : tuple of int
        Position of the block in the grid (``0 <= index[i] < grid_shape[i]``).
    core : tuple of slice
        Global slices (start/stop, step ``None``) of the voxels this block owns.
    read : tuple of slice
        Global slices of the core grown by the halo, clipped to the array.
    """

    index: tuple[int, ...]
    core: tuple[slice, ...]
    read: tuple[slice, ...]

    @property
    def ndim(self) -> int:
        return len(self.index)

    @property
    def core_in_read(self) -> tuple[slice, ...]:
        """Slices that cut the core out of an array holding the read region."""
        return tuple(
            slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.core, self.read, strict=True)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the core, in voxels."""
        return tuple(s.stop - s.start for s in self.core)

    @property
    def read_shape(self) -> tuple[int, ...]:
        """Shape of the read region, in voxels."""
        return tuple(s.stop - s.start for s in self.read)

    @property
    def offset(self) -> tuple[int, ...]:
        """Global coordinates of the first voxel of the read region."""
        return tuple(s.start for s in self.read)

    @property
    def core_offset(self) -> tuple[int, ...]:
        """Global coordinates of the first voxel of the core."""
        return tuple(s.start for s in self.core)

    @property
    def size(self) -> int:
        """Number of voxels in the core."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def key(self) -> str:
        """Stable text name of the block, e.g. ``"0.3.1"`` (used for done-markers and logs)."""
        return ".".join(str(i) for i in self.index)

    def __str__(self) -> str:
        return f"Block({self.key}, core={_slice_tuple_str(self.core)}, read={_slice_tuple_str(self.read)})"


@dataclass(frozen=True)
class BlockPlan:
    """A grid of :class:`Block` over an array of ``shape``.

    Build it with :func:`plan_blocks`. Iterating yields the blocks in C order of
    their grid index; ``len(plan)`` is the number of blocks.
    """

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    origin: tuple[int, ...]
    blocks: tuple[Block, ...]
    grid_shape: tuple[int, ...]
    boundaries: tuple[tuple[int, ...], ...] = field(repr=False)
    """Per axis, the sorted block boundaries, from 0 to ``shape[axis]`` inclusive."""

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Core sizes per axis in Dask's ``chunks`` format (rechunk a Dask array to match the plan)."""
        return tuple(tuple(b - a for a, b in itertools.pairwise(bounds)) for bounds in self.boundaries)

    def _flat(self, index: Sequence[int]) -> int:
        index = tuple(int(i) for i in index)
        if len(index) != self.ndim:
            raise IndexError(f"block index {index} has {len(index)} entries, the grid {self.grid_shape} has {self.ndim}")
        flat = 0
        for i, n in zip(index, self.grid_shape, strict=True):
            if not 0 <= i < n:
                raise IndexError(f"block index {index} is outside the grid of shape {self.grid_shape}")
            flat = flat * n + i
        return flat

    def block_at(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index``; :class:`IndexError` when outside the grid."""
        return self.blocks[self._flat(index)]

    def block_containing(self, point: Sequence[int]) -> Block:
        """The block whose core holds the voxel at global coordinates ``point``."""
        point = tuple(int(p) for p in point)
        if len(point) != self.ndim or any(not 0 <= p < n for p, n in zip(point, self.shape, strict=False)):
            raise IndexError(f"point {point} is outside the array of shape {self.shape}")
        index = tuple(
            bisect.bisect_right(bounds, p) - 1 for p, bounds in zip(point, self.boundaries, strict=True)
        )
        return self.block_at(index)

    def neighbours(self, block: Block) -> list[Block]:
        """Blocks sharing a face, an edge or a corner with ``block`` (up to 3**ndim - 1), in grid order."""
        self._flat(block.index)  # validates the index
        out = []
        for delta in itertools.product((-1, 0, 1), repeat=self.ndim):
            if not any(delta):
                continue
            index = tuple(i + d for i, d in zip(block.index, delta, strict=True))
            if all(0 <= i < n for i, n in zip(index, self.grid_shape, strict=True)):
                out.append(self.blocks[self._flat(index)])
        return out


def _per_axis(value: int | Sequence[int | None] | None, ndim: int, name: str, shape: tuple[int, ...]) -> tuple:
    if value is None or (hasattr(value, "__index__") and not isinstance(value, bool)):
        return (value,) * ndim  # a scalar (Python or NumPy integer) applies to every axis
    try:
        values = tuple(value)
    except TypeError:
        raise ShapeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}") from None
    if len(values) != ndim:
        raise ShapeError(
            f"{name} {values} has {len(values)} entries but the array shape {shape} has {ndim} axes"
        )
    return values


def _as_int(v: object, name: str, full: object) -> int:
    # numpy integers are fine; bools and floats are not (a float block shape is a bug upstream).
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise ShapeError(f"{name} {full} must hold integers, got {v!r}")
    return int(v)  # type: ignore[call-overload]


def plan_blocks(
    shape: Sequence[int],
    block_shape: int | Sequence[int | None],
    halo: int | Sequence[int] = 0,
    *,
    chunks: Sequence[int] | None = None,
    origin: int | Sequence[int] | None = None,
) -> BlockPlan:
    """Plan a grid of blocks (core + halo) over an array.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array, every axis at least 1 voxel long.
    block_shape : int or sequence of (int or None)
        Core shape of a full block, per axis (an int applies to every axis).
        ``None`` or ``-1`` means the whole axis. Values larger than the axis give
        one block along it. The last block along an axis may be smaller (ragged).
    halo : int or sequence of int, default 0
        Voxels added on each side of the core to form the read region (clipped
        at the array border). Must be at least the reach of the operation.
    chunks : sequence of int, optional
        Storage chunk (or shard) shape. When given, ``block_shape`` is rounded
        up to a multiple of it so that every block boundary is a chunk boundary.
    origin : int or sequence of int, optional
        Grid offset: boundaries lie at ``origin + k * block_shape``. ``origin``
        may be any integer (it is taken modulo the block shape); with
        ``chunks`` it must be a multiple of the chunk shape. Ignored along
        whole-axis (``None``) block axes.

    Returns
    -------
    BlockPlan
        The plan; its ``block_shape`` is the effective (possibly rounded) one.

    Raises
    ------
    ShapeError
        Empty or malformed shape, non-positive block shape, negative halo,
        chunk shape of the wrong length, or an origin off the chunk grid.
    """
    try:
        shp = tuple(shape)
    except TypeError:
        raise ShapeError(f"shape must be a sequence of ints, got {shape!r}") from None
    shp = tuple(_as_int(s, "shape", shp) for s in shp)
    ndim = len(shp)
    if ndim == 0:
        raise ShapeError("shape () has no axes: a block plan needs at least one axis")
    if any(s < 1 for s in shp):
        raise ShapeError(f"shape {shp} has an axis of length < 1: nothing to plan")

    raw_block = _per_axis(block_shape, ndim, "block_shape", shp)
    bs: list[int] = []
    whole: list[bool] = []
    for b, n in zip(raw_block, shp, strict=True):
        is_whole = b is None or (not isinstance(b, bool) and hasattr(b, "__index__") and int(b) == -1)
        whole.append(is_whole)
        if is_whole:
            bs.append(n)
            continue
        b = _as_int(b, "block_shape", raw_block)
        if b < 1:
            raise ShapeError(f"block_shape {raw_block} must be positive (or None/-1 for a whole axis)")
        bs.append(b)

    hl = tuple(_as_int(h, "halo", halo) for h in _per_axis(halo, ndim, "halo", shp))
    if any(h < 0 for h in hl):
        raise ShapeError(f"halo {hl} must be non-negative")

    org = (0,) * ndim if origin is None else tuple(
        _as_int(o, "origin", origin) for o in _per_axis(origin, ndim, "origin", shp)
    )

    if chunks is not None:
        ch = tuple(_as_int(c, "chunks", chunks) for c in _per_axis(chunks, ndim, "chunks", shp))
        if any(c < 1 for c in ch):
            raise ShapeError(f"chunks {ch} must be positive")
        for axis, (o, c) in enumerate(zip(org, ch, strict=True)):
            if o % c:
                raise ShapeError(
                    f"origin {org} is not on the chunk grid {ch} (axis {axis}: {o} is not a multiple of {c}); "
                    "a block boundary inside a chunk would let two tasks write the same chunk"
                )
        # Round up: the requested block shape is a budget, the chunk shape is fixed by the store.
        bs = [-(-b // c) * c for b, c in zip(bs, ch, strict=True)]

    boundaries = []
    for n, b, o, w in zip(shp, bs, org, whole, strict=True):
        first = 0 if w else o % b  # a whole-axis block ignores the origin
        inner = range(first if first > 0 else b, n, b)
        boundaries.append((0, *inner, n))

    grid_shape = tuple(len(bd) - 1 for bd in boundaries)
    per_axis_slices = []
    for bounds, h, n in zip(boundaries, hl, shp, strict=True):
        axis_slices = []
        for a, b in itertools.pairwise(bounds):
            axis_slices.append((slice(a, b), slice(max(0, a - h), min(n, b + h))))
        per_axis_slices.append(axis_slices)

    blocks = []
    for index in itertools.product(*(range(g) for g in grid_shape)):
        pairs = [per_axis_slices[ax][i] for ax, i in enumerate(index)]
        blocks.append(Block(index=index, core=tuple(p[0] for p in pairs), read=tuple(p[1] for p in pairs)))

    return BlockPlan(
        shape=shp,
        block_shape=tuple(bs),
        halo=hl,
        origin=org,
        blocks=tuple(blocks),
        grid_shape=grid_shape,
        boundaries=tuple(boundaries),
    )

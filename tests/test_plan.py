"""Block plans: exact tiling, halos, chunk alignment, offset grids, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vollseg_dask.errors import ShapeError
from vollseg_dask.plan import Block, BlockPlan, plan_blocks


@st.composite
def plan_args(draw, with_chunks: bool = False):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 13), min_size=ndim, max_size=ndim)))
    block = tuple(draw(st.lists(st.one_of(st.integers(1, 9), st.none()), min_size=ndim, max_size=ndim)))
    halo = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    chunks = None
    if with_chunks:
        chunks = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
        origin = tuple(c * draw(st.integers(-3, 3)) for c in chunks)
    else:
        origin = tuple(draw(st.lists(st.integers(-11, 11), min_size=ndim, max_size=ndim)))
    return shape, block, halo, chunks, origin


def _check_plan(plan: BlockPlan, shape, halo) -> None:
    coverage = np.zeros(shape, dtype=np.int32)
    for blk in plan:
        coverage[blk.core] += 1
        for c, r, h, n in zip(blk.core, blk.read, halo, shape, strict=True):
            # read = core grown by the halo, clipped: this also gives read ⊇ core and read ⊆ array.
            assert r.start == max(0, c.start - h)
            assert r.stop == min(n, c.stop + h)
            assert 0 <= r.start <= c.start < c.stop <= r.stop <= n
        # core_in_read really cuts the core out of the read region
        read_ids = np.arange(coverage.size).reshape(shape)[blk.read]
        np.testing.assert_array_equal(read_ids[blk.core_in_read], np.arange(coverage.size).reshape(shape)[blk.core])
        assert blk.shape == read_ids[blk.core_in_read].shape
        assert blk.read_shape == read_ids.shape
        assert blk.offset == tuple(s.start for s in blk.read)
        assert plan.block_at(blk.index) is blk
    # every voxel owned exactly once
    assert coverage.min() == 1 and coverage.max() == 1
    assert len(plan) == int(np.prod(plan.grid_shape))
    assert tuple(sum(c) for c in plan.chunks) == tuple(shape)


@settings(max_examples=150, deadline=None)
@given(plan_args())
def test_cores_tile_domain_exactly_once(args):
    shape, block, halo, chunks, origin = args
    plan = plan_blocks(shape, block, halo, origin=origin)
    _check_plan(plan, shape, halo)
    for ax, (b, o) in enumerate(zip(plan.block_shape, origin, strict=True)):
        inner = plan.boundaries[ax][1:-1]
        if block[ax] is None:
            assert inner == () and b == shape[ax]
        else:
            # every inner boundary is on the shifted grid, and no full-block gap is skipped
            assert all((x - o) % b == 0 for x in inner)
            assert all(b2 - b1 <= b for b1, b2 in itertools.pairwise(plan.boundaries[ax]))


@settings(max_examples=150, deadline=None)
@given(plan_args(with_chunks=True))
def test_chunk_alignment(args):
    shape, block, halo, chunks, origin = args
    plan = plan_blocks(shape, block, halo, chunks=chunks, origin=origin)
    _check_plan(plan, shape, halo)
    for ax, c in enumerate(chunks):
        if block[ax] is not None:
            # rounded up to a multiple of the chunk, never below the request
            assert plan.block_shape[ax] % c == 0 and plan.block_shape[ax] >= block[ax]
            assert plan.block_shape[ax] - block[ax] < c
        # every boundary except the array end is a chunk boundary: no two blocks share a chunk
        assert all(x % c == 0 for x in plan.boundaries[ax][:-1])
    owner = {}
    for blk in plan:
        for chunk_idx in itertools.product(*(range(s.start // c, -(-s.stop // c)) for s, c in zip(blk.core, chunks, strict=True))):
            assert owner.setdefault(chunk_idx, blk.index) == blk.index


def test_ragged_last_block_and_singleton_axis():
    plan = plan_blocks((1, 10, 7), (4, 4, 4), halo=(0, 2, 1))
    assert plan.grid_shape == (1, 3, 2)
    assert plan.chunks == ((1,), (4, 4, 2), (4, 3))
    last = plan.block_at((0, 2, 1))
    assert last.core == (slice(0, 1), slice(8, 10), slice(4, 7))
    assert last.read == (slice(0, 1), slice(6, 10), slice(3, 7))
    assert last.core_in_read == (slice(0, 1), slice(2, 4), slice(1, 4))
    assert last.shape == (1, 2, 3) and last.read_shape == (1, 4, 4) and last.offset == (0, 6, 3)
    assert last.key == "0.2.1" and last.size == 6


def test_offset_grid_gives_small_first_block():
    plan = plan_blocks((10,), 4, origin=1)
    assert plan.boundaries == ((0, 1, 5, 9, 10),)
    assert [b.shape for b in plan] == [(1,), (4,), (4,), (1,)]
    # origin is taken modulo the block shape
    assert plan_blocks((10,), 4, origin=-3).boundaries == plan.boundaries
    assert plan_blocks((10,), 4, origin=8).boundaries == ((0, 4, 8, 10),)


def test_whole_axis_and_oversized_blocks():
    plan = plan_blocks((3, 5), (None, 100), origin=(1, 1))
    assert plan.grid_shape == (1, 2)  # origin ignored on the whole axis, used on the other
    assert plan.block_at((0, 0)).core == (slice(0, 3), slice(0, 1))
    assert plan_blocks((3, 5), -1).grid_shape == (1, 1)


def test_chunk_rounding_is_reported():
    plan = plan_blocks((64, 64), (20, 33), chunks=(16, 32))
    assert plan.block_shape == (32, 64)
    assert plan.boundaries == ((0, 32, 64), (0, 64))


def test_neighbours_face_edge_corner():
    plan = plan_blocks((9, 9, 9), 3)
    centre = plan.block_at((1, 1, 1))
    nb = plan.neighbours(centre)
    assert len(nb) == 26 and centre not in nb
    corner = plan.block_at((0, 0, 0))
    assert sorted(b.index for b in plan.neighbours(corner)) == sorted(
        i for i in itertools.product((0, 1), repeat=3) if i != (0, 0, 0)
    )
    assert plan_blocks((5,), 5).neighbours(plan_blocks((5,), 5).block_at((0,))) == []


def test_block_containing_and_index_errors():
    plan = plan_blocks((10, 10), (3, 4), origin=(1, 0))
    for point in itertools.product(range(10), range(10)):
        blk = plan.block_containing(point)
        assert all(s.start <= p < s.stop for p, s in zip(point, blk.core, strict=True))
    with pytest.raises(IndexError, match="outside the grid"):
        plan.block_at((9, 0))
    with pytest.raises(IndexError, match="outside the array"):
        plan.block_containing((10, 0))
    other = Block(index=(7, 7), core=(slice(0, 1),) * 2, read=(slice(0, 1),) * 2)
    with pytest.raises(IndexError):
        plan.neighbours(other)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(4, 0, 3), block_shape=2), r"shape \(4, 0, 3\)"),
        (dict(shape=(), block_shape=2), r"shape \(\)"),
        (dict(shape=(4, 4), block_shape=(2, 2, 2)), r"block_shape \(2, 2, 2\).*\(4, 4\)"),
        (dict(shape=(4, 4), block_shape=(2, 0)), r"block_shape \(2, 0\)"),
        (dict(shape=(4, 4), block_shape=(2, 2.5)), r"block_shape .*2\.5"),
        (dict(shape=(4, 4), block_shape=2, halo=(1, -1)), r"halo \(1, -1\)"),
        (dict(shape=(4, 4), block_shape=2, chunks=(2,)), r"chunks \(2,\)"),
        (dict(shape=(8, 8), block_shape=4, chunks=(2, 2), origin=(1, 0)), r"origin \(1, 0\).*chunk grid"),
    ],
)
def test_validation_names_the_bad_value(kwargs, match):
    shape = kwargs.pop("shape")
    block_shape = kwargs.pop("block_shape")
    with pytest.raises(ShapeError, match=match):
        plan_blocks(shape, block_shape, **kwargs)


def test_numpy_integers_accepted():
    plan = plan_blocks(np.array([6, 4]), (np.int64(3), np.int32(2)), np.int16(1))
    assert plan.shape == (6, 4) and plan.grid_shape == (2, 2) and plan.halo == (1, 1)

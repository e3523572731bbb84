import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box


def test_box_operations():
    a = Box((0, 10, 20), (5, 10, 10))
    assert a.end == (5, 20, 30)
    assert a.size == 500
    assert a.intersect(Box((3, 15, 0), (10, 10, 25))) == Box((3, 15, 20), (2, 5, 5))
    assert a.grow((1, 2, 3)) == Box((-1, 8, 17), (7, 14, 16))
    assert a.contains(Box((1, 11, 21), (1, 1, 1)))
    assert not a.contains(Box((1, 11, 21), (10, 1, 1)))
    assert Box((2, 2, 2), (2, 2, 2)).relative_to(Box((1, 0, 2), (5, 5, 5))) == (slice(1, 3), slice(2, 4), slice(0, 2))
    with pytest.raises(ValueError):
        Box((0, 0), (1, 1))


@pytest.mark.parametrize("shape,block,context", [
    ((17, 33, 50), (8, 16, 16), (2, 3, 4)),
    ((64, 64, 64), (32, 32, 32), (0, 0, 0)),
    ((5, 100, 7), (8, 30, 3), (1, 1, 1)),
])
def test_write_boxes_tile_exactly_once(shape, block, context):
    grid = BlockGrid(Box.from_shape(shape), block, context)
    cover = np.zeros(shape, np.int32)
    for b in grid:
        cover[b.write_box.to_slices()] += 1
        assert grid.volume.contains(b.read_box)
        assert b.read_box.contains(b.write_box)
    assert (cover == 1).all()
    assert len(grid) == np.prod([-(-s // k) for s, k in zip(shape, block)])


def test_context_clips_at_edges_and_is_full_inside():
    grid = BlockGrid(Box.from_shape((30, 30, 30)), (10, 10, 10), (2, 3, 4))
    first, middle, last = grid.block(0), grid.block(13), grid.block(len(grid) - 1)
    assert first.read_box == Box((0, 0, 0), (12, 13, 14))
    assert middle.grid_position == (1, 1, 1)
    assert middle.read_box == Box((8, 7, 6), (14, 16, 18))
    assert last.read_box.end == (30, 30, 30) and last.read_box.offset == (18, 17, 16)


def test_indices_are_deterministic_row_major():
    grid = BlockGrid(Box.from_shape((20, 20, 30)), (10, 10, 10))
    assert [b.grid_position for b in grid][:4] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    assert [b.index for b in grid] == list(range(len(grid)))
    assert grid.neighbours(0) == [6, 3, 1]
    assert grid.layout_hash() == BlockGrid(Box.from_shape((20, 20, 30)), (10, 10, 10)).layout_hash()
    assert grid.layout_hash() != BlockGrid(Box.from_shape((20, 20, 30)), (10, 10, 5)).layout_hash()


def test_block_shape_must_fit_chunks():
    with pytest.raises(UserError, match=r"block shape \[10, 64, 64\]: expected a multiple of the output chunk shape \[10, 64, 48\]"):
        BlockGrid.for_chunks(Box.from_shape((100, 100, 100)), (10, 64, 64), (10, 64, 48))
    grid = BlockGrid.for_chunks(Box.from_shape((100, 100, 100)), (20, 64, 96), (10, 64, 48))
    assert all(b.write_box.offset[2] % 48 == 0 for b in grid)

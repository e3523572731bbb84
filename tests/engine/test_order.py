"""Block dependencies: a stage whose blocks read their earlier neighbours' output runs in a wavefront
and equals running its blocks one by one; without waiting it would not."""

import numpy as np

from connectome.core.geometry import BlockGrid, Box, Context
from connectome.engine.order import BlockOrder
from connectome.engine.runner import run_stage
from connectome.io import create_volume

from stages_for_tests import PrefixSumParams, PrefixSumStage

SHAPE = (16, 48, 48)
BLOCK = (4, 16, 16)  # 4 x 3 x 3 = 36 blocks


def test_upstream_is_every_earlier_block_whose_write_box_the_read_box_meets():
    grid = BlockGrid(Box.from_shape((8, 8, 8)), (4, 4, 4), Context(lower=(1, 1, 1)))
    assert grid.upstream(0) == []
    assert grid.upstream(7) == [0, 1, 2, 3, 4, 5, 6]  # the far corner reads all seven others
    assert grid.upstream(3) == [0, 1, 2]
    both = BlockGrid(Box.from_shape((8, 8, 8)), (4, 4, 4), (1, 1, 1))
    assert both.upstream(0) == []  # upper context reads later blocks: never a dependency
    assert both.upstream(1) == [0]
    far = BlockGrid(Box.from_shape((1, 1, 12)), (1, 1, 2), Context(lower=(0, 0, 3)))
    assert far.upstream(5) == [3, 4]  # a context wider than a block reaches two blocks back


def test_block_order_hands_out_a_block_only_after_its_upstream():
    grid = BlockGrid(Box.from_shape((8, 8, 8)), (4, 4, 4), Context(lower=(1, 1, 1)))
    order = BlockOrder(grid, np.arange(8), reads_neighbours=True)
    assert order.take(8) == [0]
    assert order.take(8) == []  # everything else waits for block 0
    order.finished([0])
    assert order.take(8) == [1, 2, 4]
    order.finished([1, 2])
    assert order.take(8) == [3]
    order.finished([3, 4])
    assert order.take(8) == [5, 6]
    order.finished([5, 6])
    assert order.take(8) == [7] and order.remaining() == 0
    plain = BlockOrder(grid, np.arange(8))
    assert plain.take(3) == [0, 1, 2] and plain.take(8) == [3, 4, 5, 6, 7]


def _prefix_sums(tmp_path, client, name, wait):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    vol = create_volume(str(tmp_path / "raw"), SHAPE, np.uint8, BLOCK, (1, 1, 1))
    vol.write(vol.box, raw)
    out = create_volume(str(tmp_path / name / "sums"), SHAPE, np.uint64, BLOCK, (1, 1, 1))
    stage = PrefixSumStage(PrefixSumParams(wait_for_neighbours=wait), {"raw": vol.address}, {"sums": out.address})
    grid = BlockGrid.for_chunks(Box.from_shape(SHAPE), BLOCK, BLOCK, stage.context())
    report = run_stage(stage, grid, client, str(tmp_path / name), progress=False, max_batch=1)
    assert report.ran == len(grid) == 36
    expected = raw.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    return out.read(out.box).astype(np.int64), expected


def test_blockwise_with_dependencies_equals_the_serial_result(tmp_path, client):
    sums, expected = _prefix_sums(tmp_path, client, "waits", wait=True)
    np.testing.assert_array_equal(sums, expected)


def test_without_waiting_the_same_stage_is_wrong(tmp_path, client):
    """The check above can fail: blocks that do not wait read their neighbours' faces before they exist."""
    sums, expected = _prefix_sums(tmp_path, client, "races", wait=False)
    assert not np.array_equal(sums, expected)

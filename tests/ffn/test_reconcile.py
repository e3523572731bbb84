"""Reconciliation on constructed overlaps: mutual best match, chains across blocks, the ownership rule."""

import numpy as np

from connectome.core.geometry import BlockGrid, Box
from connectome.core.ids import globalise
from connectome.ffn.reconcile import lookup_table, mutual_best, reconcile
from connectome.ffn.shells import shell_arrays, shell_boxes
from connectome.io import create_volume
from connectome.io.lookup import relabel
from connectome.io.tables import save_table


def test_mutual_best_overlap_needs_both_directions_and_the_threshold():
    a = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 0])
    b = np.array([5, 5, 5, 6, 6, 6, 6, 6, 7, 7])
    m = {tuple(p) for p in mutual_best(a, b, threshold=0.5, min_overlap=1).tolist()}
    # 1 and 5 pick each other; 6 overlaps 2 and 3 by 2 voxels each (tie: the smaller id, 2)
    assert (1, 5) in m and (2, 6) in m
    assert all(p[0] != 3 for p in m)  # 3's best (6) prefers 2: not mutual
    assert len(mutual_best(a, b, 0.5, min_overlap=5)) == 0
    mixed_a, mixed_b = np.array([1, 1, 1, 1, 2, 2, 2, 2]), np.array([5, 5, 6, 6, 5, 5, 6, 6])
    assert mutual_best(mixed_a, mixed_b, 0.5, 1).tolist() == [[1, 5]]  # ties go to the smaller id: 2 and 6 differ
    assert len(mutual_best(mixed_a, mixed_b, 0.6, 1)) == 0


def test_shell_boxes_partition_the_read_box_outside_the_write_box():
    read, write = Box((0, 0, 0), (10, 12, 14)), Box((2, 3, 4), (5, 6, 7))
    cover = np.zeros(read.shape, int)
    for b in shell_boxes(read, write):
        cover[b.relative_to(read)] += 1
    cover[write.relative_to(read)] += 1
    assert np.all(cover == 1)


def _blocks(tmp_path, whole_by_block, shape, block_shape, context):
    """Write a fragments volume and overlap tables as the ffn stage would, from per-block read-box labels."""
    grid = BlockGrid(Box.from_shape(shape), block_shape, context)
    frag = create_volume(str(tmp_path / "frag"), shape, np.uint64, block_shape, (8, 8, 8))
    tables = tmp_path / "tables"
    tables.mkdir()
    for block in grid:
        labels = whole_by_block(block)
        inner = labels[block.write_box.relative_to(block.read_box)]
        frag.write(block.write_box, globalise(inner, block.index))
        ids = np.unique(inner)
        save_table(str(tables), block.index, ids=ids[ids != 0].astype(np.uint64),
                   read_box=np.array([block.read_box.offset, block.read_box.shape]),
                   write_box=np.array([block.write_box.offset, block.write_box.shape]),
                   position=np.array(block.grid_position),
                   **shell_arrays(labels.astype(np.uint32), block.read_box, block.write_box))
    return grid, frag, str(tables)


def _final(grid, frag, keys, values):
    return relabel(frag.read(frag.box), keys, values)


def test_an_object_across_three_blocks_becomes_one_and_neighbours_stay_apart(tmp_path):
    shape = (8, 8, 48)
    truth = np.zeros(shape, np.int64)
    truth[:, :4, :] = 1  # a long object through all three blocks (x)
    truth[:, 4:, :] = 2
    truth[:, 4:, 20:] = 3  # a second object starts in block 1

    def labels_of(block):  # each block numbers its objects in its own way (7 + id * (index + 1))
        part = truth[block.read_box.to_slices()]
        return np.where(part > 0, 7 + part * (block.index + 1), 0)

    grid, frag, tables = _blocks(tmp_path, labels_of, shape, (8, 8, 16), (0, 0, 4))
    keys, values, summary = reconcile(tables, frag.address, 0.5, 5)
    seg = _final(grid, frag, keys, values)
    assert summary["blocks"] == 3 and summary["overlaps"] == 2
    assert len(np.unique(seg[truth == 1])) == 1  # the chain 0-1-2 joined
    assert len(np.unique(seg)) == 3
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            if a < b:
                assert np.unique(seg[truth == a]).tolist() != np.unique(seg[truth == b]).tolist()


def test_conflicting_voxels_take_the_owning_blocks_label(tmp_path):
    shape = (4, 4, 32)

    def labels_of(block):
        part = np.ones(block.read_box.shape, np.int64)
        if block.index == 0:
            x = np.arange(block.read_box.offset[2], block.read_box.end[2])
            part[..., x >= 18] = 2  # block 0 sees a second object at x >= 18 (inside block 1's write box)
        return part

    grid, frag, tables = _blocks(tmp_path, labels_of, shape, (4, 4, 16), (0, 0, 4))
    keys, values, _ = reconcile(tables, frag.address, 0.5, 5)
    seg = _final(grid, frag, keys, values)
    assert len(np.unique(seg)) == 1  # block 1 owns x >= 16 and says one object; block 0's 1 matches it


def test_lookup_table_numbers_components_by_smallest_id():
    ids = np.array([10, 11, 12, 20, 30], np.uint64)
    keys, values = lookup_table(ids, np.array([[12, 30], [30, 11]], np.uint64))
    assert keys.tolist() == [10, 11, 12, 20, 30]
    assert values.tolist() == [1, 2, 2, 3, 2]

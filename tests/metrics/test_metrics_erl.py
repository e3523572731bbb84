"""ERL on hand-built skeletons, the blockwise node lookup, kimimaro skeletons and the skeleton file."""

from __future__ import annotations

import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.metrics import Skeletons, expected_run_length
from connectome.metrics.skeletons import NodeLookup

VOXEL = (40.0, 4.0, 4.0)  # an edge of one voxel along x is 4 nm


def _rods(lengths_in_edges, spacing=3):
    """Straight skeletons along x, one per entry, each `n` edges of one voxel (4 nm), ids 1, 2, ..."""
    nodes, edges, ids, start = [], [], [], 0
    for k, n in enumerate(lengths_in_edges):
        x = np.arange(n + 1, dtype=float)
        nodes.append(np.stack([np.full(n + 1, 1.0), np.full(n + 1, 1.0 + spacing * k), x], axis=1))
        edges.append(np.stack([np.arange(n), np.arange(1, n + 1)], axis=1) + start)
        ids.append(np.full(n + 1, k + 1))
        start += n + 1
    return Skeletons(np.concatenate(nodes), np.concatenate(edges), np.concatenate(ids))


def test_perfect_segmentation_gives_length_weighted_mean():
    sk = _rods([10, 5])  # lengths 40 nm and 20 nm
    result = expected_run_length(sk, sk.skeleton_ids * 100, VOXEL)
    # sum L_i^2 / sum L_i = (40^2 + 20^2) / 60
    assert result.erl_nm == pytest.approx((40**2 + 20**2) / 60)
    assert (result.merges, result.splits, result.runs) == (0, 0, 2)
    assert result.total_length_nm == pytest.approx(60.0)


def test_one_merge_zeroes_both_skeletons_involved():
    sk = _rods([10, 5, 5])  # 40, 20, 20 nm
    segments = np.where(sk.skeleton_ids == 3, 9, 1)  # skeletons 1 and 2 share segment 1
    result = expected_run_length(sk, segments, VOXEL)
    # only skeleton 3 keeps a run: 20^2 / (40 + 20 + 20)
    assert result.erl_nm == pytest.approx(20**2 / 80)
    assert result.merges == 1
    assert result.merged_edges == 15


def test_merge_at_a_single_node_still_zeroes_the_whole_segment():
    sk = _rods([10, 5])
    segments = sk.skeleton_ids.copy()
    segments[len(segments) - 1] = 1  # last node of skeleton 2 lies in skeleton 1's segment
    result = expected_run_length(sk, segments, VOXEL)
    # segment 1 is merging: all of skeleton 1 is lost; skeleton 2 keeps its first 4 edges (16 nm)
    # and has one split edge into segment 1
    assert result.merges == 1 and result.splits == 1
    assert result.erl_nm == pytest.approx(16**2 / 60)


def test_split_in_the_middle_halves_the_runs():
    sk = _rods([10])  # 11 nodes, 40 nm
    segments = np.where(np.arange(11) <= 5, 1, 2)  # nodes 0..5 in 1, nodes 6..10 in 2
    result = expected_run_length(sk, segments, VOXEL)
    # runs: edges 0-5 (20 nm) and 6-10 (16 nm); the cut edge 5-6 is lost: (20^2 + 16^2) / 40
    assert result.erl_nm == pytest.approx((20**2 + 16**2) / 40)
    assert (result.splits, result.runs, result.merges) == (1, 2, 0)


def test_unsegmented_nodes_cut_runs_without_counting_splits():
    sk = _rods([10])
    segments = np.ones(11, np.uint64)
    segments[3] = 0  # edges 2-3 and 3-4 are omitted
    result = expected_run_length(sk, segments, VOXEL)
    assert result.omitted_edges == 2 and result.splits == 0
    assert result.erl_nm == pytest.approx((8**2 + 24**2) / 40)


def test_leaving_and_reentering_a_segment_gives_two_runs():
    sk = _rods([10])
    segments = np.where((np.arange(11) >= 4) & (np.arange(11) <= 6), 2, 1)  # 1 1 1 1 2 2 2 1 1 1 1
    result = expected_run_length(sk, segments, VOXEL)
    # runs: 0-3 (12 nm) in 1, 4-6 (8 nm) in 2, 7-10 (12 nm) in 1; two split edges
    assert result.splits == 2 and result.runs == 3
    assert result.erl_nm == pytest.approx((12**2 + 8**2 + 12**2) / 40)


def test_edges_need_nodes_of_one_skeleton():
    with pytest.raises(ValueError, match="two different skeletons"):
        Skeletons(np.zeros((2, 3)), [[0, 1]], [1, 2])


def test_node_lookup_blockwise_equals_direct_indexing():
    rng = np.random.default_rng(0)
    shape = (13, 17, 19)
    labels = rng.integers(1, 1000, size=shape)
    nodes = rng.uniform(-0.49, np.array(shape) - 0.51, size=(200, 3))
    sk = Skeletons(nodes, np.zeros((0, 2), np.int64), np.ones(200))
    grid = BlockGrid(Box.from_shape(shape), (4, 6, 5))
    lookup = NodeLookup(sk, grid)
    found = np.full(200, -1)
    for block in grid:
        idx, values = lookup.values(block, labels[block.write_box.to_slices()])
        assert np.all(found[idx] == -1)  # each node is read in exactly one block
        found[idx] = values
    v = np.rint(nodes).astype(int)
    assert np.array_equal(found, labels[v[:, 0], v[:, 1], v[:, 2]])


def test_nodes_outside_the_volume_are_refused():
    sk = Skeletons([[0, 0, 0], [0, 0, 12]], [[0, 1]], [1, 1])
    with pytest.raises(UserError, match="1 of 2 nodes lie outside"):
        NodeLookup(sk, BlockGrid(Box.from_shape((4, 4, 10)), (4, 4, 4)))


def test_kimimaro_skeletons_follow_the_labels():
    labels = np.zeros((12, 16, 60), np.uint32)
    labels[3:9, 2:7, 5:55] = 4  # a rod of 50 voxels along x
    labels[3:9, 9:14, 10:40] = 11  # a rod of 30 voxels
    sk = Skeletons.from_labels(labels, (10.0, 10.0, 10.0))
    assert sorted(np.unique(sk.skeleton_ids).tolist()) == [4, 11]
    v = sk.voxels()
    assert np.array_equal(labels[v[:, 0], v[:, 1], v[:, 2]], sk.skeleton_ids)
    # each skeleton runs along its rod: end to end is 49 and 29 voxels of 10 nm; the path may
    # zigzag a little (diagonal steps) and stop short of the ends, so allow -20% / +15%
    lengths = np.bincount(sk.edge_skeleton_ids.astype(int), weights=sk.edge_lengths((10.0, 10.0, 10.0)))
    assert 0.8 * 490 <= lengths[4] <= 1.15 * 490 and 0.8 * 290 <= lengths[11] <= 1.15 * 290
    perfect = expected_run_length(sk, sk.skeleton_ids, (10.0, 10.0, 10.0))
    assert perfect.erl_nm == pytest.approx((lengths[4] ** 2 + lengths[11] ** 2) / (lengths[4] + lengths[11]))


def test_skeleton_file_round_trip(tmp_path):
    sk = _rods([4, 3])
    path = tmp_path / "sk.npz"
    sk.save(str(path))
    back = Skeletons.load(str(path))
    assert np.array_equal(back.nodes, sk.nodes) and np.array_equal(back.edges, sk.edges)
    assert np.array_equal(back.skeleton_ids, sk.skeleton_ids)
    with pytest.raises(UserError, match="no such skeleton file"):
        Skeletons.load(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", nodes=sk.nodes)
    with pytest.raises(UserError, match="lacks"):
        Skeletons.load(str(tmp_path / "bad.npz"))


def test_no_skeleton_length_gives_no_erl():
    sk = Skeletons(np.zeros((3, 3)), np.zeros((0, 2), np.int64), np.ones(3))  # nodes without edges
    result = expected_run_length(sk, np.ones(3), VOXEL)
    assert result.erl_nm is None and result.total_length_nm == 0.0

"""Local Sholl analysis: crossings of hand-built tubes, branches, tips and bodies; the block sums are exact
in any block layout; a block with too little context is refused."""

import numpy as np
import pytest
from neurite_blocks import blockwise_sums, interior_block_sums, whole_sums

from connectome.neurites import sholl
from connectome.neurites.features import feature_reach

VS = (8.0, 8.0, 8.0)


def _tube(seg, axis_points, radius, label):
    """Voxels within `radius` of the segment between two points (z, y, x) get `label`."""
    a, b = (np.asarray(p, float) for p in axis_points)
    g = np.stack(np.indices(seg.shape), -1).astype(float)
    t = np.clip(((g - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    d = np.linalg.norm(g - (a + t[..., None] * (b - a)), axis=-1)
    seg[d <= radius] = label


def _cross_at(seg, points, radius_nm=240.0):
    c, fill = sholl.crossings(seg, np.asarray(points), radius_nm, VS)
    return c.tolist(), fill


def test_a_straight_tube_crosses_twice_and_its_end_once():
    seg = np.zeros((80, 80, 160), np.uint64)
    _tube(seg, ((40, 40, 40), (40, 40, 200)), 4, 1)  # ends inside at x = 40, leaves through the face x = 159
    counts, fill = _cross_at(seg, [(40, 40, 100), (40, 40, 44)])
    assert counts == [2, 1]
    assert fill[1] < sholl.TIP_FILL


def test_a_branch_point_crosses_three_times_and_four_at_a_cross():
    seg = np.zeros((80, 120, 120), np.uint64)
    _tube(seg, ((40, 60, 0), (40, 60, 119)), 4, 1)
    _tube(seg, ((40, 60, 60), (40, 0, 60)), 4, 1)  # a T: a branch toward y = 0
    assert _cross_at(seg, [(40, 60, 60)])[0] == [3]
    _tube(seg, ((40, 60, 60), (40, 119, 60)), 4, 1)  # and toward y = 119: a cross
    assert _cross_at(seg, [(40, 60, 60)])[0] == [4]
    # another segment's tube through the sphere does not count, nor one of the same segment's pieces elsewhere
    # that the sphere does not meet
    _tube(seg, ((10, 0, 0), (10, 119, 119)), 4, 2)
    assert _cross_at(seg, [(40, 60, 60)])[0] == [4]


def test_inside_a_body_larger_than_the_sphere_the_sphere_is_covered():
    seg = np.zeros((80, 80, 80), np.uint64)
    z, y, x = np.indices(seg.shape)
    seg[(z - 40) ** 2 + (y - 40) ** 2 + (x - 40) ** 2 <= 35 ** 2] = 1  # a ball of radius 280 nm
    counts, fill = _cross_at(seg, [(40, 40, 40)])
    assert counts == [1] and fill[0] == 1.0


def test_outside_the_volume_counts_as_outside_the_segment():
    seg = np.ones((20, 80, 80), np.uint64)  # a slab filling the volume: the sphere leaves it on both z faces
    seg_z = np.pad(seg, [(31, 31), (0, 0), (0, 0)])
    counts, fill = sholl.crossings(seg_z, np.array([(41, 40, 40)]), 240.0, VS)
    assert counts.tolist() == [1] and 0 < fill[0] < 1


def _branching():
    seg = np.zeros((48, 96, 96), np.uint64)
    _tube(seg, ((24, 56, 0), (24, 56, 95)), 4, 1)
    _tube(seg, ((24, 56, 40), (24, 0, 40)), 4, 1)
    _tube(seg, ((8, 0, 0), (40, 95, 95)), 6, 2)
    raw = np.zeros(seg.shape, np.uint8)
    return seg, raw


def test_sholl_sums_of_blocks_equal_the_whole_volume():
    seg, raw = _branching()
    one = whole_sums(seg, raw, VS)
    assert one["sholl_points"].min() > 0 and one["sholl240_branch"][0] > 0
    for shape in ((16, 32, 32), (24, 48, 32)):
        blocks = blockwise_sums(seg, raw, VS, shape, feature_reach(VS))
        for k in sholl.SUMS:
            np.testing.assert_array_equal(blocks[k], one[k], err_msg=k)


def test_a_block_without_the_spheres_context_is_refused():
    seg, raw = _branching()
    with pytest.raises(ValueError, match="context"):
        interior_block_sums(seg, raw, VS, (16, 32, 32), (16, 16, 16))


def test_points_in_batches_give_the_same_counts(monkeypatch):
    seg, _ = _branching()
    seg_z = np.pad(seg, 31)  # zeros around the volume: every sphere fits
    pts = np.argwhere(seg != 0)[::7] + 31
    whole = sholl.crossings(seg_z, pts, 240.0, VS)
    monkeypatch.setattr(sholl, "BATCH", 5)
    batched = sholl.crossings(seg_z, pts, 240.0, VS)
    assert len(pts) > 10 and (whole[0] >= 3).any()
    for a, b in zip(whole, batched):
        np.testing.assert_array_equal(a, b)

"""Small segments join the neighbour they touch most, the same in any block layout."""

import numpy as np
import pytest

from connectome.affinity.absorb import absorb_small, context_for
from connectome.core.geometry import BlockGrid, Box


def test_a_speck_joins_the_neighbour_it_touches_most():
    seg = np.ones((6, 10, 10), np.uint64)
    seg[:, :, 5:] = 2
    seg[2:4, 3:6, 3:5] = 7  # 2 x 3 x 2 = 12 voxels; most of its faces are on segment 1's side
    out, n = absorb_small(seg, 20, (4, 4, 4))
    assert n == 1
    expected = seg.copy()
    expected[seg == 7] = 1
    np.testing.assert_array_equal(out, expected)


def test_large_long_isolated_and_cut_segments_stay():
    seg = np.ones((8, 12, 12), np.uint64)
    seg[2:4, 2:4, 2:4] = 5  # 8 voxels, but min_voxels is 8: not under it
    seg[1, 1, 1:6] = 6  # 5 voxels (under min_voxels) but 5 long: over max_extent
    seg[3:7, 7:11, 7:11] = 0  # background around the pair 8, 9:
    seg[4, 8:10, 8:10] = 8  # 4 voxels touching segment 9 (small too) and the background only
    seg[5, 8:10, 8:10] = 9
    seg[7, 0:2, 0:2] = 10  # 4 voxels on the volume's face: only a part of what it is
    out, n = absorb_small(seg, 8, (4, 4, 4))
    assert n == 0
    np.testing.assert_array_equal(out, seg)


def test_a_tie_goes_to_the_neighbour_whose_touching_voxel_comes_first():
    seg = np.zeros((3, 3, 7), np.uint64)
    seg[:, :, :3], seg[:, :, 4:] = 4, 3
    seg[1, 1, 3] = 9  # touches 4 (x - 1) and 3 (x + 1) once each, background above, below and beside
    out, n = absorb_small(seg, 2, (1, 1, 1))
    assert n == 1 and out[1, 1, 3] == 4  # 4's touching voxel (x 2) comes first
    seg[1, 0, 3] = 3  # now 9 touches 3 twice
    out, _ = absorb_small(seg, 2, (1, 1, 1))
    assert out[1, 1, 3] == 3


def test_a_speck_between_two_segments_needs_the_share():
    seg = np.ones((3, 6, 8), np.uint64)
    seg[:, :, 4:] = 2
    seg[1, 2:4, 3:5] = 7  # 2 x 2 voxels across the contact: 8 faces with 1, 8 with 2
    out, n = absorb_small(seg, 10, (4, 4, 4), min_share=0.5)
    assert n == 1 and (out[seg == 7] == 1).all()  # the tie goes to 1 (its voxel comes first), holding half
    out, n = absorb_small(seg, 10, (4, 4, 4), min_share=0.6)
    assert n == 0 and (out == seg).all()
    seg[1, 2:4, 4] = 1  # now 7 is one column inside 1: all of its 10 faces
    out, n = absorb_small(seg, 10, (4, 4, 4), min_share=0.6)
    assert n == 1 and (out[seg == 7] == 1).all()


def test_the_extent_decides_for_a_long_thin_segment():
    seg = np.ones((5, 5, 12), np.uint64)
    seg[2, 2, 2:8] = 6  # 6 voxels in a line
    assert absorb_small(seg, 8, (4, 4, 5))[1] == 0
    assert absorb_small(seg, 8, (4, 4, 6))[1] == 1


def test_min_voxels_0_returns_the_input():
    seg = np.arange(24, dtype=np.uint64).reshape(2, 3, 4)
    out, n = absorb_small(seg, 0, (4, 4, 4))
    assert n == 0 and out is seg


def _specked(seed: int) -> np.ndarray:
    """Cells of a synthetic volume with hundreds of small segments at their boundaries and inside."""
    from connectome.synth import generate

    labels = generate((24, 64, 64), (8.0, 8.0, 8.0), seed=seed).labels.astype(np.uint64)
    rng = np.random.default_rng(seed)
    seg = labels.copy()
    next_id = int(labels.max()) + 1
    for _ in range(300):
        z, y, x = rng.integers(0, (23, 62, 62))
        dz, dy, dx = rng.integers(1, (3, 4, 4))
        seg[z:z + dz, y:y + dy, x:x + dx] = next_id
        next_id += 1
    return seg


@pytest.mark.parametrize("share", [0.0, 0.5])
@pytest.mark.parametrize("block", [(8, 16, 16), (5, 23, 17), (12, 32, 64)])
def test_blocks_with_their_context_equal_the_whole_volume(block, share):
    seg = _specked(4)
    whole, n = absorb_small(seg, 30, (3, 4, 4), share)
    assert n > 100 and len(np.unique(whole)) < len(np.unique(seg))
    grow = context_for((3, 4, 4))
    volume = Box.from_shape(seg.shape)
    out = np.zeros_like(seg)
    for b in BlockGrid(volume, block):
        w = b.write_box
        read = Box.from_corners([o - g for o, g in zip(w.offset, grow)], [e + g for e, g in zip(w.end, grow)])
        read = read.intersect(volume)
        part, _ = absorb_small(seg[read.to_slices()], 30, (3, 4, 4), share, read.offset, seg.shape)
        out[w.to_slices()] = part[w.relative_to(read)]
    np.testing.assert_array_equal(out, whole)


def test_without_the_context_blocks_would_differ():
    """The context is what makes blocks exact: cut to their write boxes, they decide otherwise."""
    seg = _specked(5)
    whole, _ = absorb_small(seg, 30, (3, 4, 4))
    out = np.zeros_like(seg)
    for b in BlockGrid(Box.from_shape(seg.shape), (8, 16, 16)):
        w = b.write_box
        out[w.to_slices()] = absorb_small(seg[w.to_slices()], 30, (3, 4, 4))[0]
    assert not np.array_equal(out, whole)

"""The contingency table: exact counts, and blockwise tables that sum to the whole-volume one."""

from __future__ import annotations

import numpy as np
import pytest

from connectome.core.geometry import BlockGrid, Box
from connectome.metrics import Contingency, ContingencyAccumulator, adapted_rand_from_table, voi_from_table
from connectome.metrics import contingency as contingency_module


def _labels(shape, n_ids, seed, big=True, zero_fraction=0.1):
    """Blobby labels (a coarse random grid, upsampled and shifted) with large uint64 ids and zeros."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, n_ids + 1, size=tuple(s // 4 + 2 for s in shape))
    fine = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    off = rng.integers(0, 4, size=3)
    out = fine[off[0] : off[0] + shape[0], off[1] : off[1] + shape[1], off[2] : off[2] + shape[2]]
    out = out.astype(np.uint64) * (np.uint64(1) << np.uint64(40) if big else np.uint64(1))
    out[rng.random(shape) < zero_fraction] = 0
    return out


def _by_hand(seg, gt):
    """The table by a plain Python count over voxel pairs (small inputs only)."""
    counts: dict[tuple[int, int], int] = {}
    for s, g in zip(seg.ravel().tolist(), gt.ravel().tolist()):
        counts[(s, g)] = counts.get((s, g), 0) + 1
    keys = sorted(counts)
    return [k[0] for k in keys], [k[1] for k in keys], [counts[k] for k in keys]


def test_table_counts_pairs_exactly():
    seg = _labels((9, 10, 11), 5, seed=1)
    gt = _labels((9, 10, 11), 4, seed=2)
    t = Contingency.from_arrays(seg, gt)
    s, g, c = _by_hand(seg, gt)
    assert t.seg.tolist() == s and t.gt.tolist() == g and t.count.tolist() == c
    assert t.total == seg.size


def test_many_ids_use_wide_pair_keys():
    # 70000 seg ids x 70000 gt ids: the pair keys no longer fit 32 bits
    rng = np.random.default_rng(9)
    seg = rng.permutation(70000).astype(np.uint64).reshape(1, 70, 1000) + np.uint64(2**50)
    gt = rng.permutation(70000).reshape(1, 70, 1000)
    assert 70000 * 70000 > 2**32
    t = Contingency.from_arrays(seg, gt)
    s, g, c = _by_hand(seg, gt.astype(np.uint64))
    assert t.seg.tolist() == s and t.gt.tolist() == g and t.count.tolist() == c


def test_slabs_inside_one_array_agree(monkeypatch):
    seg = _labels((12, 13, 14), 30, seed=5)
    gt = _labels((12, 13, 14), 20, seed=6)
    whole = Contingency.from_arrays(seg, gt)
    monkeypatch.setattr(contingency_module, "SLAB_VOXELS", 97)  # many slabs, odd size
    assert Contingency.from_arrays(seg, gt).equals(whole)


def test_signed_ids_sort_as_uint64():
    seg = np.array([[[-1, 3, 3, -1, 0]]], np.int32)
    gt = np.array([[[1, -2, 1, 1, 0]]], np.int64)
    t = Contingency.from_arrays(seg, gt)
    s, g, c = _by_hand(seg.astype(np.uint64), gt.astype(np.uint64))
    assert t.seg.tolist() == s and t.gt.tolist() == g and t.count.tolist() == c


def test_extreme_uint64_ids():
    seg = np.array([[[2**64 - 1, 2**63, 5, 2**64 - 1]]], np.uint64)
    gt = np.array([[[1, 1, 2, 2]]], np.uint8)
    t = Contingency.from_arrays(seg, gt)
    assert t.seg.tolist() == [5, 2**63, 2**64 - 1, 2**64 - 1]
    assert t.gt.tolist() == [2, 1, 1, 2] and t.count.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("block_shape", [(5, 7, 9), (3, 11, 4), (1, 1, 32), (40, 40, 40)])
def test_blockwise_table_and_metrics_equal_whole_volume(block_shape):
    shape = (17, 23, 29)  # no block shape above divides it
    seg = _labels(shape, 40, seed=7)
    gt = _labels(shape, 25, seed=8)
    whole = Contingency.from_arrays(seg, gt)
    acc = ContingencyAccumulator(batch_rows=50)  # forces several intermediate merges
    for block in BlockGrid(Box.from_shape(shape), block_shape):
        s = block.write_box.to_slices()
        acc.add(Contingency.from_arrays(seg[s], gt[s]))
    blockwise = acc.result()
    assert blockwise.equals(whole)
    assert voi_from_table(blockwise) == voi_from_table(whole)
    assert adapted_rand_from_table(blockwise) == adapted_rand_from_table(whole)


def test_majority_gt_prefers_labelled_overlap():
    seg = np.array([[[1, 1, 1, 1, 2, 2, 3, 3, 4]]])
    gt = np.array([[[0, 0, 0, 5, 6, 7, 0, 0, 9]]])
    # seg 1: mostly background but one labelled voxel (5) -> 5; seg 2: tie 6/7 -> smaller id 6;
    # seg 3: only background -> 0; seg 4 -> 9
    ids, mapped = Contingency.from_arrays(seg, gt).majority_gt()
    assert ids.tolist() == [1, 2, 3, 4]
    assert mapped.tolist() == [5, 6, 0, 9]

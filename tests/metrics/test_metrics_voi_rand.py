"""VOI and adapted Rand: the gala reference values, hand-worked cases, and an independent CREMI check."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse

from connectome.metrics import Contingency, adapted_rand, adapted_rand_stats, voi

from conftest import data_file

GALA_SEGS = ["test_ws_fragments", "test_seg1_gala", "test_seg4_gala"]


@pytest.fixture(scope="module")
def gala():
    with np.load(data_file("gala_fib_crops/gala_fib.npz")) as f:
        return {k: f[k] for k in [*GALA_SEGS, "test_gt", "reference_split_vi_rows_ws_seg1_seg4"]}


@pytest.mark.realdata
@pytest.mark.parametrize("row, name", list(enumerate(GALA_SEGS)))
def test_voi_reproduces_gala_reference(gala, row, name):
    reference = gala["reference_split_vi_rows_ws_seg1_seg4"]
    assert reference.shape == (3, 2)  # rows: ws, seg1, seg4; columns: [H(gt|seg), H(seg|gt)]
    split, merge = voi(gala[name], gala["test_gt"])
    assert merge == pytest.approx(reference[row, 0], abs=1e-6)
    assert split == pytest.approx(reference[row, 1], abs=1e-6)


def _cremi_adapted_rand(seg, gt):
    """The SNEMI3D/CREMI script's arithmetic, written out with scipy.sparse as an independent check."""
    a_ids, b_ids = gt.ravel().astype(np.int64), seg.ravel().astype(np.int64)
    n = a_ids.size
    p = sparse.csr_matrix((np.ones(n), (a_ids, b_ids)), shape=(a_ids.max() + 1, b_ids.max() + 1))
    a = p[1:, :]
    b = p[1:, 1:]
    c = np.asarray(p[1:, 0].todense())
    a_i = np.asarray(a.sum(1))
    b_i = np.asarray(b.sum(0))
    sum_a = np.sum(a_i * a_i)
    sum_b = np.sum(b_i * b_i) + c.sum() / n
    sum_ab = np.sum(np.asarray(b.todense()) ** 2) + c.sum() / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 1.0 - 2.0 * precision * recall / (precision + recall)


@pytest.mark.realdata
@pytest.mark.parametrize("name", GALA_SEGS)
def test_adapted_rand_matches_cremi_arithmetic_on_gala(gala, name):
    assert adapted_rand(gala[name], gala["test_gt"]) == pytest.approx(
        _cremi_adapted_rand(gala[name], gala["test_gt"]), abs=1e-12
    )


def test_adapted_rand_matches_cremi_arithmetic_with_seg_zeros():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 6, size=(6, 7, 8))
    seg = rng.integers(0, 5, size=(6, 7, 8))  # seg 0 inside labelled gt: the c / n term matters
    assert (seg[gt != 0] == 0).any()
    assert adapted_rand(seg, gt) == pytest.approx(_cremi_adapted_rand(seg, gt), abs=1e-12)


def test_adapted_rand_identical_is_zero():
    # gt == seg: sum_A = sum_B = sum_AB = sum of squared object sizes, so P = R = 1, error 0
    gt = np.array([[[1, 1, 2, 2, 2, 3]]])
    assert adapted_rand(gt, gt) == pytest.approx(0.0, abs=1e-15)
    stats = adapted_rand_stats(Contingency.from_arrays(gt, gt))
    assert stats.precision == pytest.approx(1.0) and stats.recall == pytest.approx(1.0)


def test_adapted_rand_all_merged():
    # gt: two objects of 2 voxels; seg: one segment of 4.
    # sum_A = 2^2 + 2^2 = 8, sum_B = 4^2 = 16, sum_AB = 2^2 + 2^2 = 8
    # P = 8/16 = 1/2, R = 8/8 = 1, F = 2 * 1/2 / (3/2) = 2/3, error = 1/3
    gt = np.array([[[1, 1, 2, 2]]])
    seg = np.array([[[7, 7, 7, 7]]])
    assert adapted_rand(seg, gt) == pytest.approx(1 / 3, abs=1e-12)


def test_adapted_rand_all_split():
    # gt: one object of 4 voxels; seg: 4 singletons.
    # sum_A = 16, sum_B = 4 * 1 = 4, sum_AB = 4; P = 1, R = 1/4, F = 2/5, error = 3/5
    gt = np.array([[[5, 5, 5, 5]]])
    seg = np.array([[[1, 2, 3, 4]]])
    assert adapted_rand(seg, gt) == pytest.approx(3 / 5, abs=1e-12)


def test_adapted_rand_ignores_gt_zero():
    # gt == 0 voxels, whatever their seg label, do not change the score (no seg 0 here)
    gt = np.array([[[0, 0, 5, 5, 5, 5]]])
    seg = np.array([[[1, 9, 1, 2, 3, 4]]])
    assert adapted_rand(seg, gt) == pytest.approx(3 / 5, abs=1e-12)


def test_adapted_rand_seg_zero_as_in_snemi3d():
    # gt: one object of 4 voxels (n = 4, all labelled); seg: [1, 1, 0, 0], so c = 2 seg-0 voxels.
    # sum_A = 16, sum_B = 2^2 + c/n = 4.5, sum_AB = 2^2 + c/n = 4.5
    # P = 1, R = 4.5/16 = 9/32, F = 2R/(1+R) = 18/41, error = 23/41
    gt = np.array([[[3, 3, 3, 3]]])
    seg = np.array([[[1, 1, 0, 0]]])
    assert adapted_rand(seg, gt) == pytest.approx(23 / 41, abs=1e-12)


def test_voi_hand_cases():
    gt = np.array([[[1, 1, 1, 1]]])
    # seg cuts the one object into halves: H(seg|gt) = 1 bit, H(gt|seg) = 0
    assert voi(np.array([[[1, 1, 2, 2]]]), gt) == pytest.approx((1.0, 0.0), abs=1e-12)
    # seg joins two equal objects: split 0, merge 1 bit
    assert voi(np.array([[[4, 4, 4, 4]]]), np.array([[[1, 1, 2, 2]]])) == pytest.approx((0.0, 1.0), abs=1e-12)
    # four singletons over one object: split log2(4) = 2 bits
    assert voi(np.array([[[1, 2, 3, 4]]]), gt) == pytest.approx((2.0, 0.0), abs=1e-12)


def test_voi_excludes_gt_zero_but_not_seg_zero():
    # the gt == 0 voxels carry seg ids 8 and 9, which would add split entropy if counted
    gt = np.array([[[0, 0, 1, 1, 1, 1]]])
    seg = np.array([[[8, 9, 1, 1, 2, 2]]])
    assert voi(seg, gt) == pytest.approx((1.0, 0.0), abs=1e-12)
    # seg 0 is an ordinary segment: joining two objects under 0 is a 1-bit merge
    assert voi(np.array([[[0, 0, 0, 0]]]), np.array([[[1, 1, 2, 2]]])) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_all_background_gt_is_refused():
    gt = np.zeros((2, 2, 2), np.uint64)
    with pytest.raises(ValueError, match="no labelled voxels"):
        voi(gt + 1, gt)
    with pytest.raises(ValueError, match="no labelled voxels"):
        adapted_rand(gt + 1, gt)


def test_float_labels_are_refused():
    with pytest.raises(TypeError, match="integer labels"):
        voi(np.zeros((2, 2, 2), np.float32), np.ones((2, 2, 2), np.uint64))

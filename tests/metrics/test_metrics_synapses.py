"""Synapse detection scores: one-to-one matching within a tolerance, and the partner check."""

from __future__ import annotations

import numpy as np
import pytest

from connectome.metrics import Contingency, match_points, synapse_scores


def _on_x(*xs):
    return np.array([[0.0, 0.0, x] for x in xs])


def test_matching_finds_more_pairs_than_greedy_nearest_first():
    # p0 at 0, p1 at 0.8; g0 at 0.1, g1 at -0.9; tolerance 1.
    # Candidates: p0-g0 0.1, p0-g1 0.9, p1-g0 0.7 (p1-g1 is 1.7, too far).
    # Nearest-first takes p0-g0 and strands p1: 1 match. Two matches exist: p0-g1 and p1-g0.
    pred, gt = _on_x(0.0, 0.8), _on_x(0.1, -0.9)
    p, g = match_points(pred, gt, 1.0)
    assert sorted(zip(p.tolist(), g.tolist())) == [(0, 1), (1, 0)]
    s = synapse_scores(pred, gt, 1.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 0, 0)
    assert s.f1 == pytest.approx(1.0)


def test_matching_prefers_least_total_distance_among_largest():
    # both assignments match 2 pairs; p0-g0 + p1-g1 costs 0.2 + 0.2, the crossed one 0.8 + 0.4
    pred, gt = _on_x(0.0, 1.0), _on_x(0.2, 0.8)
    p, g = match_points(pred, gt, 1.0)
    assert sorted(zip(p.tolist(), g.tolist())) == [(0, 0), (1, 1)]


def test_tolerance_in_nm_through_voxel_size():
    pred = np.array([[10.0, 10.0, 10.0], [20.0, 20.0, 20.0]])  # voxels
    gt = np.array([[10.0, 10.0, 12.0], [21.0, 20.0, 20.0]])  # 2 x-voxels (8 nm) and 1 z-voxel (40 nm) off
    s = synapse_scores(pred, gt, tolerance_nm=20.0, voxel_size=(40.0, 4.0, 4.0))
    # only the first pair lies within 20 nm: P = R = F1 = 1/2
    assert (s.precision, s.recall, s.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert s.matched_pred.tolist() == [0] and s.matched_gt.tolist() == [0]


def test_counts_with_unequal_sets():
    pred = _on_x(0, 100, 200, 300)
    gt = _on_x(1, 101, 500)
    s = synapse_scores(pred, gt, 5.0)
    # 2 matches of 4 predictions and 3 truths: P = 1/2, R = 2/3, F1 = 2PR/(P+R) = 4/7
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 2, 1)
    assert s.f1 == pytest.approx(4 / 7)


def test_empty_sets():
    s = synapse_scores(np.zeros((0, 3)), _on_x(1, 2), 5.0)
    assert (s.precision, s.recall, s.f1) == (1.0, 0.0, 0.0)
    s = synapse_scores(np.zeros((0, 3)), np.zeros((0, 3)), 5.0)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)


def test_partner_check_through_segmentation_overlap():
    # segments 10 and 20 lie in gt objects 1 and 2; segment 30 lies in gt 3
    seg = np.array([[[10, 10, 20, 20, 30, 30]]])
    gt = np.array([[[1, 1, 2, 2, 3, 3]]])
    table = Contingency.from_arrays(seg, gt)
    pred, truth = _on_x(0, 50), _on_x(1, 51)
    gt_partners = [[1, 2], [2, 3]]
    right = synapse_scores(pred, truth, 5.0, pred_partners=[[10, 20], [20, 30]], gt_partners=gt_partners,
                           seg_to_gt=table)
    assert right.true_positives == 2
    # the second prediction names the wrong postsynaptic segment (10 -> gt 1, not 3)
    wrong = synapse_scores(pred, truth, 5.0, pred_partners=[[10, 20], [20, 10]], gt_partners=gt_partners,
                           seg_to_gt=table)
    assert wrong.true_positives == 1 and wrong.matched_pred.tolist() == [0]
    # without a table the ids are compared as they are: nothing agrees
    raw = synapse_scores(pred, truth, 5.0, pred_partners=[[10, 20], [20, 30]], gt_partners=gt_partners)
    assert raw.true_positives == 0


def test_partner_check_lets_a_farther_correct_match_win():
    # p0 sits nearest g0 but names g1's partners; with the check it must match g1 (within tolerance)
    pred, truth = _on_x(0.0), _on_x(0.5, 2.0)
    s = synapse_scores(pred, truth, 3.0, pred_partners=[[7, 8]], gt_partners=[[1, 2], [7, 8]])
    assert s.matched_gt.tolist() == [1]

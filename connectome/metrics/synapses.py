"""Synapse detection precision, recall and F1 under a distance tolerance, with an optional partner check.

Predicted and ground-truth synapses are matched one to one; a pair may match only when the two
locations lie within `tolerance_nm` (and, with the partner check, when the predicted pre- and
postsynaptic segments map to the ground-truth pre- and postsynaptic objects). Among all such
matchings we take one with the most pairs and, among those, the least total distance: the
Hungarian algorithm (scipy's linear_sum_assignment) run on each connected group of candidate
pairs, which a KD-tree finds. Greedy nearest-first matching is cheaper but can lose matches in
dense clusters (a prediction takes the nearest truth that was the only option of another
prediction), which would understate recall for no fault of the detector; the grouping keeps the
Hungarian cost small because candidate groups are small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from connectome.metrics.contingency import Contingency


@dataclass(frozen=True)
class SynapseScores:
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    matched_pred: np.ndarray  # indices into the predictions
    matched_gt: np.ndarray  # indices into the ground truth, pairwise with matched_pred


def _to_nm(points, voxel_size) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points if voxel_size is None else points * np.asarray(voxel_size, dtype=np.float64)


def match_points(pred_nm: np.ndarray, gt_nm: np.ndarray, tolerance_nm: float, allowed=None):
    """One-to-one matching of two point sets within `tolerance_nm`: most pairs, then least distance.

    `allowed(pred_idx, gt_idx) -> bool array` may veto candidate pairs. Returns (pred idx, gt idx).
    """
    empty = np.zeros(0, np.int64)
    if len(pred_nm) == 0 or len(gt_nm) == 0:
        return empty, empty
    near = cKDTree(pred_nm).sparse_distance_matrix(cKDTree(gt_nm), tolerance_nm, output_type="ndarray")
    p, g, d = near["i"].astype(np.int64), near["j"].astype(np.int64), near["v"]
    if allowed is not None and len(p):
        keep = np.asarray(allowed(p, g), dtype=bool)
        p, g, d = p[keep], g[keep], d[keep]
    if len(p) == 0:
        return empty, empty
    n_pred = len(pred_nm)
    n_nodes = n_pred + len(gt_nm)
    graph = coo_matrix((np.ones(len(p)), (p, g + n_pred)), shape=(n_nodes, n_nodes))
    _, group = connected_components(graph, directed=False)
    edge_group = group[p]
    order = np.argsort(edge_group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, edge_group[order][1:] != edge_group[order][:-1], True])
    out_p, out_g = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # one small assignment problem per group
        e = order[lo:hi]
        rows, row_of = np.unique(p[e], return_inverse=True)
        cols, col_of = np.unique(g[e], return_inverse=True)
        # a non-candidate costs more than all candidates together: fewest of them first
        big = tolerance_nm * (min(len(rows), len(cols)) + 1) + 1.0
        cost = np.full((len(rows), len(cols)), big)
        cost[row_of, col_of] = d[e]
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < big
        out_p.append(rows[r[real]])
        out_g.append(cols[c[real]])
    return np.concatenate(out_p), np.concatenate(out_g)


def _id_mapper(table: Contingency | None):
    """seg ids -> gt ids by largest overlap (ids absent from the table map to 0)."""
    if table is None:
        return lambda ids: np.asarray(ids).astype(np.uint64)
    seg_ids, gt_ids = table.majority_gt()

    def mapped(ids):
        ids = np.asarray(ids).astype(np.uint64)
        if len(seg_ids) == 0:
            return np.zeros(ids.shape, np.uint64)
        at = np.minimum(np.searchsorted(seg_ids, ids), len(seg_ids) - 1)
        return np.where(seg_ids[at] == ids, gt_ids[at], np.uint64(0))

    return mapped


def synapse_scores(
    pred_positions,
    gt_positions,
    tolerance_nm: float,
    voxel_size: Sequence[float] | None = None,
    pred_partners=None,
    gt_partners=None,
    seg_to_gt: Contingency | None = None,
) -> SynapseScores:
    """Precision, recall and F1 of predicted synapse locations against ground-truth ones.

    Positions are (N, 3) in (z, y, x): voxels scaled by `voxel_size`, or nm when it is None.
    With `pred_partners` (P, 2) and `gt_partners` (G, 2) as (pre id, post id), a pair matches
    only when the partners agree: predicted segment ids are translated to ground-truth ids by
    largest overlap in `seg_to_gt` (the segmentation-vs-gt contingency table), or compared as
    they are when it is None (both already in one id space). Empty sets score 1.0 where nothing
    was to be found or claimed (no predictions: precision 1; no truth: recall 1).
    """
    pred = _to_nm(pred_positions, voxel_size)
    gt = _to_nm(gt_positions, voxel_size)
    allowed = None
    if (pred_partners is None) != (gt_partners is None):
        raise ValueError("give partners for both predictions and ground truth, or for neither")
    if pred_partners is not None:
        pred_partners = np.asarray(pred_partners).reshape(-1, 2)
        gt_partners = np.asarray(gt_partners).astype(np.uint64).reshape(-1, 2)
        if len(pred_partners) != len(pred) or len(gt_partners) != len(gt):
            raise ValueError("one (pre, post) pair per synapse expected")
        pred_in_gt = _id_mapper(seg_to_gt)(pred_partners)

        def allowed(p, g):
            return np.all(pred_in_gt[p] == gt_partners[g], axis=1)

    mp, mg = match_points(pred, gt, float(tolerance_nm), allowed)
    tp = len(mp)
    fp, fn = len(pred) - tp, len(gt) - tp
    precision = tp / len(pred) if len(pred) else 1.0
    recall = tp / len(gt) if len(gt) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SynapseScores(precision, recall, f1, tp, fp, fn, mp, mg)

"""Adapted Rand error as scored by SNEMI3D and CREMI (design section 5).

With n_ij the voxel count of (gt i, seg j), over gt i != 0 only:

    sum_A  = sum_i (sum_j n_ij)^2                 gt object sizes, seg 0 included
    sum_B  = sum_{j != 0} (sum_i n_ij)^2 + c / n  segment sizes inside labelled gt
    sum_AB = sum_{i, j != 0} n_ij^2 + c / n
    precision = sum_AB / sum_B, recall = sum_AB / sum_A
    error = 1 - 2 precision recall / (precision + recall)

where c is the number of labelled voxels (gt != 0) that the segmentation leaves at 0 and n the
number of voxels in the whole volume, gt == 0 included. That is the SNEMI3D MATLAB script as ported
to Python by gala and used verbatim by cremi_python (`adapted_rand_error`): a seg-0 voxel inside
labelled gt still counts in its gt object's size (it lowers recall) but forms no correct pair, up
to the tiny c / n term both scripts add. We keep that term so that scores compare with theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectome.metrics.contingency import Contingency


@dataclass(frozen=True)
class AdaptedRand:
    error: float
    precision: float
    recall: float


def _squared_group_sums(ids: np.ndarray, count: np.ndarray) -> float:
    _, index = np.unique(ids, return_inverse=True)
    sums = np.bincount(index, weights=count)
    return float(sums @ sums)


def adapted_rand_stats(table: Contingency) -> AdaptedRand:
    """Adapted Rand error, precision and recall from a contingency table (gt == 0 excluded)."""
    n = float(table.total)
    t = table.labelled()
    if len(t) == 0:
        raise ValueError("ground truth has no labelled voxels (gt == 0 everywhere)")
    count = t.count.astype(np.float64)  # sums of squares may pass 2**63 on large volumes
    on_seg = t.seg != 0
    unsegmented = float(count[~on_seg].sum())
    sum_a = _squared_group_sums(t.gt, count)
    sum_b = _squared_group_sums(t.seg[on_seg], count[on_seg]) + unsegmented / n
    sum_ab = float(count[on_seg] @ count[on_seg]) + unsegmented / n
    precision = sum_ab / sum_b if sum_b else 0.0
    recall = sum_ab / sum_a
    f_score = 2.0 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AdaptedRand(1.0 - f_score, precision, recall)


def adapted_rand_from_table(table: Contingency) -> float:
    """Adapted Rand error (1 - Rand F-score, SNEMI3D) from a contingency table."""
    return adapted_rand_stats(table).error


def adapted_rand(seg: np.ndarray, gt: np.ndarray) -> float:
    """Adapted Rand error (1 - Rand F-score, SNEMI3D) of two label arrays; gt == 0 excluded."""
    return adapted_rand_from_table(Contingency.from_arrays(seg, gt))

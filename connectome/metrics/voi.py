"""Variation of information split into its split and merge parts (design section 5).

split = H(seg | gt): how much the segmentation cuts ground-truth objects (over-segmentation);
merge = H(gt | seg): how much one segment mixes ground-truth objects (under-segmentation).
Both in bits, over the voxels where gt != 0. Segment id 0 is an ordinary segment here: voxels a
segmentation leaves at 0 inside labelled gt count as one large segment (a merge).
"""

from __future__ import annotations

import numpy as np

from connectome.metrics.contingency import Contingency


def _group_sums(ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    """For each row, the total count of all rows sharing its id."""
    _, index = np.unique(ids, return_inverse=True)
    return np.bincount(index, weights=count)[index]


def voi_from_table(table: Contingency) -> tuple[float, float]:
    """(split, merge) = (H(seg|gt), H(gt|seg)) in bits from a contingency table; gt == 0 dropped."""
    t = table.labelled()
    if len(t) == 0:
        raise ValueError("ground truth has no labelled voxels (gt == 0 everywhere)")
    count = t.count.astype(np.float64)
    p = count / count.sum()
    split = -np.sum(p * np.log2(count / _group_sums(t.gt, count)))
    merge = -np.sum(p * np.log2(count / _group_sums(t.seg, count)))
    # a perfect score can come out as -0.0 or -1e-17: report it as 0
    return max(float(split), 0.0) + 0.0, max(float(merge), 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0


def voi(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(split, merge) = (H(seg|gt), H(gt|seg)) in bits of two label arrays; gt == 0 excluded."""
    return voi_from_table(Contingency.from_arrays(seg, gt))

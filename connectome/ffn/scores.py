"""Validation scores of a segmentation against ground truth: VOI and a merge count."""

from __future__ import annotations

import numpy as np

from connectome.metrics.contingency import Contingency
from connectome.metrics.voi import voi


def merge_count(seg: np.ndarray, gt: np.ndarray, min_voxels: int = 50, min_fraction: float = 0.05) -> int:
    """Segments holding two or more gt objects with >= max(min_voxels, min_fraction of the segment) voxels each."""
    keep = (gt != 0) & (seg != 0)
    table = Contingency.from_arrays(seg[keep], gt[keep])
    s, count = table.seg, table.count
    order = np.argsort(s, kind="stable")
    s, count = s[order], count[order]
    ids, start = np.unique(s, return_index=True)
    totals = np.add.reduceat(count, start)
    big = count >= np.maximum(min_voxels, min_fraction * np.repeat(totals, np.diff(np.r_[start, len(s)])))
    return int((np.add.reduceat(big.astype(np.int64), start) >= 2).sum()) if len(s) else 0


def validation_scores(seg: np.ndarray, gt: np.ndarray) -> dict:
    """voi_split, voi_merge, voi (bits, gt == 0 excluded), merges and the number of segments."""
    split, merge = voi(seg, gt)
    return {"voi_split": float(split), "voi_merge": float(merge), "voi": float(split + merge),
            "merges": merge_count(seg, gt), "segments": int(np.unique(seg[seg != 0]).size),
            "unsegmented": float((seg[gt != 0] == 0).mean())}

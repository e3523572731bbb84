"""Over-segmentation consensus (Januszewski et al. 2018): voxels stay together only where every run agrees.

Runs of the FFN that differ only in seed order (forward, reverse) merge different objects, since
a merge depends on which object reaches a contact first; an object both runs filled as one is
far less likely to be a merge. The consensus piece of a voxel is the connected component of
voxels that carry its label in every run; a voxel any run left unsegmented is 0; pieces smaller
than `min_size` are dropped (0), to be filled from their neighbours like any unsegmented voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import fastremap
import numpy as np


def consensus(runs: Sequence[np.ndarray], min_size: int = 1) -> np.ndarray:
    """Consensus pieces (uint32 1..n, 0 = unsegmented) of label volumes of one shape (0 = unsegmented)."""
    if not runs:
        raise ValueError("consensus needs at least one run")
    key = np.zeros(runs[0].shape, np.uint64)
    unsegmented = np.zeros(runs[0].shape, bool)
    for labels in runs:
        if labels.shape != key.shape:
            raise ValueError(f"consensus: runs of shapes {runs[0].shape} and {labels.shape}")
        dense, _ = fastremap.renumber(np.asarray(labels), preserve_zero=True)  # 0..k: the joint key stays small
        key = key * np.uint64(int(dense.max()) + 1) + dense.astype(np.uint64)
        unsegmented |= dense == 0
    key[unsegmented] = 0
    pieces = cc3d.connected_components(key, connectivity=6, out_dtype=np.uint64)
    if min_size > 1:
        pieces = cc3d.dust(pieces, threshold=min_size, connectivity=6, in_place=True)
    out, _ = fastremap.renumber(pieces, preserve_zero=True)
    return out.astype(np.uint32)

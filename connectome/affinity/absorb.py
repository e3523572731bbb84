"""Small segments absorbed into the neighbour they touch most, decided the same in any block layout.

After the global merge a volume holds many segments of a few voxels: watershed basins in the
membrane between two neurons that the merge left alone. A segment is *small* when it has fewer
than `min_voxels` voxels and its bounding box is at most `max_extent` voxels along every axis; a
segment that touches the volume's faces is never small (the volume shows only a part of it). A
small segment takes the id of the non-small segment it shares the most voxel faces with (ties: the
one whose touching voxel comes first in the volume's C order) when that segment holds at least
`min_share` of all its faces with other segments. Small segments that touch only small ones, or
nothing, or sit between several segments (no one of them holding `min_share`), stay as they are:
a speck at a junction of two neurites is as likely to belong to the one it touches less.

Blockwise: a block relabels its write box grown by `context_for(max_extent)` (twice the extent
each side). A small segment that meets the write box then lies inside the grown box with all its
neighbours' faces, and any neighbour cut by the grown box's inner faces is at least `max_extent + 1`
long, so not small: every decision is the one a single block over the whole volume makes. This
needs every segment to be connected (6-connected voxels): the affinity chain's are (basins are
connected, and the merge joins touching fragments only); a segment in two distant pieces could look
small in a block that sees one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi


def context_for(max_extent: Sequence[int]) -> tuple[int, int, int]:
    """Voxels a block reads beyond its write box on each side."""
    return tuple(2 * int(m) for m in max_extent)  # type: ignore[return-value]


def _cut_labels(lab: np.ndarray) -> np.ndarray:
    """Labels on the array's faces: segments that may go on beyond them, into other blocks or out of the
    volume (a neurite that only enters the volume is not a speck)."""
    return np.unique(np.concatenate([np.take(lab, [index], axis=axis).ravel()
                                     for axis in range(3) for index in (0, -1)]))


def _contacts(lab: np.ndarray, small: np.ndarray, origin: Sequence[int], volume_shape: Sequence[int]):
    """(small label, neighbour label, global C-order index of the neighbour's voxel), one row per voxel face
    between a small segment and another label (0 and small ones included)."""
    rows = []
    for axis in range(3):
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        a, b = lab[hi], lab[lo]
        for s_side, o_side, shift in ((a, b, 0), (b, a, 1)):  # shift: the neighbour's offset along the axis
            face = small[s_side] & (s_side != o_side)
            where = np.nonzero(face)
            if not where[0].size:
                continue
            coords = [w + origin[d] + (shift if d == axis else 0) for d, w in enumerate(where)]
            index = np.ravel_multi_index(coords, tuple(volume_shape))
            rows.append(np.stack([s_side[where], o_side[where], index.astype(np.int64)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


def absorb_small(seg: np.ndarray, min_voxels: int, max_extent: Sequence[int], min_share: float = 0.0,
                 origin: Sequence[int] = (0, 0, 0),
                 volume_shape: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
    """`seg` (a block's grown box of the merged segmentation at `origin` in a volume of `volume_shape`) with
    every small segment relabelled to its neighbour, and how many were."""
    volume_shape = tuple(seg.shape) if volume_shape is None else tuple(volume_shape)
    if min_voxels <= 0 or seg.size == 0:
        return seg, 0
    lab, _ = fastremap.renumber(seg, preserve_zero=True, in_place=False)
    lab = lab.astype(np.int64, copy=False)
    ids = np.zeros(int(lab.max()) + 1, seg.dtype)
    ids[lab.ravel()] = seg.ravel()
    n = ids.size
    size = np.bincount(lab.ravel(), minlength=n)
    extent = np.array([[s.stop - s.start for s in box] if box else [0, 0, 0]
                       for box in ndi.find_objects(lab)], np.int64).reshape(-1, 3)
    small = np.zeros(n, bool)
    small[1:] = (size[1:] < min_voxels) & (extent <= np.asarray(max_extent)).all(axis=1)
    small[_cut_labels(lab)] = False
    rows = _contacts(lab, small, origin, volume_shape)
    faces_of = np.bincount(rows[:, 0], minlength=n)  # every face of each small segment with another label
    rows = rows[~small[rows[:, 1]] & (rows[:, 1] != 0)]
    if not rows.size:
        return seg, 0
    pair = rows[:, 0] * n + rows[:, 1]
    order = np.lexsort((rows[:, 2], pair))
    pair, index = pair[order], rows[order, 2]
    starts = np.r_[0, np.nonzero(np.diff(pair))[0] + 1]
    faces = np.diff(np.r_[starts, pair.size])
    s, o, first = pair[starts] // n, pair[starts] % n, index[starts]  # first: the pair's least voxel index
    best = np.lexsort((first, -faces, s))  # per small segment: most faces, then the earliest voxel
    keep = np.r_[True, s[best][1:] != s[best][:-1]]
    best = best[keep]
    enclosed = faces[best] >= min_share * faces_of[s[best]]
    best = best[enclosed]
    target = np.arange(n)
    target[s[best]] = o[best]
    return ids[target[lab]], int(best.size)

"""Blank image regions and the band of tissue beside them, left out of every segment.

A region is blank where the image is exactly 0 over at least a `BLANK_SIDE` x `BLANK_SIDE` square of
a section: the padding of smaller sections, the margins an aligned section's warp leaves, a lab's
blacked-out region. Real EM at 0 is thinner than that: on the shared real sets (medulla, gala, CREMI,
ISBI, VNC) no voxel is in such a square, and after clipping the darkest 0.5 % to 0 at most 4 are.

The affinity networks never saw blank regions in training: they predict high affinities (240-254
of 255) in the last few voxels of tissue beside one, so the neurons touching it merge along that
band. The affinities stage sets every edge that touches a blank voxel, or a voxel within `band`
voxels of one in its section, to 0; those voxels then join no fragment and nothing merges through
them (as `affinity.masking` does for a mask).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BLANK_SIDE = 11


def blank_reach(band: int) -> int:
    """How far (voxels, in plane) the blank voxels of a box depend on the image around it."""
    return 0 if band < 0 else 2 * (BLANK_SIDE // 2) + band


def blank_voxels(raw: np.ndarray, band: int) -> np.ndarray | None:
    """(z, y, x) bool: blank voxels of `raw` and those within `band` voxels of one in their section.

    Box-shaped (Chebyshev) in each section; None where nothing in `raw` is blank. The array's y and x faces
    are taken as extended (a region cut by a volume's face is still found there), so it is exact only farther
    than `blank_reach(band)` from faces that are not the volume's.
    """
    zero = raw == 0
    if band < 0 or not zero.any():
        return None
    core = ndi.minimum_filter(zero, size=(1, BLANK_SIDE, BLANK_SIDE), mode="nearest")
    if not core.any():
        return None
    return ndi.maximum_filter(core, size=(1, BLANK_SIDE + 2 * band, BLANK_SIDE + 2 * band), mode="nearest")

"""Read a box that may extend past the volume, mirroring the volume at its faces.

The mirror is a function of global coordinates only, so two blocks see identical values for
the same virtual voxel however the volume is tiled: what seam-free inference needs.
"""

from __future__ import annotations

import numpy as np

from connectome.core.geometry import Box
from connectome.io.base import Volume


def mirror_indices(begin: int, end: int, size: int) -> np.ndarray:
    """Global indices begin..end-1 mirrored into [0, size) (edge voxel not repeated)."""
    idx = np.arange(begin, end)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def read_reflected(volume: Volume, box: Box) -> np.ndarray:
    """Voxels of `box` (channels first if any), mirrored where it leaves the volume."""
    if volume.box.contains(box):
        return volume.read(box)
    axes = [mirror_indices(o, e, s) for o, e, s in zip(box.offset, box.end, volume.shape)]
    lo = [int(a.min()) for a in axes]
    hi = [int(a.max()) + 1 for a in axes]
    data = volume.read(Box.from_corners(lo, hi))
    index = np.ix_(*(a - low for a, low in zip(axes, lo)))
    return data[(Ellipsis,) + index]

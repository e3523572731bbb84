"""Global lattices of sample points (patches, Sholl spheres): on each axis every `step` voxels, at the
coordinates = step // 2 mod step, so a block finds the same points whatever its layout."""

from __future__ import annotations

import numpy as np


def axes(offset, shape, steps) -> tuple[np.ndarray, ...]:
    """Per axis, the lattice coordinates (absolute voxels) inside [offset, offset + shape)."""
    return tuple(np.arange(o + (st // 2 - o) % st, o + s, st) for o, s, st in zip(offset, shape, steps))


def centres(seg: np.ndarray, read_offset, write_offset, write_shape, steps) -> np.ndarray:
    """Array coordinates (in `seg`, which starts at `read_offset`) of the lattice points of the write box
    that lie in a segment."""
    local = [a - r for a, r in zip(axes(write_offset, write_shape, steps), read_offset)]
    if any(len(a) == 0 for a in local):
        return np.zeros((0, 3), np.int64)
    grid = np.stack(np.meshgrid(*local, indexing="ij"), -1).reshape(-1, 3)
    return grid[seg[grid[:, 0], grid[:, 1], grid[:, 2]] != 0]

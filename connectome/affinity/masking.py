"""Masked affinities: an edge that touches an excluded voxel (a mask value other than 0) gets affinity 0.

Voxels of a mask (a tissue mask's vessels and nuclei, the alignment's defect flags) then join no
fragment (their best affinity is below the watershed's `aff_low`), and no fragment edge and no
merge crosses them, so the chain never joins objects through a masked region.
"""

from __future__ import annotations

import numpy as np

from connectome.core.geometry import Box

MASK_DTYPES = ("uint8", "bool")


def excluded_edges(mask: np.ndarray, has_lower: tuple[bool, bool, bool]) -> np.ndarray:
    """(3, z, y, x) bool: affinity channel d at v is excluded when v or v - e_d is masked.

    `mask` covers the box plus one voxel below each face in `has_lower`; the result covers the box.
    """
    start = tuple(int(h) for h in has_lower)
    here = mask[tuple(slice(s, None) for s in start)]
    out = np.empty((3, *here.shape), bool)
    for d in range(3):
        below = [slice(s, None) for s in start]
        below[d] = slice(start[d] - 1, mask.shape[d] - 1) if has_lower[d] else slice(0, mask.shape[d] - 1)
        out[d] = here
        if has_lower[d]:
            out[d] |= mask[tuple(below)]
        else:  # the volume's first plane: channel d there links to nothing below; the rest to v - e_d
            inner = [slice(None)] * 3
            inner[d] = slice(1, None)
            out[d][tuple(inner)] |= mask[tuple(below)]
    return out


def mask_affinities(affinities: np.ndarray, mask: np.ndarray, has_lower: tuple[bool, bool, bool]) -> np.ndarray:
    """A copy of stored (3, z, y, x) affinities with every edge that touches a masked voxel set to 0."""
    out = affinities.copy()
    out[excluded_edges(mask != 0, has_lower)] = 0
    return out


def mask_read_box(write: Box, volume: Box) -> tuple[Box, tuple[bool, bool, bool]]:
    """The mask a block needs (its write box and one voxel below each inner face) and which faces those are."""
    has_lower = tuple(o > v for o, v in zip(write.offset, volume.offset))
    lower = [int(h) for h in has_lower]
    return Box.from_corners([o - g for o, g in zip(write.offset, lower)], write.end), has_lower  # type: ignore[return-value]

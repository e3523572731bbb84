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

from connectome.core.geometry import Box, Context, vec3
from connectome.io.base import Volume
from connectome.io.reflected import read_reflected

BLANK_SIDE = 11
FILL_BLANK = 2  # sections a missing one's fill reaches above and below (`fill_blank`; the affinities stage's default)


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


def fill_margin(sections: int) -> tuple[int, int, int]:
    """Voxels (z, y, x) beyond an array that `fill_blank(..., sections)` reads to fill it exactly: the sections it
    interpolates from, and in plane what finding a blank square there needs."""
    return (sections, BLANK_SIDE - 1, BLANK_SIDE - 1) if sections > 0 else (0, 0, 0)


def with_fill_margin(context: Context, sections: int) -> Context:
    """`context` (a network's) grown by `fill_margin(sections)` on every side: what a stage that fills its network's
    input reads (`read_filled` of the read box less the margin)."""
    margin = fill_margin(sections)
    if not any(margin):
        return context
    return Context(lower=vec3([a + b for a, b in zip(context.lower, margin)]),
                   upper=vec3([a + b for a, b in zip(context.upper, margin)]), multiple=context.multiple,
                   clip=context.clip)


def fill_blank(raw: np.ndarray, sections: int) -> np.ndarray:
    """`raw` with each blank voxel (`blank_voxels`, band 0) that has tissue within `sections` sections both above and
    below it, at its (y, x), set to the image interpolated linearly between those two voxels: a missing section
    reads as the blend of its neighbours, as the networks have seen tissue, not as black. Exact farther than
    `fill_margin(sections)` from the array's faces (where they are not the volume's)."""
    blank = blank_voxels(raw, 0) if sections > 0 else None
    if blank is None:
        return raw
    depth = raw.shape[0]
    z = np.arange(depth, dtype=np.int32).reshape(-1, 1, 1)
    below = np.maximum.accumulate(np.where(blank, -1, z), axis=0)  # the nearest tissue section at or before z
    above = np.minimum.accumulate(np.where(blank, depth, z)[::-1], axis=0)[::-1]  # ... at or after z
    fill = blank & (below >= 0) & (above < depth) & (z - below <= sections) & (above - z <= sections)
    if not fill.any():
        return raw
    zz, yy, xx = np.nonzero(fill)
    lo, hi = below[fill], above[fill]
    a, b = raw[lo, yy, xx].astype(np.float32), raw[hi, yy, xx].astype(np.float32)
    out = raw.copy()
    out[fill] = np.rint(a + (b - a) * ((zz - lo) / (hi - lo))).astype(raw.dtype)
    return out


def fingerprint_fill(fingerprint: dict, sections: int) -> dict:
    """A stage's fingerprint with `fill_blank` only where something is filled: a run from before the option
    (which read blank voxels as stored) resumes with 0."""
    if not sections:
        fingerprint["params"].pop("fill_blank", None)
    return fingerprint


def read_network_input(volume: Volume, read_box: Box, sections: int) -> tuple[np.ndarray, Box]:
    """(the filled image, its box) a network reads in a block whose read box `with_fill_margin` grew: the read box
    less the fill's margin."""
    net = read_box.grow([-m for m in fill_margin(sections)])
    return read_filled(volume, net, sections), net


def read_filled(volume: Volume, box: Box, sections: int) -> np.ndarray:
    """`box` of `volume` (mirrored where it leaves the volume) with `fill_blank(..., sections)` applied, read with the
    fill's margin so that every block layout sees the same values."""
    margin = fill_margin(sections)
    if not any(margin):
        return read_reflected(volume, box)
    grown = box.grow(margin)
    return fill_blank(read_reflected(volume, grown), sections)[box.relative_to(grown)]

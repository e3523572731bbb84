"""Sections that hold image data in part of their plane only (`Volume.section_footprints`: the smaller sections
of a TIFF stack, read centred on the largest and padded with 0): their padding as a mask, the footprints of a
permuted stack, and the `footprint_mask` stage a segmentation chain runs where its raw volume has footprints."""

from __future__ import annotations

import numpy as np

from connectome.core.address import absolute
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.engine.config import StageConfig
from connectome.io import open_volume

Footprints = dict[int, tuple[int, int, int, int]]  # z -> (y0, x0, height, width) of the part holding image data


def outside_footprints(footprints: Footprints, box: Box) -> np.ndarray:
    """(z, y, x) bool over `box`: True in the padding of each section that has a footprint."""
    out = np.zeros(box.shape, bool)
    (oz, oy, ox), (ez, ey, ex) = box.offset, box.end
    for z, (y0, x0, h, w) in footprints.items():
        if not oz <= z < ez:
            continue
        plane = out[z - oz]
        plane[:] = True
        ys = slice(min(max(y0, oy), ey) - oy, min(max(y0 + h, oy), ey) - oy)
        xs = slice(min(max(x0, ox), ex) - ox, min(max(x0 + w, ox), ex) - ox)
        plane[ys, xs] = False
    return out


def permuted(footprints: Footprints, order) -> Footprints:
    """The footprints of the stack whose section k is section `order[k]` of the stack they describe."""
    return {k: footprints[int(z)] for k, z in enumerate(order) if int(z) in footprints}


def footprint_masking(raw: str, mask: str | None) -> tuple[str | None, list[StageConfig]]:
    """(the mask a segmentation chain reads, the stages that make it): where the raw volume has footprints, the
    `footprint_mask` stage (its padding, or-ed with `mask` if given) and its output; else `mask` as given."""
    try:
        footprints = open_volume(absolute(raw)).section_footprints()
    except UserError:
        footprints = {}  # planning the run says what is wrong with the input
    if not footprints:
        return (absolute(mask) if mask else None), []
    stage = StageConfig(stage="footprint_mask", inputs={"mask": absolute(mask)} if mask else {})
    return "footprint_mask", [stage]

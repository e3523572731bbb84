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


SELECTED_MASK = "selected_mask"  # the `mask_values` stage's output


def check_mask_values(values, mask: str | None) -> list[int] | None:
    """`--mask-values`, sorted and unique: uint8 codes 1-255, and only with a mask."""
    if not values:
        return None
    if not mask:
        raise UserError("--mask-values: expected it with --mask (the mask whose values it picks), found no --mask")
    bad = [v for v in values if not 1 <= int(v) <= 255]
    if bad:
        raise UserError(f"--mask-values {bad[0]}: expected mask values 1-255 (a uint8 mask; 0 excludes nothing)")
    return sorted({int(v) for v in values})


def selected_mask(mask: str | None, values: list[int] | None) -> tuple[str | None, list[StageConfig]]:
    """(the mask a chain reads, the stage that makes it): with `values`, the `mask_values` stage's `selected_mask`
    (1 where `mask` holds one of them); else `mask` as given."""
    if not mask or not values:
        return mask, []
    return SELECTED_MASK, [StageConfig(stage="mask_values", inputs={"mask": mask}, params={"values": values})]


def footprint_masking(raw: str, mask: str | None,
                      values: list[int] | None = None) -> tuple[str | None, list[StageConfig]]:
    """(the mask a segmentation chain reads, the stages that make it): where the raw volume has footprints, the
    `footprint_mask` stage (its padding, or-ed with `mask` if given) and its output; else `mask` as given. With
    `values`, `mask` excludes only the voxels that hold one of them (the `mask_values` stage first)."""
    mask_input, stages = selected_mask(absolute(mask) if mask else None, values)
    try:
        footprints = open_volume(absolute(raw)).section_footprints()
    except UserError:
        footprints = {}  # planning the run says what is wrong with the input
    if not footprints:
        return mask_input, stages
    stage = StageConfig(stage="footprint_mask", inputs={"mask": mask_input} if mask_input else {})
    return "footprint_mask", [*stages, stage]

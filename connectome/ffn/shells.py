"""A block's labels outside its write box (the shell of its read box), kept for reconciliation.

The shell is cut into six disjoint boxes: below/above the write box in z (whole y, x of the read
box), then in y (within the write box's z), then in x (within its z and y).
"""

from __future__ import annotations

import numpy as np

from connectome.core.geometry import Box


def shell_boxes(read: Box, write: Box) -> list[Box]:
    """Six disjoint boxes covering `read` minus `write` (some may be empty)."""
    boxes = []
    lo, hi = list(read.offset), list(read.end)
    for axis in range(3):
        below_hi, above_lo = list(hi), list(lo)
        below_hi[axis] = write.offset[axis]
        above_lo[axis] = write.end[axis]
        boxes.append(Box.from_corners(lo, below_hi))
        boxes.append(Box.from_corners(above_lo, hi))
        lo[axis], hi[axis] = write.offset[axis], write.end[axis]
    return boxes


def shell_arrays(labels: np.ndarray, read: Box, write: Box) -> dict[str, np.ndarray]:
    """Table arrays of the shell: `shell_boxes` (6, 2, 3) and `shell_k` the labels inside box k."""
    boxes = shell_boxes(read, write)
    out = {"shell_boxes": np.array([[b.offset, b.shape] for b in boxes], np.int64)}
    for k, b in enumerate(boxes):
        out[f"shell_{k}"] = np.ascontiguousarray(labels[b.relative_to(read)])
    return out


def read_shell(table, box: Box, out: np.ndarray, out_box: Box) -> None:
    """Copy the shell labels of a block's table that fall in `box` into `out` (which holds `out_box`)."""
    for k, (offset, shape) in enumerate(table["shell_boxes"]):
        part = Box(tuple(offset), tuple(shape))
        common = part.intersect(box)
        if common.empty:
            continue
        out[common.relative_to(out_box)] = table[f"shell_{k}"][common.relative_to(part)]

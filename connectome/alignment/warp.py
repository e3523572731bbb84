"""Render aligned sections: each output pixel x of section z samples raw section z at x + u_z(x)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from connectome.alignment.mesh import interpolate
from connectome.core.geometry import Box
from connectome.io import Volume


def source_positions(field: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], box_yx: tuple[slice, slice]):
    """Raw positions (qy, qx) of the output pixels in the (y, x) slices `box_yx` of one section."""
    ys = np.arange(box_yx[0].start, box_yx[0].stop, dtype=np.float64)
    xs = np.arange(box_yx[1].start, box_yx[1].stop, dtype=np.float64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    u = interpolate(field, nodes, gy, gx)
    return gy + u[..., 0], gx + u[..., 1]


def inside_footprint(qy: np.ndarray, qx: np.ndarray, footprint: tuple[int, int, int, int]) -> np.ndarray:
    """Where source positions lie within the footprint (y0, x0, height, width) of a section's image data: the
    pixels an aligned section takes from it (elsewhere 0)."""
    fy, fx, fh, fw = footprint
    return (qy > fy - 0.5) & (qy < fy + fh - 0.5) & (qx > fx - 0.5) & (qx < fx + fw - 0.5)


def warp_section(raw: Volume, z: int, field: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
                 box_yx: tuple[slice, slice], order: int = 1,
                 footprint: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One aligned section's (y, x) slices, and where their source lies inside the section (elsewhere they are
    0); `footprint` (y0, x0, height, width): the part of the section that holds image data, the rest padding."""
    qy, qx = source_positions(field, nodes, box_yx)
    inside = inside_footprint(qy, qx, footprint or (0, 0, raw.shape[1], raw.shape[2]))
    height, width = raw.shape[1], raw.shape[2]
    out = np.zeros(qy.shape, dtype=raw.dtype)
    if not inside.any():
        return out, inside
    pad = order + 1
    y0 = int(max(np.floor(qy[inside].min()) - pad, 0))
    y1 = int(min(np.ceil(qy[inside].max()) + pad + 1, height))
    x0 = int(max(np.floor(qx[inside].min()) - pad, 0))
    x1 = int(min(np.ceil(qx[inside].max()) + pad + 1, width))
    src = raw.read(Box((z, y0, x0), (1, y1 - y0, x1 - x0)))[0].astype(np.float32)
    values = map_coordinates(src, [qy - y0, qx - x0], order=order, mode="nearest")
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[inside] = values[inside].astype(raw.dtype)
    return out, inside

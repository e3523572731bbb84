"""Carry a label volume (segment ids, an integer or bool mask) between a stack's raw frame and its aligned frame
with the alignment's stored transforms (`OUT/alignment/transforms.npz`), nearest neighbour.

The `align` stage renders aligned pixel x of section z from raw position q = x + u_z(x) (`warp.source_positions`,
bilinear). `carry_section` takes the label of the raw pixel nearest q (the same q, so labels and image agree pixel
for pixel); `uncarry_section` goes the other way: for raw pixel p it finds the aligned position x with
x + u_z(x) = p (the inverse is not stored: Newton steps, `aligned_positions`) and takes the label of the aligned
pixel nearest x. Only coordinates are computed in floating point: the values are indexed, never converted, so
uint64 ids are exact. Pixels whose source lies outside the section, in the padding of a smaller section
(`footprint`) or outside the aligned plane get 0; so do raw pixels whose aligned position is not found (where the
warp folds: none in the alignments measured).
"""

from __future__ import annotations

import numpy as np

from connectome.alignment.mesh import interpolate
from connectome.alignment.warp import inside_footprint, source_positions
from connectome.core.geometry import Box
from connectome.io import Volume

INVERSE_TOLERANCE = 0.01  # px: an aligned position is found where x + u(x) lies this close to the raw pixel
INVERSE_STEPS = 30  # Newton steps at most (a few suffice: the field is bilinear between its nodes)


def _nearest(volume: Volume, z: int, qy: np.ndarray, qx: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The values of section z of `volume` at the pixels nearest (qy, qx) where `inside` (else 0), read from the
    one box that holds them; the values are indexed, in the volume's dtype."""
    out = np.zeros(qy.shape, dtype=volume.dtype)
    if not inside.any():
        return out
    iy = np.floor(qy[inside] + 0.5).astype(np.int64)
    ix = np.floor(qx[inside] + 0.5).astype(np.int64)
    y0, x0 = int(iy.min()), int(ix.min())
    src = volume.read(Box((z, y0, x0), (1, int(iy.max()) - y0 + 1, int(ix.max()) - x0 + 1)))[0]
    out[inside] = src[iy - y0, ix - x0]
    return out


def carry_section(labels: Volume, z: int, field: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
                  box_yx: tuple[slice, slice], footprint: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The (y, x) slices `box_yx` of aligned section z's labels: the label of raw section `z` of `labels` nearest
    each aligned pixel's source (0 where the source lies outside the section or its `footprint`)."""
    qy, qx = source_positions(field, nodes, box_yx)
    inside = inside_footprint(qy, qx, footprint or (0, 0, labels.shape[1], labels.shape[2]))
    return _nearest(labels, z, qy, qx, inside)


def aligned_positions(field: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], box_yx: tuple[slice, slice],
                      tolerance: float = INVERSE_TOLERANCE,
                      steps: int = INVERSE_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ay, ax, found): the aligned positions x with x + u(x) = p of the raw pixels p in the (y, x) slices `box_yx`,
    and where they were found within `tolerance` px: Newton steps on x + u(x) - p from x = p - u(p), the slope of
    the (bilinear) field taken over one pixel. A pixel stops at its own first step within tolerance, so where it
    lands does not depend on the other pixels of the box (blockwise equals one block); where the warp folds (its
    slope's determinant near 0) or the steps do not settle, it is not found."""
    ys = np.arange(box_yx[0].start, box_yx[0].stop, dtype=np.float64)
    xs = np.arange(box_yx[1].start, box_yx[1].stop, dtype=np.float64)
    py, px = np.meshgrid(ys, xs, indexing="ij")
    u = interpolate(field, nodes, py, px)
    ay, ax = py - u[..., 0], px - u[..., 1]
    found = np.zeros(py.shape, bool)
    todo = np.ones(py.shape, bool)
    reach = 4.0 * (max(py.shape) + float(np.abs(field).max()) + 1.0)  # positions beyond it are not settling
    with np.errstate(all="ignore"):
        for _ in range(steps + 1):
            qy, qx, ty, tx = ay[todo], ax[todo], py[todo], px[todo]
            u = interpolate(field, nodes, qy, qx)
            ry, rx = qy + u[..., 0] - ty, qx + u[..., 1] - tx  # x + u(x) - p
            done = np.hypot(ry, rx) <= tolerance
            found[todo] = done
            dy = interpolate(field, nodes, qy + 1.0, qx) - u  # the slope of u along y and x, over one pixel
            dx = interpolate(field, nodes, qy, qx + 1.0) - u
            a, b, c, d = 1.0 + dy[..., 0], dx[..., 0], dy[..., 1], 1.0 + dx[..., 1]  # I + du/dx
            det = a * d - b * c
            ok = det > 0.05
            sy = np.where(ok, (d * ry - b * rx) / np.where(ok, det, 1.0), ry)
            sx = np.where(ok, (a * rx - c * ry) / np.where(ok, det, 1.0), rx)
            ay[todo] = np.where(done, qy, qy - sy)
            ax[todo] = np.where(done, qx, qx - sx)
            stop = done | ~ok | ~(np.abs(ay[todo] - ty) < reach) | ~(np.abs(ax[todo] - tx) < reach)
            todo[todo] = ~stop
            if not todo.any():
                break
    return ay, ax, found


def uncarry_section(aligned: Volume, k: int, field: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
                    box_yx: tuple[slice, slice],
                    footprint: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, int]:
    """The (y, x) slices `box_yx` of a raw section's labels from section `k` of `aligned` (a label volume in the
    aligned frame, whose section k the raw section was warped to with `field`): the label of the aligned pixel
    nearest each raw pixel's aligned position; 0 in the raw section's padding (`footprint`), where the position
    lies outside the aligned plane, and where it was not found (also returned: how many such pixels)."""
    ay, ax, found = aligned_positions(field, nodes, box_yx)
    ys = np.arange(box_yx[0].start, box_yx[0].stop)
    xs = np.arange(box_yx[1].start, box_yx[1].stop)
    fy, fx, fh, fw = footprint or (0, 0, aligned.shape[1], aligned.shape[2])
    in_section = (((ys >= fy) & (ys < fy + fh))[:, None] & ((xs >= fx) & (xs < fx + fw))[None, :])
    inside = found & in_section & inside_footprint(ay, ax, (0, 0, aligned.shape[1], aligned.shape[2]))
    return _nearest(aligned, k, ay, ax, inside), int(np.count_nonzero(in_section & ~found))

"""Running an FFN at a coarser voxel size than the data's: the image is downsampled by integer factors, the network
fills objects there, and its labels are upsampled back (each coarse voxel to its box of fine ones).

This is how a model trained at twice the voxel size (a serial-section model at 40 x 8 x 8 nm on 40 x 4 x 4 nm data,
or the multi-scale runs of the H01 FFN) reads a volume. Coarse voxels sit on a grid anchored at the volume's
origin, so a block whose read box starts on a multiple of the factors sees the same coarse voxels as one block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from connectome.core.geometry import Vec as Vec3

ONE: Vec3 = (1, 1, 1)


def scale_for(model_nm: Sequence[float], data_nm: Sequence[float]) -> Vec3:
    """Per axis, the model's voxel size over the data's, rounded half up to a whole factor (at least 1)."""
    return tuple(max(1, math.floor(m / d + 0.5)) for m, d in zip(model_nm, data_nm))  # type: ignore[return-value]


def _padded(a: np.ndarray, scale: Vec3) -> np.ndarray:
    """`a` extended by edge values to a multiple of `scale` on every axis."""
    pad = [(0, -s % f) for s, f in zip(a.shape, scale)]
    return np.pad(a, pad, mode="edge") if any(p for _, p in pad) else a


def _boxes(a: np.ndarray, scale: Vec3) -> np.ndarray:
    """(Z, fz, Y, fy, X, fx) view of `a` padded to a multiple of `scale`."""
    a = _padded(a, scale)
    (z, y, x), (fz, fy, fx) = a.shape, scale
    return a.reshape(z // fz, fz, y // fy, fy, x // fx, fx)


def downsample_image(image: np.ndarray, scale: Vec3) -> np.ndarray:
    """uint8 image -> the rounded mean of each box of `scale` voxels (a partial box at the far faces repeats its
    edge voxels)."""
    if tuple(scale) == ONE:
        return image
    mean = _boxes(image, scale).mean(axis=(1, 3, 5), dtype=np.float32)
    return np.rint(mean).astype(np.uint8)


def downsample_mask(mask: np.ndarray | None, scale: Vec3) -> np.ndarray | None:
    """A coarse voxel is masked where any of its fine voxels is."""
    if mask is None or tuple(scale) == ONE:
        return mask
    return np.asarray(_boxes(mask, scale).any(axis=(1, 3, 5)))


def downsample_labels(labels: np.ndarray, scale: Vec3) -> np.ndarray:
    """Object ids -> the id at the centre voxel of each box (training targets at the coarse voxel size)."""
    if tuple(scale) == ONE:
        return labels
    return _boxes(labels, scale)[:, scale[0] // 2, :, scale[1] // 2, :, scale[2] // 2]


def upsample_labels(labels: np.ndarray, scale: Vec3, shape: Sequence[int]) -> np.ndarray:
    """Coarse labels -> each coarse voxel's box of fine voxels, cropped to `shape`."""
    if tuple(scale) == ONE:
        return labels
    fine = labels
    for axis, f in enumerate(scale):
        if f > 1:
            fine = np.repeat(fine, f, axis=axis)
    return np.ascontiguousarray(fine[: shape[0], : shape[1], : shape[2]])

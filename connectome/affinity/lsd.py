"""Local shape descriptors (LSDs): ten channels per voxel that describe the shape of its object nearby.

For a voxel v of object o, a Gaussian window (sigma in nm per axis) around v is restricted to o's voxels;
the descriptors are that restricted window's statistics (as in Sheridan et al., Nature Methods 2022):

- channels 0-2: the mean offset of o's voxels from v (z, y, x), scaled by 1 / (2 sigma) into 0..1 (0.5 = none);
- channels 3-5: the variances of those offsets (z, y, x) over sigma^2, 0..1;
- channels 6-8: the covariances (zy, zx, yx) over sigma^2, scaled into 0..1 (0.5 = none);
- channel 9: the window's mass on o over the window's whole mass, 0..1.

Every statistic is a sum of separable Gaussian-moment filters over the object's mask, so each object costs
ten separable filterings of its bounding box (plus the window); the descriptors are computed on a grid
downsampled by `factor` and repeated back, as the LSD paper's code does. Voxels of label 0 get zeros.
The network learns them as auxiliary outputs (dropped at inference); they are not used to segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

CHANNELS = 10
# channels that need the neighbouring sections (z mean, z variance, zy and zx covariances, mass): unknown
# where labels are per section
Z_CHANNELS = (0, 3, 6, 7, 9)
# (z, y, x) moment order of each raw statistic: mass, first moments, second moments, cross moments
_MOMENTS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2),
            (1, 1, 0), (1, 0, 1), (0, 1, 1))


def _kernels(sigma: float) -> list[np.ndarray]:
    """1-d Gaussian weights times d^0, d^1, d^2 (d in units of sigma), radius 3 sigma."""
    radius = max(1, int(np.ceil(3 * sigma)))
    d = np.arange(-radius, radius + 1, dtype=np.float64) / sigma
    g = np.exp(-0.5 * d * d)
    # correlate1d computes sum_k w[k] f[i + k - r]: the offset of the neighbour from i is k - r = d
    return [g, g * d, g * d * d]


def _moment(mask: np.ndarray, kernels: Sequence[list[np.ndarray]], order: Sequence[int]) -> np.ndarray:
    out = mask
    for axis, (k, o) in enumerate(zip(kernels, order)):
        out = ndimage.correlate1d(out, k[o], axis=axis, mode="constant", cval=0.0)
    return out


def local_shape_descriptors(
    labels: np.ndarray,
    voxel_size: Sequence[float],
    sigma_nm: float = 80.0,
    factor: Sequence[int] = (1, 1, 1),
) -> np.ndarray:
    """The ten descriptors, float32 (10, z, y, x), of every labelled voxel (see the module docstring)."""
    labels = np.asarray(labels)
    factor = tuple(int(f) for f in factor)
    small = labels[tuple(slice(None, None, f) for f in factor)]
    step = [float(v) * f for v, f in zip(voxel_size, factor)]
    sigma = [sigma_nm / s for s in step]  # in (downsampled) voxels
    kernels = [_kernels(s) for s in sigma]
    reach = [len(k[0]) // 2 for k in kernels]
    total = np.prod([k[0].sum() for k in kernels])  # the mass of a whole window
    out = np.zeros((CHANNELS, *small.shape), np.float32)
    ids = np.unique(small[small > 0])
    relabelled = np.searchsorted(ids, small).astype(np.int64) + 1
    relabelled[small == 0] = 0
    objects = ndimage.find_objects(relabelled)
    for index, box in enumerate(objects, start=1):
        if box is None:
            continue
        # the object's box grown by the window, so every voxel of it sees its whole window
        grown = tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, small.shape))
        mask = (relabelled[grown] == index).astype(np.float64)
        m = [_moment(mask, kernels, order) for order in _MOMENTS]
        mass = np.maximum(m[0], 1e-12)
        mean = [m[1] / mass, m[2] / mass, m[3] / mass]  # in units of sigma
        var = [m[4] / mass - mean[0] ** 2, m[5] / mass - mean[1] ** 2, m[6] / mass - mean[2] ** 2]
        cov = [m[7] / mass - mean[0] * mean[1], m[8] / mass - mean[0] * mean[2], m[9] / mass - mean[1] * mean[2]]
        inside = mask > 0
        channels = [0.5 + 0.25 * c for c in mean] + var + [0.5 + 0.5 * c for c in cov] + [m[0] / total]
        for c, value in enumerate(channels):
            out[c][grown][inside] = np.clip(value[inside], 0.0, 1.0)
    if factor == (1, 1, 1):
        return out
    for axis, f in enumerate(factor):
        out = np.repeat(out, f, axis=axis + 1)
    return np.ascontiguousarray(out[(slice(None), *(slice(0, n) for n in labels.shape))])


__all__ = ["CHANNELS", "Z_CHANNELS", "local_shape_descriptors"]

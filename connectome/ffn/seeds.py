"""Seed points for flood filling: maxima of a distance transform of boundary evidence, then a grid.

Every step is local and in global coordinates (fixed thresholds in the model's normalised units, a
depth cap, a grid anchored at the volume origin), so a block's seeds away from its read-box faces are
the seeds a single-block run has there, in the same relative order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DARK = -1.1  # smoothed normalised intensity below this is membrane (about the 15th percentile on synthetic data)
EDGE = 0.2  # smoothed gradient magnitude (normalised units per voxel) above this is a boundary


def boundary_evidence(image: np.ndarray, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Boolean boundary map of a normalised image: dark voxels or a steep smoothed gradient."""
    sigma = tuple(min(voxel_size) / v for v in voxel_size)
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    grad = ndimage.gaussian_gradient_magnitude(smooth, sigma)
    return (grad > EDGE) | (smooth < DARK)


def distance_seeds(image: np.ndarray, voxel_size=(1.0, 1.0, 1.0), spacing=(4, 4, 4), min_distance: float = 2.0,
                   cap: float | None = None) -> np.ndarray:
    """(n, 3) seeds at local maxima of the distance to boundary evidence (capped at `cap`, so deeper voxels
    tie and a block's seeds match a larger run's), farthest first, ties in raster order."""
    boundary = boundary_evidence(image, voxel_size)
    scale = np.asarray(voxel_size, np.float64) / min(voxel_size)
    dist = ndimage.distance_transform_edt(~boundary, sampling=scale).astype(np.float32)
    if cap is not None:
        np.minimum(dist, cap, out=dist)
    peaks = (dist == ndimage.maximum_filter(dist, size=tuple(max(1, int(s)) for s in spacing))) & (dist >= min_distance)
    points = np.argwhere(peaks)
    values = dist[peaks]
    order: np.ndarray | list[int] = []
    if len(points):
        order = np.lexsort((np.ravel_multi_index(points.T, dist.shape), -values))
    return points[order].astype(np.int64)


def grid_seeds(shape, spacing, origin=(0, 0, 0)) -> np.ndarray:
    """(n, 3) lattice points every `spacing` voxels at global positions k * spacing + spacing // 2, in raster
    order, relative to an array whose first voxel sits at global `origin`."""
    axes = [np.arange((s // 2 - o) % s, n, s) for s, n, o in zip(spacing, shape, origin)]
    axes = [a if len(a) else np.array([n // 2]) for a, n in zip(axes, shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)


def seed_order(image: np.ndarray, voxel_size, spacing, origin=(0, 0, 0), cap: float | None = None) -> np.ndarray:
    """Distance-transform seeds, then the grid fallback (duplicates dropped, first kept)."""
    seeds = np.concatenate([distance_seeds(image, voxel_size, spacing, cap=cap), grid_seeds(image.shape, spacing,
                                                                                          origin)])
    _, first = np.unique(np.ravel_multi_index(seeds.T, image.shape), return_index=True)
    return seeds[np.sort(first)]

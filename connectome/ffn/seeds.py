"""Seed points for flood filling: maxima of a distance transform of boundary evidence, then a grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def boundary_evidence(image: np.ndarray, voxel_size=(1.0, 1.0, 1.0), percentile: float = 60.0) -> np.ndarray:
    """Boolean boundary map: smoothed gradient magnitude above its `percentile`, or dark (membrane) voxels."""
    sigma = tuple(min(voxel_size) / v for v in voxel_size)
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    grad = ndimage.gaussian_gradient_magnitude(smooth, sigma)
    dark = smooth < np.percentile(smooth, 15.0)
    edge = max(float(np.percentile(grad, percentile)), 0.05 * float(grad.max()))  # flat regions: rounding noise
    return (grad > edge) | dark


def distance_seeds(image: np.ndarray, voxel_size=(1.0, 1.0, 1.0), spacing=(4, 4, 4),
                   min_distance: float = 2.0) -> np.ndarray:
    """(n, 3) seeds at local maxima of the distance to boundary evidence, farthest first, ties by position."""
    boundary = boundary_evidence(image, voxel_size)
    scale = np.asarray(voxel_size, np.float64) / min(voxel_size)
    dist = ndimage.distance_transform_edt(~boundary, sampling=scale).astype(np.float32)
    peaks = (dist == ndimage.maximum_filter(dist, size=tuple(max(1, int(s)) for s in spacing))) & (dist >= min_distance)
    points = np.argwhere(peaks)
    values = dist[peaks]
    order: np.ndarray | list[int] = []
    if len(points):
        order = np.lexsort((np.ravel_multi_index(points.T, dist.shape), -values))
    return points[order].astype(np.int64)


def grid_seeds(shape, spacing) -> np.ndarray:
    """(n, 3) lattice points every `spacing` voxels, offset by half a spacing, in raster order."""
    axes = [np.arange(min(s // 2, n - 1), n, s) for s, n in zip(spacing, shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)


def seed_order(image: np.ndarray, voxel_size, spacing) -> np.ndarray:
    """Distance-transform seeds, then the grid fallback (duplicates dropped, first kept)."""
    seeds = np.concatenate([distance_seeds(image, voxel_size, spacing), grid_seeds(image.shape, spacing)])
    _, first = np.unique(np.ravel_multi_index(seeds.T, image.shape), return_index=True)
    return seeds[np.sort(first)]

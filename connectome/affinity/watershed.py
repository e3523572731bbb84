"""A steepest-ascent watershed on the affinity graph that gives the same basins however it is tiled.

Every voxel points across its highest-affinity edge (ties go to the first of -z, -y, -x, +z, +y,
+x), and every edge at or above `aff_high` joins its voxels, as in zwatershed; basins are the
connected components of these joins, and a voxel whose best edge is below `aff_low` belongs to
no basin (id 0). A join depends only on one voxel's six edges, so a block
computes exactly the global basins cut at its faces, and the pointers that cross a face say which
pieces to join again (`face_links`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from connectome.core.geometry import Box, vec3

# neighbour offsets in pointer order; pointer p and p +/- 3 point in opposite directions
DIRECTIONS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (1, 0, 0), (0, 1, 0), (0, 0, 1))
NO_POINTER = -1
STEPS = np.array(DIRECTIONS, np.int64)


def affinity_box(region: Box) -> Box:
    """The affinities needed to point every voxel of `region`: one more voxel on the upper sides."""
    return Box(region.offset, vec3([s + 1 for s in region.shape]))


def edge_values(affs: np.ndarray, region: Box, volume: Box) -> np.ndarray:
    """(6, z, y, x) affinity of each voxel of `region` to each neighbour; -1 where none exists.

    `affs` (3, ...) holds `affinity_box(region)` clipped to `volume`.
    """
    grown = affinity_box(region)
    full = np.full((3, *grown.shape), -1.0, np.float32)
    have = grown.intersect(volume)
    full[(slice(None), *have.relative_to(grown))] = affs
    for d in range(3):  # channel d at the volume's first plane links to a voxel outside it
        if region.offset[d] == volume.offset[d]:
            index: list[int | slice] = [d, slice(None), slice(None), slice(None)]
            index[1 + d] = 0
            full[tuple(index)] = -1.0
    z, y, x = region.shape
    edges = np.empty((6, z, y, x), np.float32)
    edges[0] = full[0, :z, :y, :x]
    edges[1] = full[1, :z, :y, :x]
    edges[2] = full[2, :z, :y, :x]
    edges[3] = full[0, 1:, :y, :x]
    edges[4] = full[1, :z, 1:, :x]
    edges[5] = full[2, :z, :y, 1:]
    return edges


def within_sections(edges: np.ndarray) -> np.ndarray:
    """`edges` with the z edges set to -1 (in place), so no pointer or join crosses sections: basins of
    serial-section data stay in one section (lsd's `fragments_in_xy`); the merge joins them in z."""
    edges[0] = -1.0
    edges[3] = -1.0
    return edges


def pointers(edges: np.ndarray, aff_low: float) -> np.ndarray:
    """Direction index (0..5) of each voxel's steepest edge, or NO_POINTER below `aff_low`."""
    best = np.argmax(edges, axis=0).astype(np.int8)
    top = np.take_along_axis(edges, best[np.newaxis].astype(np.int64), axis=0)[0]
    best[top < aff_low] = NO_POINTER
    return best


def joins(ptr: np.ndarray, edges: np.ndarray, aff_high: float, p: int) -> np.ndarray:
    """Voxels joined to their neighbour in direction `p`: the steepest edge, or one >= `aff_high`."""
    return (ptr == p) | (edges[p] >= aff_high)


def basins(ptr: np.ndarray, edges: np.ndarray, aff_high: float) -> np.ndarray:
    """Basins 1..n (uint64, 0 = no basin) of the joins that stay inside the array.

    Numbered in order of first appearance (C order), so the ids depend only on the partition.
    """
    return _label_joins(np.ascontiguousarray(ptr), np.ascontiguousarray(edges), np.float32(aff_high))


@njit(cache=True)
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _label_joins(ptr, edges, aff_high):
    """Union-find over every voxel's joins, then first-appearance numbering."""
    nz, ny, nx = ptr.shape
    parent = np.arange(nz * ny * nx)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                p = ptr[z, y, x]
                if p == NO_POINTER:
                    continue
                i = (z * ny + y) * nx + x
                for d in range(6):
                    if p != d and not edges[d, z, y, x] >= aff_high:
                        continue
                    tz, ty, tx = z + STEPS[d, 0], y + STEPS[d, 1], x + STEPS[d, 2]
                    if tz < 0 or ty < 0 or tx < 0 or tz >= nz or ty >= ny or tx >= nx:
                        continue
                    a, b = _root(parent, i), _root(parent, (tz * ny + ty) * nx + tx)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    out = np.zeros((nz, ny, nx), np.uint64)
    label = np.zeros(nz * ny * nx, np.uint64)
    count = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if ptr[z, y, x] == NO_POINTER:
                    continue
                r = _root(parent, (z * ny + y) * nx + x)
                if label[r] == 0:
                    count += 1
                    label[r] = count
                out[z, y, x] = label[r]
    return out


def face_links(ptr: np.ndarray, edges: np.ndarray, fragments: np.ndarray, has_lower: tuple[bool, bool, bool],
               aff_high: float) -> tuple[np.ndarray, np.ndarray]:
    """Fragment pairs joined across the write box's lower faces (a pointer, or an edge >= aff_high).

    `ptr`, `edges` and `fragments` cover the write box plus one voxel layer below each face in
    `has_lower`.
    """
    start = tuple(int(h) for h in has_lower)
    us, vs = [], []
    for d in range(3):
        if not has_lower[d]:
            continue
        upper = [slice(s, None) for s in start]
        lower = list(upper)
        upper[d] = slice(1, 2)
        lower[d] = slice(0, 1)
        f_up, f_lo = fragments[tuple(upper)], fragments[tuple(lower)]
        down = joins(ptr[tuple(upper)], edges[(slice(None), *upper)], aff_high, d)
        up = joins(ptr[tuple(lower)], edges[(slice(None), *lower)], aff_high, d + 3)
        linked = (down | up) & (f_up != 0) & (f_lo != 0)
        us.append(f_lo[linked])
        vs.append(f_up[linked])
    if not us:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    pairs = np.unique(np.stack([np.concatenate(us), np.concatenate(vs)], axis=1), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].copy()

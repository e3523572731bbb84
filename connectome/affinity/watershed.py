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

from connectome.affinity.encoding import affinities_as_float
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
    edges = np.ascontiguousarray(edges)
    best, top = _steepest(edges.reshape(6, -1))  # as argmax over the six, in one pass
    best, top = best.reshape(edges.shape[1:]), top.reshape(edges.shape[1:])
    best[top < aff_low] = NO_POINTER
    return best


@njit(cache=True)
def _steepest(edges):
    """Per column of `edges` (6, n): the first index of its highest value (of its first NaN, as argmax), and
    that value."""
    n = edges.shape[1]
    best = np.zeros(n, np.int8)
    top = np.empty(n, edges.dtype)
    for i in range(n):
        b, t = 0, edges[0, i]
        if not np.isnan(t):
            for p in range(1, 6):
                v = edges[p, i]
                if np.isnan(v) or v > t:
                    b, t = p, v
                    if np.isnan(v):
                        break
        best[i], top[i] = b, t
    return best, top


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
def _union_joins(joined):
    """Union-find parents of the voxels joined by `joined`'s direction bits (bit d: towards STEPS[d]); a
    union keeps the smaller root, so every parent precedes its child in C order."""
    nz, ny, nx = joined.shape
    parent = np.arange(nz * ny * nx)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                mask = joined[z, y, x]
                if mask == 0:
                    continue
                i = (z * ny + y) * nx + x
                for d in range(6):
                    if not (mask >> d) & 1:
                        continue
                    tz, ty, tx = z + STEPS[d, 0], y + STEPS[d, 1], x + STEPS[d, 2]
                    if tz < 0 or ty < 0 or tx < 0 or tz >= nz or ty >= ny or tx >= nx:
                        continue
                    a, b = _root(parent, i), _root(parent, (tz * ny + ty) * nx + tx)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    return parent


@njit(cache=True)
def _label_joins(ptr, edges, aff_high):
    """Union-find over every voxel's joins (its pointer and its edges of at least `aff_high`), then
    first-appearance numbering."""
    nz, ny, nx = ptr.shape
    joined = np.zeros((nz, ny, nx), np.uint8)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                p = ptr[z, y, x]
                if p == NO_POINTER:
                    continue
                mask = np.uint8(1) << np.uint8(p)
                for d in range(6):
                    if edges[d, z, y, x] >= aff_high:
                        mask |= np.uint8(1) << np.uint8(d)
                joined[z, y, x] = mask
    parent = _union_joins(joined)
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


def stored_basins(stored: np.ndarray, region: Box, volume: Box, aff_low: float, aff_high: float,
                  in_plane: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`basins(pointers(edges, aff_low), edges, aff_high)` of `region` with `edges` its `edge_values` (z edges
    -1 where `in_plane`, as `within_sections`), straight from `stored`, the uint8 affinities of
    `affinity_box(region)` clipped to `volume`: the same basins without the six float32 edge arrays.

    Also each label's voxel count and bounding box (rows 0..n, row 0 the voxels of no basin; boxes as
    (min, max) per axis, inclusive, z y x; row 0 has count 0 and min past max where every voxel has one).
    """
    # an edge's value by its code: -1 (none, as `edge_values` has it) or the stored 0..255, increasing
    stored_values = affinities_as_float(np.arange(256, dtype=np.uint8), np.float32)
    values = np.concatenate([np.array([-1.0], np.float32), stored_values])
    low = values < aff_low  # as `pointers` compares its float32 edges: true on a prefix of the codes
    high = values >= np.float32(aff_high)  # as `basins` does: true on a suffix
    if not (np.all(np.diff(values) > 0) and np.all(low[:-1] >= low[1:]) and np.all(high[:-1] <= high[1:])):
        raise RuntimeError("stored_basins: affinity values not increasing with the stored code")
    low_code = int(np.count_nonzero(low)) - 1  # codes below it are too low to point
    high_code = len(values) - int(np.count_nonzero(high)) - 1  # codes from it on always join
    lower_open = np.array([o > v for o, v in zip(region.offset, volume.offset)], np.bool_)
    if stored.shape[0] != 3 or any(s not in (r, r + 1) for s, r in zip(stored.shape[1:], region.shape)):
        raise ValueError(f"stored_basins: affinities of shape {stored.shape} for a region of shape {region.shape}")
    joined = _stored_joins(np.ascontiguousarray(stored, np.uint8), np.array(region.shape, np.int64), lower_open,
                           bool(in_plane), low_code, high_code)
    return _label_stored_joins(joined)


@njit(cache=True)
def _stored_joins(stored, shape, lower_open, in_plane, low_code, high_code):
    """Per voxel, bit p set where it joins its neighbour in direction p (its pointer, or an edge code at or
    above `high_code`); 0 where it has no pointer (its highest code below `low_code`)."""
    nz, ny, nx = shape[0], shape[1], shape[2]
    bz, by, bx = stored.shape[1], stored.shape[2], stored.shape[3]
    joined = np.zeros((nz, ny, nx), np.uint8)
    for z in range(nz):
        zm = not in_plane and (z > 0 or lower_open[0])
        zp = not in_plane and z + 1 < bz
        for y in range(ny):
            ym = y > 0 or lower_open[1]
            yp = y + 1 < by
            for x in range(nx):
                c0 = np.int32(stored[0, z, y, x]) if zm else np.int32(-1)
                c1 = np.int32(stored[1, z, y, x]) if ym else np.int32(-1)
                c2 = np.int32(stored[2, z, y, x]) if (x > 0 or lower_open[2]) else np.int32(-1)
                c3 = np.int32(stored[0, z + 1, y, x]) if zp else np.int32(-1)
                c4 = np.int32(stored[1, z, y + 1, x]) if yp else np.int32(-1)
                c5 = np.int32(stored[2, z, y, x + 1]) if x + 1 < bx else np.int32(-1)
                # the highest code, ties to the first direction (as argmax): code * 8 + 7 - direction
                key = max(max(max(c0 * 8 + 7, c1 * 8 + 6), max(c2 * 8 + 5, c3 * 8 + 4)), max(c4 * 8 + 3, c5 * 8 + 2))
                if (key >> 3) < low_code:
                    continue
                mask = (1 << (7 - (key & 7))) | (c0 >= high_code) | ((c1 >= high_code) << 1) | \
                    ((c2 >= high_code) << 2) | ((c3 >= high_code) << 3) | ((c4 >= high_code) << 4) | \
                    ((c5 >= high_code) << 5)
                joined[z, y, x] = mask
    return joined


@njit(cache=True)
def _label_stored_joins(joined):
    """`_label_joins` of `_stored_joins`' bits, with each label's voxel count and bounding box."""
    nz, ny, nx = joined.shape
    parent = _union_joins(joined)
    # every parent precedes its child (a union keeps the smaller root), so one pass in order makes each
    # entry its root, and a root is its component's first voxel in C order
    for i in range(len(parent)):
        parent[i] = parent[parent[i]]
    out = np.zeros((nz, ny, nx), np.uint64)
    cap = 1024
    sizes = np.zeros(cap, np.int64)
    boxes = np.zeros((cap, 6), np.int64)
    boxes[0, 0], boxes[0, 2], boxes[0, 4] = nz, ny, nx  # empty: min past max
    boxes[0, 1], boxes[0, 3], boxes[0, 5] = -1, -1, -1
    count = 0
    i = -1
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                i += 1
                k = 0
                if joined[z, y, x] != 0:
                    r = parent[i]
                    if r >= 0:
                        k = parent[r]  # its label as -1 - label once numbered
                    if r < 0 or k < 0:  # a root numbered already (itself or a voxel without pointer before it)
                        k = -1 - (r if r < 0 else k)
                    else:  # first voxel with a pointer in its component: number it
                        count += 1
                        k = count
                        parent[r] = -1 - k
                        if count == cap:
                            sizes = _grow_rows(sizes, cap)
                            boxes = _grow_rows(boxes, cap)
                            cap *= 2
                        boxes[k, 0], boxes[k, 2], boxes[k, 4] = z, y, x
                        boxes[k, 1], boxes[k, 3], boxes[k, 5] = z, y, x
                    out[z, y, x] = k
                sizes[k] += 1
                boxes[k, 0] = min(boxes[k, 0], z)
                boxes[k, 1] = z  # C order: z never decreases
                boxes[k, 2] = min(boxes[k, 2], y)
                boxes[k, 3] = max(boxes[k, 3], y)
                boxes[k, 4] = min(boxes[k, 4], x)
                boxes[k, 5] = max(boxes[k, 5], x)
    return out, sizes[:count + 1], boxes[:count + 1]


@njit(cache=True)
def _grow_rows(a, n):
    """`a` with twice the rows, the first `n` kept, the others 0."""
    out = np.zeros((2 * len(a),) + a.shape[1:], a.dtype)
    out[:n] = a[:n]
    return out

"""Skeletons of every object in one block (kimimaro TEASAR), and their join into one per object.

Blocks overlap by one voxel and kimimaro places a vertex at the centre of each object's cross-section
on every block face (`fix_borders`), so the fragments of neighbouring blocks share that vertex; the
join merges coincident vertices and cleans the result (`kimimaro.postprocess`). Vertices are in
nanometres (x, y, z), voxel i centred at (i + 0.5) * voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from connectome.core.geometry import Box

FRAGMENT_ARRAYS = ("ids", "vertex_counts", "edge_counts", "vertices", "edges", "radii")


def skeletonize_block(
    labels: np.ndarray,
    read_box: Box,
    voxel_size: Sequence[float],
    dust_voxels: int = 100,
    scale: float = 1.5,
    const_nm: float = 300.0,
    world_offset: Sequence[int] = (0, 0, 0),
) -> dict[str, np.ndarray]:
    """Every object's skeleton fragment in `labels` (which holds `read_box`), packed as flat arrays
    (`FRAGMENT_ARRAYS`: per object its vertex and edge counts, then all vertices, edges, radii); vertices in
    the world's nm, the volume's first voxel at `world_offset` (voxels, z y x: `VolumeMeta.offset`)."""
    import kimimaro

    res_xyz = tuple(float(v) for v in reversed(voxel_size))
    skeletons = kimimaro.skeletonize(
        labels.T, teasar_params={"scale": scale, "const": const_nm}, anisotropy=res_xyz,
        dust_threshold=dust_voxels, fix_branching=True, fix_borders=True, progress=False, parallel=1,
    )
    corner = [o + w for o, w in zip(read_box.offset, world_offset)]  # the read box's first voxel in the world
    origin = np.array([(c + 0.5) * r for c, r in zip(reversed(corner), res_xyz)], np.float32)
    ids = np.array(sorted(skeletons), np.uint64)
    parts = [skeletons[int(i)] for i in ids]
    return {
        "ids": ids,
        "vertex_counts": np.array([len(s.vertices) for s in parts], np.int64),
        "edge_counts": np.array([len(s.edges) for s in parts], np.int64),
        "vertices": np.concatenate([s.vertices + origin for s in parts]).astype(np.float32)
        if parts else np.zeros((0, 3), np.float32),
        "edges": np.concatenate([s.edges for s in parts]).astype(np.uint32) if parts else np.zeros((0, 2), np.uint32),
        "radii": np.concatenate([s.radii for s in parts]).astype(np.float32) if parts else np.zeros(0, np.float32),
    }


def unpack(table: dict[str, np.ndarray], wanted: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The fragments of the objects `wanted` from one block's packed arrays: id -> (vertices, edges, radii)."""
    ids = table["ids"]
    v_end, e_end = np.cumsum(table["vertex_counts"]), np.cumsum(table["edge_counts"])
    out = {}
    for i in np.flatnonzero(np.isin(ids, wanted)):
        v0, e0 = v_end[i] - table["vertex_counts"][i], e_end[i] - table["edge_counts"][i]
        out[int(ids[i])] = (table["vertices"][v0:v_end[i]], table["edges"][e0:e_end[i]], table["radii"][v0:v_end[i]])
    return out


def join_fragments(
    fragments: list[tuple[np.ndarray, np.ndarray, np.ndarray]], dust_nm: float, tick_nm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One skeleton (vertices, edges, radii) from an object's block fragments: shared face vertices
    merged, then dust (components shorter than `dust_nm`) and ticks (short side branches) removed."""
    import kimimaro
    from osteoid import Skeleton

    parts = [Skeleton(v.astype(np.float32), e.astype(np.uint32), r.astype(np.float32))
             for v, e, r in fragments if len(v)]
    if not parts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 2), np.uint32), np.zeros(0, np.float32)
    skel = Skeleton.simple_merge(parts).consolidate()
    if len(fragments) > 1 or dust_nm or tick_nm:
        skel = kimimaro.postprocess(skel, dust_threshold=dust_nm, tick_threshold=tick_nm)
    return (np.asarray(skel.vertices, np.float32), np.asarray(skel.edges, np.uint32),
            np.asarray(skel.radii, np.float32))


def with_empty(packed: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """`packed` with an empty fragment for each of `ids` it lacks (objects too small to skeletonize
    in this block still get a skeleton file, empty if no block skeletonized them)."""
    all_ids = np.union1d(packed["ids"], ids.astype(np.uint64))
    at = np.searchsorted(all_ids, packed["ids"])
    vertex_counts = np.zeros(all_ids.size, np.int64)
    edge_counts = np.zeros(all_ids.size, np.int64)
    vertex_counts[at], edge_counts[at] = packed["vertex_counts"], packed["edge_counts"]
    return {**packed, "ids": all_ids, "vertex_counts": vertex_counts, "edge_counts": edge_counts}

"""Surface meshes of every object in one block (zmesh marching cubes, then quadric simplification),
at several levels of detail: level k is the same surface simplified 4**k times more, with 2**k times the error.

A block reads one voxel past its upper faces, so the surfaces of neighbouring blocks meet without a
gap; at the volume's own faces the labels are padded with background so that objects come out closed.
Vertices are in nanometres, (x, y, z), with voxel i centred at (i + 0.5) * voxel size as Neuroglancer
draws it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from connectome.core.geometry import Box


def lod_error(lod: int, max_error: float, voxel_size: Sequence[float]) -> float:
    """The bound (nm) on how far level of detail `lod` moves the surface: level 0's `max_error` (0: one
    voxel's smallest side) times 2**lod; the manifest's scale of that level."""
    return (max_error or min(float(v) for v in voxel_size)) * 2**lod


def lod_simplification(lod: int, simplify: int, max_error: float, voxel_size: Sequence[float]) -> tuple[int, float]:
    """(triangle reduction factor, largest displacement nm) that make level `lod` from the marching-cubes
    surface: level 0 as asked (`simplify` 0 or 1: none), each coarser level 4x fewer triangles."""
    if lod == 0:
        return (simplify if simplify > 1 else 0), lod_error(0, max_error, voxel_size)
    return max(simplify, 1) * 4**lod, lod_error(lod, max_error, voxel_size)


def mesh_block(
    labels: np.ndarray,
    read_box: Box,
    volume_box: Box,
    voxel_size: Sequence[float],
    simplify: int = 10,
    max_error: float = 0.0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(id, vertices float32 (n, 3) x y z nm, triangles uint32 (m, 3)) for each object in `labels`, at
    level of detail 0 only (see `mesh_block_levels`)."""
    for label, levels in mesh_block_levels(labels, read_box, volume_box, voxel_size, simplify, max_error, 1):
        yield label, *levels[0]


def mesh_block_levels(
    labels: np.ndarray,
    read_box: Box,
    volume_box: Box,
    voxel_size: Sequence[float],
    simplify: int = 10,
    max_error: float = 0.0,
    lods: int = 1,
    world_offset: Sequence[int] = (0, 0, 0),
) -> Iterator[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
    """(id, per level of detail (vertices float32 (n, 3) x y z nm, triangles uint32 (m, 3))) for each
    object in `labels` with a surface at level 0 (coarser levels may come out empty).

    `labels` holds `read_box` (z, y, x); `simplify` is level 0's triangle reduction factor (0: none);
    `max_error` bounds its displacement in nm (0: one voxel's smallest side); see `lod_simplification`.
    `world_offset` (voxels, z y x) is where the volume's first voxel sits (`VolumeMeta.offset`): vertices are in
    the world's nm, as Neuroglancer draws the volume.
    """
    import zmesh

    lower = [int(o == v) for o, v in zip(read_box.offset, volume_box.offset)]
    upper = [int(e == v) for e, v in zip(read_box.end, volume_box.end)]
    if any(lower) or any(upper):
        labels = np.pad(labels, list(zip(lower, upper)))
    res_xyz = tuple(float(v) for v in reversed(voxel_size))
    mesher = zmesh.Mesher(res_xyz)
    mesher.mesh(labels.T)  # x, y, z view of the same memory
    origin = np.array([(o + w - p + 0.5) * r for o, w, p, r in zip(reversed(read_box.offset), reversed(world_offset),
                                                                  reversed(lower), res_xyz)], np.float32)
    settings = [lod_simplification(k, simplify, max_error, res_xyz) for k in range(lods)]
    for label in mesher.ids():
        levels = []
        for factor, error in settings:  # each level simplifies the same marching-cubes surface afresh
            mesh = mesher.get(label, normals=False, reduction_factor=factor, max_error=error)
            levels.append(((mesh.vertices + origin).astype(np.float32), mesh.faces.astype(np.uint32)))
            if len(mesh.faces) == 0:
                break
        mesher.erase(label)
        if len(levels[0][1]) == 0:
            continue
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))
        yield int(label), levels + [empty] * (lods - len(levels))
    mesher.clear()

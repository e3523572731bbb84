"""Surface meshes of every object in one block (zmesh marching cubes, then quadric simplification).

A block reads one voxel past its upper faces, so the surfaces of neighbouring blocks meet without a
gap; at the volume's own faces the labels are padded with background so that objects come out closed.
Vertices are in nanometres, (x, y, z), with voxel i centred at (i + 0.5) * voxel size as Neuroglancer
draws it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from connectome.core.geometry import Box


def mesh_block(
    labels: np.ndarray,
    read_box: Box,
    volume_box: Box,
    voxel_size: Sequence[float],
    simplify: int = 10,
    max_error: float = 0.0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(id, vertices float32 (n, 3) x y z nm, triangles uint32 (m, 3)) for each object in `labels`.

    `labels` holds `read_box` (z, y, x); `simplify` is the triangle reduction factor (0: none);
    `max_error` bounds the simplification's displacement in nm (0: one voxel's smallest side).
    """
    import zmesh

    lower = [int(o == v) for o, v in zip(read_box.offset, volume_box.offset)]
    upper = [int(e == v) for e, v in zip(read_box.end, volume_box.end)]
    if any(lower) or any(upper):
        labels = np.pad(labels, list(zip(lower, upper)))
    res_xyz = tuple(float(v) for v in reversed(voxel_size))
    mesher = zmesh.Mesher(res_xyz)
    mesher.mesh(labels.T)  # x, y, z view of the same memory
    origin = np.array([(o - p + 0.5) * r for o, p, r in zip(reversed(read_box.offset), reversed(lower), res_xyz)],
                      np.float32)
    error = max_error or min(res_xyz)
    for label in mesher.ids():
        mesh = mesher.get(label, normals=False, reduction_factor=simplify if simplify > 1 else 0, max_error=error)
        mesher.erase(label)
        if len(mesh.faces) == 0:
            continue
        yield int(label), (mesh.vertices + origin).astype(np.float32), mesh.faces.astype(np.uint32)
    mesher.clear()

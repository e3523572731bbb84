"""Neuroglancer's precomputed legacy mesh format: one fragment file per object and block, and a
manifest per object (`<id>:0`) that lists its fragments, so the blocks of one object load as one mesh.

A fragment is little-endian: uint32 vertex count, float32 (x, y, z) vertices in nm, uint32 triangles.
"""

from __future__ import annotations

import json
import os

import numpy as np

from connectome.core.geometry import Box

INFO = {"@type": "neuroglancer_legacy_mesh"}


def fragment_name(label: int, write_box: Box) -> str:
    """`<id>:0:<z0>-<z1>_<y0>-<y1>_<x0>-<x1>` (the block's write box in voxels)."""
    spans = "_".join(f"{o}-{e}" for o, e in zip(write_box.offset, write_box.end))
    return f"{label}:0:{spans}"


def encode_fragment(vertices: np.ndarray, triangles: np.ndarray) -> bytes:
    head = np.array([len(vertices)], "<u4").tobytes()
    return head + np.ascontiguousarray(vertices, "<f4").tobytes() + np.ascontiguousarray(triangles, "<u4").tobytes()


def decode_fragment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    n = int(np.frombuffer(data, "<u4", 1)[0])
    vertices = np.frombuffer(data, "<f4", 3 * n, 4).reshape(n, 3)
    triangles = np.frombuffer(data, "<u4", offset=4 + 12 * n).reshape(-1, 3)
    return vertices, triangles


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, so that a reader never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_info(directory: str, segment_properties: str | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    info = dict(INFO)
    if segment_properties is not None:
        info["segment_properties"] = segment_properties
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def write_manifest(directory: str, label: int, fragments: list[str]) -> None:
    write_atomic(os.path.join(directory, f"{label}:0"), json.dumps({"fragments": sorted(fragments)}).encode())


def read_mesh(directory: str, label: int) -> tuple[np.ndarray, np.ndarray]:
    """All fragments of one object as one mesh (vertices, triangles), as Neuroglancer assembles it."""
    with open(os.path.join(directory, f"{label}:0")) as f:
        names = json.load(f)["fragments"]
    vertices, triangles, base = [], [], 0
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            v, t = decode_fragment(f.read())
        vertices.append(v)
        triangles.append(t + base)
        base += len(v)
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    return np.concatenate(vertices), np.concatenate(triangles)

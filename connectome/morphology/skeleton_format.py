"""Neuroglancer's precomputed skeleton format: an `info` and one file per object (`<id>`).

A file is little-endian: uint32 vertex count, uint32 edge count, float32 (x, y, z) vertices in nm,
uint32 edge pairs, then each vertex attribute of the info in order (here: float32 radius in nm).
"""

from __future__ import annotations

import json
import os

import numpy as np

from connectome.morphology.mesh_format import write_atomic

INFO = {
    "@type": "neuroglancer_skeletons",
    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
}


def write_info(directory: str, segment_properties: str | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    info = dict(INFO)
    if segment_properties is not None:
        info["segment_properties"] = segment_properties
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def encode_skeleton(vertices: np.ndarray, edges: np.ndarray, radii: np.ndarray) -> bytes:
    head = np.array([len(vertices), len(edges)], "<u4").tobytes()
    return (head + np.ascontiguousarray(vertices, "<f4").tobytes() + np.ascontiguousarray(edges, "<u4").tobytes()
            + np.ascontiguousarray(radii, "<f4").tobytes())


def decode_skeleton(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nv, ne = (int(x) for x in np.frombuffer(data, "<u4", 2))
    vertices = np.frombuffer(data, "<f4", 3 * nv, 8).reshape(nv, 3)
    edges = np.frombuffer(data, "<u4", 2 * ne, 8 + 12 * nv).reshape(ne, 2)
    radii = np.frombuffer(data, "<f4", nv, 8 + 12 * nv + 8 * ne)
    return vertices, edges, radii


def write_skeleton(directory: str, label: int, vertices: np.ndarray, edges: np.ndarray, radii: np.ndarray) -> None:
    write_atomic(os.path.join(directory, str(label)), encode_skeleton(vertices, edges, radii))


def read_skeleton(directory: str, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(os.path.join(directory, str(label)), "rb") as f:
        return decode_skeleton(f.read())

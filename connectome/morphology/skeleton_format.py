"""Neuroglancer's precomputed skeleton format: an `info` and the objects' skeletons, in a few shard files
(`neuroglancer_uint64_sharded_v1`, `export.sharding`; outputs before 2026-12-06: one file per object, `<id>`).

A skeleton is little-endian: uint32 vertex count, uint32 edge count, float32 (x, y, z) vertices in nm,
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


def write_info(directory: str, spec: dict | None = None, segment_properties: str | None = None) -> None:
    """The info of a skeleton folder, sharded by `spec` (`export.sharding.sharding_spec`) where given."""
    os.makedirs(directory, exist_ok=True)
    info: dict = dict(INFO)
    if spec is not None:
        info["sharding"] = spec
    if segment_properties is not None:
        info["segment_properties"] = segment_properties
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def read_info(directory: str) -> dict:
    with open(os.path.join(directory, "info")) as f:
        return json.load(f)


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


def read_skeleton(directory: str, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One object's skeleton as Neuroglancer finds it (no vertices where it has none)."""
    from connectome.export import sharding

    spec = read_info(directory).get("sharding")
    if spec is None:  # (one file per object)
        path = os.path.join(directory, str(label))
        if not os.path.isfile(path):
            return decode_skeleton(encode_skeleton(np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0)))
        with open(path, "rb") as f:
            return decode_skeleton(f.read())
    found = sharding.read_value(directory, label, spec)
    return decode_skeleton(found[0] if found is not None else encode_skeleton(np.zeros((0, 3)), np.zeros((0, 2)),
                                                                                   np.zeros(0)))

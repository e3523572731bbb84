"""Neuroglancer's multi-resolution mesh format (`neuroglancer_multilod_draco`), sharded: per object a
manifest (its fragments at each level of detail) keyed by the object's id in a few shard files, its
Draco-encoded fragments stored right before the manifest (level 0 first, each level in Z-curve order).

Level 0's fragments lie on a grid of the meshing blocks: the fragment at grid position p (x, y, z) holds
the surface between the voxel centres of its block's first voxel and its upper neighbour's first voxel,
`grid_origin + p * chunk_shape` to `grid_origin + (p + 1) * chunk_shape` nm, and stores its vertices as
integers q in [0, 2**bits - 1] of that box (`grid_origin + chunk_shape * (p + q / (2**bits - 1))`).
Level k is the octree above it: cells of `chunk_shape * 2**k` at positions p >> k, each holding the
blocks' coarser meshes (simplified more) of the level-0 fragments inside it, quantized in that cell;
every level-0 fragment has its ancestor at every level (an empty one where simplification left nothing).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from connectome.export import sharding

MESH_TYPE = "neuroglancer_multilod_draco"
IDENTITY = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, so that a reader never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def quantization_bits(chunk_nm: np.ndarray, voxel_size: np.ndarray) -> int:
    """10 bits where they resolve an eighth of a voxel across a chunk, else 16 (the two Neuroglancer reads)."""
    return 10 if float(np.max(chunk_nm)) / 1023 <= float(np.min(voxel_size)) / 8 else 16


def encode_fragment(vertices: np.ndarray, triangles: np.ndarray, lower: np.ndarray, chunk: np.ndarray,
                    bits: int) -> bytes:
    """Draco bytes of one fragment: `vertices` (nm, x y z) quantized in the box `lower` + [0, `chunk`]
    (vertices outside it, up to the simplification's error, are moved onto its faces)."""
    import DracoPy

    top = 2**bits - 1
    q = np.clip(np.round((vertices - lower) / chunk * top), 0, top)
    # identity quantization: Draco stores q itself, which Neuroglancer reads without dequantizing
    return DracoPy.encode(q, np.asarray(triangles, np.uint32), quantization_bits=bits, quantization_range=top,
                          quantization_origin=[0.0, 0.0, 0.0], compression_level=7)


def zorder(positions: np.ndarray) -> np.ndarray:
    """Order of grid positions (n, 3: x y z) along the Z curve, as the manifest lists them."""
    if len(positions) < 2:
        return np.arange(len(positions))
    code = np.zeros(len(positions), np.uint64)
    p = positions.astype(np.uint64)
    for bit in range(int(positions.max()).bit_length()):
        for axis in range(3):
            code |= ((p[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


def merge_fragments(parts: list[bytes], bits: int) -> bytes:
    """One Draco fragment holding the meshes of several, all quantized in the same cell (no bytes: empty)."""
    import DracoPy

    if len(parts) < 2:
        return b"".join(parts)
    points, faces, base = [], [], 0
    for part in parts:
        mesh = DracoPy.decode(part)
        p = np.asarray(mesh.points, np.float64).reshape(-1, 3)
        points.append(p)
        faces.append(np.asarray(mesh.faces, np.uint32).reshape(-1, 3) + base)
        base += len(p)
    top = 2**bits - 1
    return DracoPy.encode(np.concatenate(points), np.concatenate(faces), quantization_bits=bits,
                          quantization_range=top, quantization_origin=[0.0, 0.0, 0.0], compression_level=7)


def encode_manifest(chunk: np.ndarray, origin: np.ndarray, lod_scales: np.ndarray, positions: list[np.ndarray],
                    sizes: list[np.ndarray]) -> bytes:
    """The manifest: per level of detail (finest first) its scale (nm), fragments' grid positions (Z-curve
    order) and byte sizes."""
    lods = len(positions)
    out = [np.asarray(chunk, "<f4").tobytes(), np.asarray(origin, "<f4").tobytes(), struct.pack("<I", lods),
           np.asarray(lod_scales, "<f4").tobytes(), np.zeros(3 * lods, "<f4").tobytes(),
           np.array([len(p) for p in positions], "<u4").tobytes()]
    for p, n in zip(positions, sizes):
        out += [np.asarray(p, "<u4").reshape(-1, 3).T.tobytes(), np.asarray(n, "<u4").tobytes()]
    return b"".join(out)


def decode_manifest(data: bytes) -> dict:
    chunk, origin = np.frombuffer(data, "<f4", 3, 0), np.frombuffer(data, "<f4", 3, 12)
    lods = struct.unpack_from("<I", data, 24)[0]
    lod_scales = np.frombuffer(data, "<f4", lods, 28)
    vertex_offsets = np.frombuffer(data, "<f4", 3 * lods, 28 + 4 * lods).reshape(lods, 3)
    counts = np.frombuffer(data, "<u4", lods, 28 + 16 * lods)
    at, positions, sizes = 28 + 20 * lods, [], []
    for n in counts:
        positions.append(np.frombuffer(data, "<u4", 3 * int(n), at).reshape(3, -1).T)
        sizes.append(np.frombuffer(data, "<u4", int(n), at + 12 * int(n)))
        at += 16 * int(n)
    if at != len(data):
        raise ValueError(f"mesh manifest of {len(data)} bytes, expected {at}")
    return {"chunk": chunk, "origin": origin, "lod_scales": lod_scales, "vertex_offsets": vertex_offsets,
            "positions": positions, "sizes": sizes}


def write_info(directory: str, spec: dict, bits: int, segment_properties: str | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    info = {"@type": MESH_TYPE, "vertex_quantization_bits": bits, "transform": IDENTITY,
            "lod_scale_multiplier": 1.0, "sharding": spec}
    if segment_properties is not None:
        info["segment_properties"] = segment_properties
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def read_info(directory: str) -> dict:
    with open(os.path.join(directory, "info")) as f:
        return json.load(f)


def read_fragments(directory: str, label: int, lod: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """One object's fragments at level of detail `lod` (vertices nm x y z, triangles), each as Neuroglancer
    finds it; [] when the object has no mesh."""
    import DracoPy

    info = read_info(directory)
    found = sharding.read_value(directory, label, info["sharding"])
    if found is None:
        return []
    data, path, offset = found
    manifest = decode_manifest(data)
    positions, sizes = manifest["positions"][lod], manifest["sizes"][lod]
    total = sum(int(s.sum()) for s in manifest["sizes"])
    before = sum(int(s.sum()) for s in manifest["sizes"][:lod])
    with open(path, "rb") as f:
        f.seek(offset - total + before)
        blob = f.read(int(sizes.sum()))
    top = 2 ** info["vertex_quantization_bits"] - 1
    cell = manifest["chunk"].astype(np.float64) * 2**lod
    fragments, at = [], 0
    for position, size in zip(positions, sizes):
        if size == 0:
            fragments.append((np.zeros((0, 3)), np.zeros((0, 3), np.uint32)))
            continue
        mesh = DracoPy.decode(blob[at:at + int(size)])
        at += int(size)
        points = np.asarray(mesh.points, np.float64).reshape(-1, 3)
        vertices = manifest["origin"] + manifest["vertex_offsets"][lod] + cell * (position + points / top)
        fragments.append((vertices, np.asarray(mesh.faces, np.uint32).reshape(-1, 3)))
    return fragments


def read_mesh(directory: str, label: int, lod: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One object's mesh (vertices nm x y z, triangles) at level of detail `lod`, its fragments joined."""
    vertices, triangles, base = [], [], 0
    for v, t in read_fragments(directory, label, lod):
        vertices.append(v)
        triangles.append(t + base)
        base += len(v)
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    return np.concatenate(vertices).astype(np.float32), np.concatenate(triangles)

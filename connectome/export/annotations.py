"""Synapses as a Neuroglancer precomputed annotation layer (`neuroglancer_annotations_v1`): points with
their scores, related to their pre- and postsynaptic segments, so selecting a segment lists its synapses.

Written to `<out>/synapse_annotations/` from `<out>/synapses.csv` (z, y, x in voxels, pre, post, score):
- `by_id/`: per synapse id: x y z float32 (voxel centre), its properties, then per relationship
  a uint32 count and the uint64 segment ids;
- `spatial0/<i>_<j>_<k>`: the synapses in one cell of a grid over the volume, and `rel_pre/`,
  `rel_post/`: per segment id the synapses it is partner of, each as uint64 count, the count
  annotations (position and properties), then their uint64 ids.
`by_id` and the relationship indices are sharded (`export.sharding`): a few files, and a segment
without synapses is a key absent from its minishard (Neuroglancer reads that as none), not a 404.
All little-endian; properties are float32, so an annotation is 4-byte aligned without padding.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from connectome.export import sharding
from connectome.morphology.properties import SYNAPSES_FILE

ANNOTATIONS_DIR = "synapse_annotations"
PROPERTIES = ("score", "partner_score")  # float32 columns of the synapse table, when present
RELATIONSHIPS = (("pre_synaptic_cell", "rel_pre", "pre"), ("post_synaptic_cell", "rel_post", "post"))
GRID = 4  # spatial index cells per axis (at most)
PLACED = "placed.json"  # beside the info: the world offset the positions were written with


def _encoded(rows: dict[str, np.ndarray], properties: list[str], offset: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """The fixed-size part of every annotation: position (x, y, z: the voxel's centre in the world, the volume's
    first voxel at `offset`, z y x) then properties, one record per row."""
    dtype = np.dtype([("position", "<f4", 3)] + [(p, "<f4") for p in properties])
    out = np.zeros(len(rows["z"]), dtype)
    for axis, (name, at) in enumerate(zip("xyz", offset[::-1])):  # in float64, one axis at a time
        out["position"][:, axis] = rows[name].astype(np.float64) + 0.5 + np.float64(at)
    for p in properties:
        out[p] = rows[p]
    return out


def _many(records: np.ndarray, ids: np.ndarray) -> bytes:
    """The multiple-annotation encoding of the spatial and relationship indices."""
    return (np.array([len(records)], "<u8").tobytes() + records.tobytes()
            + np.ascontiguousarray(ids, "<u8").tobytes())


def _write(path: str, *parts: sharding.Data) -> None:
    with open(path, "wb") as f:
        for data in parts:
            f.write(data)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """starts[0] .. starts[0] + counts[0] - 1, then the same of the next, ..., as one array."""
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))


def _many_concatenated(records: np.ndarray, ids: np.ndarray, members: np.ndarray, counts: np.ndarray) -> memoryview:
    """`_many` of each group of `members` (the first counts[0] of them, then the next counts[1], ...), concatenated
    (a view of its bytes), assembled at once in 4-byte words: a group is its count (2 words), its records
    (records.itemsize / 4 words each) and its ids (2 words each), each part filled for all groups in one go."""
    w = records.dtype.itemsize // 4
    out = np.empty(int(2 * counts.size + counts.sum() * (w + 2)), "<u4")
    kind = sharding.group_parts(counts, (2, counts * w, counts * 2))
    out[kind == 0] = counts.astype("<u8").view("<u4")
    out[kind == 1] = np.ascontiguousarray(records[members]).view("<u4")
    out[kind == 2] = np.ascontiguousarray(ids[members], "<u8").view("<u4")
    return out.view(np.uint8).data


def _write_sharded(directory: str, keys: np.ndarray, sizes: np.ndarray,
                   values_of: Callable[[np.ndarray], sharding.Data]) -> dict:
    """Values keyed by `keys` (uint64), `sizes` bytes each, as shard files in `directory`, every shard written
    (empty ones too, so that any key can be looked up); `values_of(rows)` is the values of the entries `rows`
    (indices into `keys`) concatenated in that order. Returns the sharding spec."""
    spec = sharding.sharding_spec(int(keys.size), int(sizes.sum()))
    shard, minishard = sharding.locate(keys, spec)
    order = np.lexsort((keys, minishard, shard))  # each shard's entries in stored order (stable for equal keys)
    n_shards = 2 ** spec["shard_bits"]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=n_shards))])
    for s in range(n_shards):
        rows = order[bounds[s]:bounds[s + 1]]
        _write(os.path.join(directory, sharding.shard_name(s, spec)),
               *sharding.shard_parts(keys[rows], minishard[rows], sizes[rows], values_of(rows), spec))
    return spec


def write_annotations(directory: str, rows: dict[str, np.ndarray], voxel_size: Sequence[float],
                      offset: Sequence[int] = (0, 0, 0)) -> int:
    """Write the synapse table `rows` (columns of synapses.csv: voxels of the array) as an annotation layer into
    `directory` (replaced whole, so a reader sees the old layer or the new one); voxel_size in nm (z, y, x),
    `offset` where the volume's first voxel sits in the world (voxels, z y x; `VolumeMeta.offset`).
    Vectorised (sorts and numpy byte assembly, no Python work per synapse): O(n log n) for n synapses."""
    n = len(rows["z"])
    ids = rows["id"].astype(np.uint64) if "id" in rows else np.arange(1, n + 1, dtype=np.uint64)
    properties = [p for p in PROPERTIES if p in rows]
    records = _encoded(rows, properties, offset)
    positions = records["position"]
    lower = np.floor(positions.min(0)) if n else np.zeros(3)
    upper = np.ceil(positions.max(0)) + 1 if n else np.ones(3)
    chunk = np.maximum(np.ceil((upper - lower) / GRID), 1)
    cells = np.floor((positions - lower) / chunk).astype(np.int64) if n else np.zeros((0, 3), np.int64)
    # the grid tiles the bounds exactly (the spec: grid_shape x chunk_size = upper_bound - lower_bound)
    grid = np.ceil((upper - lower) / chunk).astype(np.int64)
    upper = lower + grid * chunk
    vz, vy, vx = (float(v) for v in voxel_size)
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for key in ("by_id", "spatial0", *(key for _, key, _ in RELATIONSHIPS)):
        os.makedirs(os.path.join(tmp, key))
    flat = np.ravel_multi_index(cells.T, grid) if n else np.zeros(0, np.int64)
    by_cell = np.argsort(flat, kind="stable")
    occupied, starts, counts = np.unique(flat[by_cell], return_index=True, return_counts=True)
    for cell, start, count in zip(occupied, starts, counts):  # at most GRID**3 cells
        members = by_cell[start:start + count]
        name = "_".join(str(int(c)) for c in np.unravel_index(cell, grid))
        _write(os.path.join(tmp, "spatial0", name), _many(records[members], ids[members]))
    limit = int(counts.max()) if counts.size else 0
    del cells, flat, by_cell  # n-sized, not needed further
    rel_columns = [rows[column].astype(np.uint64) for _, _, column in RELATIONSHIPS]
    # the by_id index: each synapse with its partners, one fixed-size record (made shard by shard)
    one = np.dtype([("record", records.dtype)]
                   + [f for _, key, _ in RELATIONSHIPS for f in ((f"{key}_count", "<u4"), (key, "<u8"))])

    def by_id(chosen: np.ndarray) -> memoryview:
        out = np.empty(chosen.size, one)
        out["record"] = records[chosen]
        for (_, key, _), segments in zip(RELATIONSHIPS, rel_columns):
            out[f"{key}_count"] = 1
            out[key] = segments[chosen]
        return out.view(np.uint8).data

    shardings = {"by_id": _write_sharded(os.path.join(tmp, "by_id"), ids, np.full(n, one.itemsize, np.uint64), by_id)}
    for (_, key, _), segments in zip(RELATIONSHIPS, rel_columns):
        order = np.argsort(segments, kind="stable")  # each segment's synapses together, in table order
        unique, starts, counts = np.unique(segments[order], return_index=True, return_counts=True)
        related = unique != 0
        unique, starts, counts = unique[related], starts[related], counts[related]

        def values_of(chosen: np.ndarray, order=order, starts=starts, counts=counts) -> memoryview:
            return _many_concatenated(records, ids, order[_ranges(starts[chosen], counts[chosen])], counts[chosen])

        shardings[key] = _write_sharded(os.path.join(tmp, key), unique,
                                        8 + counts.astype(np.uint64) * np.uint64(records.itemsize + 8), values_of)
    info = {
        "@type": "neuroglancer_annotations_v1",
        "dimensions": {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]},
        "lower_bound": [float(v) for v in lower], "upper_bound": [float(v) for v in upper],
        "annotation_type": "point",
        "properties": [{"id": p, "type": "float32"} for p in properties],
        "relationships": [{"id": name, "key": key, "sharding": shardings[key]} for name, key, _ in RELATIONSHIPS],
        "by_id": {"key": "by_id", "sharding": shardings["by_id"]},
        "spatial": [{"key": "spatial0", "grid_shape": [int(g) for g in grid],
                     "chunk_size": [float(c) for c in chunk], "limit": max(limit, 1)}],
    }
    _write(os.path.join(tmp, "info"), json.dumps(info).encode())
    _write(os.path.join(tmp, PLACED), json.dumps({"offset_zyx": [int(v) for v in offset]}).encode())
    old = f"{directory}.old{os.getpid()}"
    if os.path.isdir(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return n


def _placed_at(directory: str) -> list[int]:
    """The world offset a layer's positions were written with ((0, 0, 0) for a layer from before it was kept)."""
    try:
        with open(os.path.join(directory, PLACED)) as f:
            return [int(v) for v in json.load(f)["offset_zyx"]]
    except (OSError, ValueError, KeyError, TypeError):
        return [0, 0, 0]


def refresh_annotations(out_dir: str, voxel_size: Sequence[float], offset: Sequence[int] = (0, 0, 0)) -> str | None:
    """`<out_dir>/synapse_annotations`, (re)written when synapses.csv is newer than it or it was placed at another
    world offset than the volume's `offset` (z y x voxels); None without a synapse table."""
    table = os.path.join(out_dir, SYNAPSES_FILE)
    directory = os.path.join(out_dir, ANNOTATIONS_DIR)
    if not os.path.isfile(table):
        return None
    info = os.path.join(directory, "info")
    if (not os.path.isfile(info) or os.path.getmtime(info) < os.path.getmtime(table)
            or _placed_at(directory) != [int(v) for v in offset]):
        from connectome.synapses.table import read_synapses

        write_annotations(directory, read_synapses(table), voxel_size, offset)
    return directory

"""Per-segment properties in Neuroglancer's `neuroglancer_segment_properties` format (inline).

Size (voxels) always; a class per segment (axon, dendrite, ...) as tags, its radius and branching, and
synapse counts (as pre- and postsynaptic partner) as numbers when the stages that make them have run
(`segments.csv`, `synapses.csv` in the output directory); `refresh` brings the properties up to date when
those tables are newer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from connectome.morphology.mesh_format import write_atomic
from connectome.neurites.types import SUMMARY_COLUMNS

PROPERTIES_DIR = "segment_properties"
SEGMENTS_FILE = "segments.csv"  # the neurite_types stage's table: id, class, ...
SYNAPSES_FILE = "synapses.csv"  # the synapse chain's table: z, y, x, pre, post, score, ...
MORPHOLOGY = dict(zip(SUMMARY_COLUMNS, ("mean distance to the boundary, nm (-1: not measured)",
                                         "share of Sholl lattice points at a branch (-1: not measured)")))


def _number(name: str, values: np.ndarray, description: str) -> dict:
    values = np.asarray(values)
    exact = values.size == 0 or (values.min() >= 0 and values.max() < 2**32 and values.dtype.kind in "iu")
    dtype = "uint32" if exact else "float32"
    return {"id": name, "type": "number", "data_type": dtype, "description": description,
            "values": [int(v) for v in values] if exact else [float(v) for v in values]}


def segment_properties(
    ids: np.ndarray,
    voxels: np.ndarray,
    classes: np.ndarray | None = None,
    class_names: list[str] | None = None,
    synapse_counts: Mapping[str, np.ndarray] | None = None,
    morphology: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """The info JSON for segments `ids` (uint64): size in voxels; `classes` (index into
    `class_names` per id, -1 for none) as tags; `synapse_counts` (name -> count per id) and `morphology`
    (name in MORPHOLOGY -> value per id) as numbers."""
    props = [
        {"id": "label", "type": "label", "values": [f"{int(i)} ({int(v)} vx)" for i, v in zip(ids, voxels)]},
        _number("size", voxels, "voxels"),
    ]
    if classes is not None and class_names is not None:
        props.append({"id": "class", "type": "tags", "tags": list(class_names),
                      "values": [[int(c)] if c >= 0 else [] for c in classes]})
    for name, counts in (synapse_counts or {}).items():
        props.append(_number(name, counts, "synapses"))
    for name, values in (morphology or {}).items():
        props.append(_number(name, values, MORPHOLOGY[name]))
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": [str(int(i)) for i in ids], "properties": props}}


def from_tables(out_dir: str, ids: np.ndarray, voxels: np.ndarray) -> dict:
    """The info JSON for segments `ids` of size `voxels`, with the class of each from
    `<out_dir>/segments.csv` and its synapse counts from `<out_dir>/synapses.csv` where those exist."""
    ids = np.asarray(ids, np.uint64)
    classes = names = morphology = None
    segments_csv = os.path.join(out_dir, SEGMENTS_FILE)
    if os.path.isfile(segments_csv):
        from connectome.neurites.types import read_segments

        table = read_segments(segments_csv)
        labelled = np.array([c not in ("", "unknown") for c in table["class"]], bool)
        names = sorted({str(c) for c in table["class"][labelled]})
        code = np.array([names.index(str(c)) if ok else -1 for c, ok in zip(table["class"], labelled)], np.int64)
        classes = _lookup(ids, table["id"], code, -1)
        morphology = {k: _lookup(ids, table["id"], np.nan_to_num(table[k], nan=-1.0), -1.0)
                      for k in MORPHOLOGY if k in table}
    counts = None
    synapses_csv = os.path.join(out_dir, SYNAPSES_FILE)
    from connectome.synapses.table import partners_are_ids_of, read_synapses

    # (a table whose partners are ids of another segmentation, `synapses --segmentation`, is not counted here)
    if os.path.isfile(synapses_csv) and partners_are_ids_of(out_dir, os.path.join(out_dir, "segmentation")):
        synapses = read_synapses(synapses_csv)
        counts = {"synapses_out": _count(ids, synapses["pre"]), "synapses_in": _count(ids, synapses["post"])}
    return segment_properties(ids, voxels, classes, names, counts, morphology)


def _lookup(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, missing: float) -> np.ndarray:
    """values[keys == id] for each of `ids`, `missing` where an id is not among `keys`."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order].astype(np.uint64), values[order]
    at = np.clip(np.searchsorted(keys, ids), 0, max(keys.size - 1, 0))
    found = (keys[at] == ids) if keys.size else np.zeros(ids.size, bool)
    out = np.full(ids.size, missing, values.dtype)
    out[found] = values[at[found]]
    return out


def _count(ids: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """How often each of `ids` occurs in `partners`."""
    unique, counts = np.unique(partners.astype(np.uint64), return_counts=True)
    return _lookup(ids, unique, counts.astype(np.int64), 0)


def refresh(out_dir: str) -> bool:
    """Rewrite `<out_dir>/segment_properties` with class and synapse counts when segments.csv or
    synapses.csv is newer than it (they were made after the meshes); True when it rewrote it."""
    info = os.path.join(out_dir, PROPERTIES_DIR, "info")
    if not os.path.isfile(info):
        return False
    tables = [os.path.join(out_dir, name) for name in (SEGMENTS_FILE, SYNAPSES_FILE)]
    newest = max((os.path.getmtime(t) for t in tables if os.path.isfile(t)), default=None)
    if newest is None or newest <= os.path.getmtime(info):
        return False
    sizes = read_sizes(os.path.dirname(info))
    ids = np.fromiter(sizes.keys(), np.uint64, len(sizes))
    voxels = np.fromiter(sizes.values(), np.int64, len(sizes))
    write_segment_properties(os.path.dirname(info), from_tables(out_dir, ids, voxels))
    return True


def write_segment_properties(directory: str, info: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def read_sizes(directory: str) -> dict[int, int]:
    """id -> size in voxels, from a segment properties directory."""
    with open(os.path.join(directory, "info")) as f:
        inline = json.load(f)["inline"]
    size = next(p for p in inline["properties"] if p["id"] == "size")
    return {int(i): int(v) for i, v in zip(inline["ids"], size["values"])}

"""Per-segment properties in Neuroglancer's `neuroglancer_segment_properties` format (inline).

Size (voxels) always; a class per segment (axon, dendrite, ...) as tags and synapse counts as numbers
when the stages that make them have run (pass them in; absent ones are left out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from connectome.morphology.mesh_format import write_atomic


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
) -> dict:
    """The info JSON for segments `ids` (uint64): size in voxels; `classes` (index into
    `class_names` per id, -1 for none) as tags; `synapse_counts` (name -> count per id) as numbers."""
    props = [
        {"id": "label", "type": "label", "values": [f"{int(i)} ({int(v)} vx)" for i, v in zip(ids, voxels)]},
        _number("size", voxels, "voxels"),
    ]
    if classes is not None and class_names is not None:
        props.append({"id": "class", "type": "tags", "tags": list(class_names),
                      "values": [[int(c)] if c >= 0 else [] for c in classes]})
    for name, counts in (synapse_counts or {}).items():
        props.append(_number(name, counts, "synapses"))
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": [str(int(i)) for i in ids], "properties": props}}


def write_segment_properties(directory: str, info: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    write_atomic(os.path.join(directory, "info"), json.dumps(info).encode())


def read_sizes(directory: str) -> dict[int, int]:
    """id -> size in voxels, from a segment properties directory."""
    with open(os.path.join(directory, "info")) as f:
        inline = json.load(f)["inline"]
    size = next(p for p in inline["properties"] if p["id"] == "size")
    return {int(i): int(v) for i, v in zip(inline["ids"], size["values"])}

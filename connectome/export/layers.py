"""What an output directory holds that a viewer can show: the raw image, the segmentation, its meshes,
skeletons and segment properties, the synapses, and other volumes (shown hidden)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from connectome.core.address import PRECOMPUTED, parse_address
from connectome.core.errors import UserError
from connectome.export.annotations import ANNOTATIONS_DIR

RAW_CANDIDATES = ("aligned", "raw", os.path.join("synth", "raw"))
LABEL_DTYPES = ("uint32", "uint64")


@dataclass(frozen=True)
class VolumeLayer:
    name: str
    address: str  # a local directory (zarr group) or a precomputed:// address
    kind: str  # "image" or "segmentation"
    shape: tuple[int, int, int]  # z, y, x
    voxel_size: tuple[float, float, float]  # nm, z, y, x
    offset: tuple[int, int, int] = (0, 0, 0)
    channels: int | None = None


@dataclass
class OutputLayers:
    out_dir: str
    raw: VolumeLayer | None = None
    segmentation: VolumeLayer | None = None
    others: list[VolumeLayer] = field(default_factory=list)
    meshes: str | None = None
    skeletons: str | None = None
    segment_properties: str | None = None
    synapses: str | None = None  # the synapse annotation layer (export.annotations)
    # the segmentation whose ids synapses.csv's partners are, where that is not `segmentation` (synapses run with
    # `--segmentation` on another volume than the output directory's): the synapse layer is linked to it
    synapse_segmentation: VolumeLayer | None = None

    def segment_sizes(self) -> dict[int, int]:
        """id -> voxels, from the segment properties (empty without them)."""
        if self.segment_properties is None:
            return {}
        from connectome.morphology.properties import read_sizes

        return read_sizes(self.segment_properties)


def _volume(name: str, address: str) -> VolumeLayer | None:
    """A layer for the volume at `address`, or None where there is none (or none a viewer can read). A section
    range (`raw[8:40]`, as a run's input) shows the whole volume: the run's outputs lie at their place in it."""
    from connectome.core.address import parse_address
    from connectome.io import open_volume

    address = parse_address(address).base
    local = address[len(PRECOMPUTED):] if address.startswith(PRECOMPUTED) else address
    if local.startswith("file://"):
        local = local[len("file://"):]
    elif "://" in local:
        return None  # remote: shown only through --source-url
    marker = "info" if address.startswith(PRECOMPUTED) else "zarr.json"
    if not os.path.isfile(os.path.join(local, marker)):
        return None
    meta = open_volume(address).meta
    kind = "segmentation" if meta.dtype.name in LABEL_DTYPES and meta.channels is None else "image"
    (z, y, x), (vz, vy, vx), (oz, oy, ox) = meta.shape, meta.voxel_size, meta.offset
    return VolumeLayer(name, address, kind, (z, y, x), (vz, vy, vx), (oz, oy, ox), meta.channels)


def _run_input(out_dir: str) -> str | None:
    try:
        with open(os.path.join(out_dir, "run.json")) as f:
            value = json.load(f).get("input")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def recorded_input(out_dir: str, stage: str, name: str) -> str | None:
    """The address of input `name` that stage `stage` of the output directory ran on, as its done-markers'
    fingerprint records it (in full); None where it has none."""
    from connectome.engine.markers import DoneMarkers

    try:
        fingerprint = DoneMarkers(out_dir, stage).fingerprint() or {}
    except (UserError, OSError):  # (damaged markers: unknown)
        return None
    address = (fingerprint.get("inputs") or {}).get(name)
    if not isinstance(address, str):
        return None
    return address if "://" in address or os.path.isabs(address) else os.path.join(out_dir, address)


def _run_segmentation(out_dir: str) -> str | None:
    """The segmentation the meshes or skeletons of the output directory were made of (a lab's own, given as the
    stages' `inputs: {segmentation: ADDR}`), where they were."""
    for stage in ("meshes", "skeletons"):
        address = recorded_input(out_dir, stage, "segmentation")
        if address is not None:
            return address
    return None


def find_layers(out_dir: str) -> OutputLayers:
    """The viewable parts of `out_dir`; one line naming what is missing when there is nothing to show."""
    out_dir = os.path.abspath(out_dir)
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: no such directory; expected the output directory of a run")
    found = OutputLayers(out_dir)
    candidates = [os.path.join(out_dir, c) for c in RAW_CANDIDATES]
    run_input = _run_input(out_dir)
    if run_input is not None:
        candidates.append(run_input)
    for address in candidates:
        layer = _volume("raw", address)
        if layer is not None and layer.kind == "image":
            found.raw = layer
            break
    found.segmentation = _volume("segmentation", os.path.join(out_dir, "segmentation"))
    if found.segmentation is None and (elsewhere := _run_segmentation(out_dir)) is not None:
        found.segmentation = _volume("segmentation", elsewhere)  # (its meshes and skeletons are in out_dir)
    if found.segmentation is not None and found.segmentation.kind != "segmentation":
        raise UserError(f"{found.segmentation.address}: expected a uint32/uint64 label volume, found an image")
    shown = [local_path(layer.address) for layer in (found.raw, found.segmentation) if layer is not None]
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name == "segmentation" or any(os.path.exists(s) and os.path.samefile(path, s) for s in shown):
            continue
        layer = _volume(name, path) if os.path.isdir(path) else None
        if layer is not None:
            found.others.append(layer)
    for attr in ("meshes", "skeletons", "segment_properties"):
        if os.path.isfile(os.path.join(out_dir, attr, "info")):
            setattr(found, attr, os.path.join(out_dir, attr))
    _place_synapse_segmentation(found)
    if os.path.isfile(os.path.join(out_dir, ANNOTATIONS_DIR, "info")):
        found.synapses = os.path.join(out_dir, ANNOTATIONS_DIR)
    if found.raw is None and found.segmentation is None and not found.others:
        raise UserError(f"{out_dir}: found no raw image, segmentation or other zarr/precomputed volume to show")
    return found


def _place_synapse_segmentation(found: OutputLayers) -> None:
    """Where synapses.csv records another segmentation than the output directory's (`synapses --segmentation`):
    it is the segmentation layer when the directory has none, else the layer `synapse_segmentation`."""
    from connectome.synapses.table import same_volume, synapse_segmentation

    address = synapse_segmentation(found.out_dir)
    if address is None or not os.path.exists(local_path(parse_address(address).path)):
        return
    if found.segmentation is None:
        found.segmentation = _volume("segmentation", address)
    elif not same_volume(address, found.segmentation.address):
        found.synapse_segmentation = _volume("synapse_segmentation", address)
        found.others = [o for o in found.others if not same_volume(o.address, address)]


def local_path(address: str) -> str:
    local = address[len(PRECOMPUTED):] if address.startswith(PRECOMPUTED) else address
    return local[len("file://"):] if local.startswith("file://") else local


def largest(sizes: dict[int, int], n: int) -> list[int]:
    """The `n` largest segments, largest first."""
    if not sizes:
        return []
    ids = np.fromiter(sizes.keys(), np.uint64, len(sizes))
    voxels = np.fromiter(sizes.values(), np.int64, len(sizes))
    order = np.argsort(-voxels, kind="stable")[:n]
    return [int(i) for i in ids[order]]

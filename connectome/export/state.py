"""The Neuroglancer state for an output directory: raw, the segmentation with its meshes, skeletons
and segment properties (every segment coloured in the 2-D panels, the largest shown in 3-D), the
synapses as points related to their segments, and the other volumes hidden. Sources are URLs under a
base (the local server, or a gs:// / s3:// copy)."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable

from connectome.core.address import PRECOMPUTED
from connectome.export.annotations import RELATIONSHIPS
from connectome.export.layers import OutputLayers, VolumeLayer, largest, local_path
from connectome.synapses.table import partners_are_ids_of

SHOWN_IN_3D = 300  # segments listed (meshes and skeletons drawn); the rest are coloured in 2-D only


def _source(layer: VolumeLayer, url_of: Callable[[str], str]) -> str:
    if layer.address.startswith(PRECOMPUTED):
        return "precomputed://" + url_of(local_path(layer.address))
    return "zarr3://" + url_of(layer.address) + "/"


def _volume_layer(layer: VolumeLayer, url_of: Callable[[str], str], visible: bool) -> dict:
    out: dict = {"type": layer.kind, "source": _source(layer, url_of), "name": layer.name}
    if not visible:
        out["visible"] = False
    if layer.kind == "image" and layer.channels:
        out["shader"] = "#uicontrol invlerp normalized\nvoid main() { emitGrayscale(normalized()); }"
    return out


def viewer_state(layers: OutputLayers, url_of: Callable[[str], str], shown: int = SHOWN_IN_3D) -> dict:
    """The state JSON; `url_of` maps a local path to the URL Neuroglancer reads it from."""
    state_layers = []
    if layers.raw is not None:
        state_layers.append(_volume_layer(layers.raw, url_of, True))
    if layers.segmentation is not None:
        seg = _volume_layer(layers.segmentation, url_of, True)
        sources = [seg["source"]]
        for path in (layers.meshes, layers.skeletons, layers.segment_properties):
            if path is not None:
                sources.append("precomputed://" + url_of(path))
        seg["source"] = sources
        sizes = layers.segment_sizes()
        listed = largest(sizes, shown)
        seg["segments"] = [str(i) for i in listed]
        seg["selectedAlpha"] = 0.6
        # segments not listed stay coloured in the cross-sections (Neuroglancer hides them at alpha 0)
        seg["notSelectedAlpha"] = 0.6 if len(listed) < len(sizes) or not listed else 0.0
        state_layers.append(seg)
    linked = None  # the layer whose ids the synapses' partners are (none shown: the synapses are not linked)
    if layers.synapse_segmentation is not None:
        state_layers.append(_volume_layer(layers.synapse_segmentation, url_of, False))
        linked = layers.synapse_segmentation.name
    elif layers.segmentation is not None and partners_are_ids_of(layers.out_dir, layers.segmentation.address):
        linked = "segmentation"
    if layers.synapses is not None:
        state_layers.append(synapse_layer(layers.synapses, url_of, linked))
    for other in layers.others:
        state_layers.append(_volume_layer(other, url_of, False))
    state = {"layers": state_layers, "layout": "4panel", "showSlices": False,
             "selectedLayer": {"layer": "segmentation" if layers.segmentation else state_layers[0]["name"]}}
    return {**view_of(layers.segmentation or layers.raw or layers.others[0]), **state}


def synapse_layer(path: str, url_of: Callable[[str], str], linked: str | None) -> dict:
    """The synapses as points; linked to the segmentation layer `linked` (the one their partners are ids of),
    they are filtered to the synapses of the segments shown (select a segment to see its synapses; the layer's
    panel lists them)."""
    layer: dict = {"type": "annotation", "source": "precomputed://" + url_of(path), "name": "synapses",
                   "shader": "void main() { setColor(vec3(1.0, 0.9, 0.1)); setPointMarkerSize(6.0); }"}
    if linked:
        relationships = [name for name, _, _ in RELATIONSHIPS]
        layer["linkedSegmentationLayer"] = {name: linked for name in relationships}
        layer["filterBySegmentation"] = relationships
    return layer


def view_of(layer: VolumeLayer) -> dict:
    """Dimensions in the volume's voxels (x, y, z), the centre in view, the whole volume in each panel."""
    z, y, x = layer.voxel_size
    centre = [o + s / 2 for o, s in zip(reversed(layer.offset), reversed(layer.shape))]
    extent = max(layer.shape[1] * y, layer.shape[2] * x, layer.shape[0] * z)
    return {"dimensions": {"x": [x * 1e-9, "m"], "y": [y * 1e-9, "m"], "z": [z * 1e-9, "m"]},
            "position": centre,
            "crossSectionScale": max(layer.shape[1], layer.shape[2]) / 400,  # voxels per screen pixel
            "projectionScale": extent * 1.6 / min(x, y, z)}  # voxels of the 3-D panel's height


def url_mapper(out_dir: str, out_base: str, extra: dict[str, str] | None = None) -> Callable[[str], str]:
    """Map local paths under `out_dir` to `out_base` + their relative path, and those under each
    directory of `extra` (directory -> base) likewise."""
    roots = [(os.path.abspath(out_dir), out_base.rstrip("/"))]
    roots += [(os.path.abspath(d), b.rstrip("/")) for d, b in (extra or {}).items()]

    def url_of(path: str) -> str:
        path = os.path.abspath(path)
        for root, base in roots:
            if path == root or path.startswith(root + os.sep):
                rel = os.path.relpath(path, root)
                return base if rel == "." else base + "/" + urllib.parse.quote(rel.replace(os.sep, "/"))
        raise ValueError(f"{path} lies outside the served directories")

    return url_of


def state_url(base_url: str, state: dict) -> str:
    """`base_url/#!<state>`, the form Neuroglancer reads its state from."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{base_url}/#!{urllib.parse.quote(text, safe='')}"

"""A segmentation ingested into a precomputed layer takes its meshes, skeletons and segment properties along: the
folders the viewer stages wrote beside it are copied into the layer (`mesh/`, `skeletons/`, `segment_properties/`,
as igneous lays a layer out) and named in its `info`, so Neuroglancer, cloud-volume and igneous find them from the
layer alone (`CloudVolume(layer).mesh.get(ids)`)."""

from __future__ import annotations

import json
import os

from connectome.core.address import parse_address
from connectome.export.layers import recorded_input

# info key -> (the folder of the output directory, the stage whose input segmentation it was made from, folder name
# in the layer)
CARRIED = {
    "mesh": ("meshes", "meshes", "mesh"),
    "skeletons": ("skeletons", "skeletons", "skeletons"),
}
PROPERTIES = ("segment_properties", "segment_properties")  # (its folder in the output directory, in the layer)


def made_from(out_dir: str, stage: str, segmentation: str) -> bool:
    """Whether `stage` of the output directory `out_dir` ran on the volume at `segmentation`."""
    from connectome.synapses.table import same_volume

    address = recorded_input(out_dir, stage, "segmentation")
    return address is not None and same_volume(address, segmentation)


def carry_morphology(src: str, dst: str) -> list[str]:
    """Copy into the precomputed layer `dst` the meshes and skeletons that the viewer stages made of the zarr
    segmentation `src` (in the output directory holding it), and the segment properties beside them, and name them
    in its info; the info keys carried ([] where there is nothing to carry)."""
    from cloudfiles import CloudFiles

    from connectome.io.precomputed import cloudpath

    if parse_address(src).kind != "zarr" or parse_address(src).sections is not None:
        return []
    out_dir = os.path.dirname(os.path.abspath(parse_address(src).path))
    carried = {key: (os.path.join(out_dir, folder), name) for key, (folder, stage, name) in CARRIED.items()
               if os.path.isfile(os.path.join(out_dir, folder, "info")) and made_from(out_dir, stage, src)}
    if not carried:
        return []
    properties = os.path.join(out_dir, PROPERTIES[0])
    if os.path.isfile(os.path.join(properties, "info")):
        carried["segment_properties"] = (properties, PROPERTIES[1])
    layer = CloudFiles(cloudpath(dst))
    for key, (folder, name) in carried.items():
        files = [os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
                 if not f.startswith(".")]
        CloudFiles(f"{cloudpath(dst).rstrip('/')}/{name}").transfer_from(f"file://{folder}", paths=files)
        if key != "segment_properties" and "segment_properties" in carried:  # (a mesh or skeleton source opened
            sub = json.loads(layer.get(f"{name}/info"))  # alone shows the properties too)
            sub["segment_properties"] = f"../{PROPERTIES[1]}"
            layer.put(f"{name}/info", json.dumps(sub).encode(), compress=None, content_type="application/json")
    info = json.loads(layer.get("info"))
    info.update({key: name for key, (_, name) in carried.items()})
    layer.put("info", json.dumps(info).encode(), compress=None, content_type="application/json")
    return sorted(carried)

"""generate(): a deterministic synthetic EM volume with complete ground truth."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from connectome.synth import codes as K
from connectome.synth import defects as D
from connectome.synth import imaging, packing, synapses
from connectome.synth.options import ImagingOptions, TissueOptions
from connectome.synth.raster import Segments, rasterise
from connectome.synth.volume import SynthVolume


def generate(shape: Sequence[int] = (64, 256, 256), voxel_size: Sequence[float] = (8.0, 8.0, 8.0),
             seed: int = 0, defects: D.Defects | None = None, tissue: TissueOptions | None = None,
             imaging_options: ImagingOptions | None = None) -> SynthVolume:
    """A synthetic EM volume of `shape` voxels at `voxel_size` nm (z, y, x), the same for the same seed.

    Sizes are physical, so anisotropic (40 x 4 x 4) and isotropic (8 x 8 x 8) volumes both show
    plausible tissue. Defects are drawn from their own random stream: the tissue and its image
    (before defects) are the same with and without them.
    """
    shape = tuple(int(s) for s in shape)
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape}")
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise ValueError(f"voxel_size must be three positive sizes in nm (z, y, x), got {voxel_size}")
    defects = defects or D.Defects()
    tissue = tissue or TissueOptions()
    imaging_options = imaging_options or ImagingOptions()
    scene_ss, texture_ss, noise_ss, defect_ss = np.random.SeedSequence(int(seed)).spawn(4)
    scene_rng = np.random.default_rng(scene_ss)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    scene, painted = packing.pack(scene_rng, shape, voxel_size, tissue, timings)
    labels, comps = painted.labels, painted.compartments

    t = time.perf_counter()
    organelles = np.zeros(shape, np.uint8)
    mitos = Segments.from_rows([m for n in scene.neurons for m in n.mitos])
    rasterise(mitos, voxel_size, None, organelles, None, comps == K.C_NUCLEUS, force=True, within=labels)
    boundary = imaging.boundary_distance(labels, voxel_size)
    # mitochondria keep clear of the plasma membrane, as in real cells
    organelles[boundary <= max(20.0, 1.5 * min(voxel_size[1:]))] = K.O_NONE
    volume_um3 = float(np.prod(np.asarray(shape) * np.asarray(voxel_size))) / 1e9
    wanted = max(tissue.min_synapses, round(tissue.synapses_per_um3 * volume_um3))
    syn = synapses.choose_synapses(scene_rng, labels, comps, voxel_size, wanted)
    centres = synapses.synapse_marks(scene_rng, syn, labels, boundary, voxel_size, organelles)
    vesicle_dark = synapses.stamp_vesicles(centres, labels, voxel_size, organelles)
    timings["organelles_s"] = time.perf_counter() - t

    t = time.perf_counter()
    img = imaging.render(np.random.default_rng(texture_ss), labels, comps, organelles, boundary,
                         vesicle_dark, scene.classes, voxel_size, imaging_options)
    del boundary, vesicle_dark
    record = D.draw(defect_ss, shape[0], defects)
    if defects.shifts:
        img = D.shift_sections(img, record.shifts)
    img = D.apply_drift(img, record)
    img = imaging.add_noise(np.random.default_rng(noise_ss), img, imaging_options)
    raw = imaging.to_uint8(img)
    del img
    tissue_vol = painted.tissue
    for z in record.missing:
        raw[z] = defects.blank_value
        tissue_vol[z] = K.TISSUE_DEFECT
    timings["image_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    present = set(int(i) for i in np.unique(labels)) - {0}
    classes = {k: v for k, v in scene.classes.items() if k in present}
    return SynthVolume(
        raw=raw, labels=labels, tissue=tissue_vol, compartments=comps, organelles=organelles,
        voxel_size=voxel_size, seed=int(seed), classes=classes, synapses=syn,
        skeletons=skeletons_in_volume(scene, shape, voxel_size, present), sections=record,
        defects=defects, options={"tissue": _jsonable(tissue), "imaging": _jsonable(imaging_options)},
        timings=timings,
    )


def skeletons_in_volume(scene: packing.Scene, shape, voxel_size, present: set[int]):
    """Each neuron's generating centreline, cut to the nodes whose voxel lies in the volume."""
    vs = np.asarray(voxel_size, float)
    out = {}
    for n in scene.neurons:
        if n.cls not in (K.AXON, K.DENDRITE, K.SOMA) or n.label not in present or not n.nodes:
            continue
        nodes = np.asarray(n.nodes, float)
        vox = np.round(nodes / vs)
        keep = np.all((vox >= 0) & (vox < shape), axis=1)
        new_index = np.cumsum(keep) - 1
        edges = np.asarray(n.edges, np.int64).reshape(-1, 2)
        edges = edges[keep[edges[:, 0]] & keep[edges[:, 1]]]
        out[n.label] = (nodes[keep].astype(np.float32), new_index[edges].astype(np.int32).reshape(-1, 2))
    return out


def _jsonable(options) -> dict:
    return json_ready(dataclasses.asdict(options))


def json_ready(obj):
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj

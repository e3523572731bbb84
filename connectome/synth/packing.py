"""Cell packing: lay out vessels, somata and neurites, paint them, and close the gaps as neuropil does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import edt
import numpy as np
from scipy import ndimage as ndi

from connectome.synth import codes as K
from connectome.synth.neurites import (
    Neuron,
    Obstacles,
    Space,
    make_axon,
    make_dendrite,
    make_myelinated_axon,
    make_soma_neuron,
    random_unit,
    unit,
)
from connectome.synth.options import TissueOptions
from connectome.synth.raster import Segments, capsule_window, rasterise


@dataclass
class Vessel:
    a: np.ndarray
    b: np.ndarray
    lumen: float
    wall: float
    endfoot: float
    glia_label: int


@dataclass
class Scene:
    """Everything placed in the volume, before painting."""

    neurons: list[Neuron] = field(default_factory=list)
    vessels: list[Vessel] = field(default_factory=list)
    nuclei: list[tuple[int, np.ndarray, float]] = field(default_factory=list)  # (label, centre, r)
    classes: dict[int, str] = field(default_factory=dict)
    glia_seeds: list[tuple[int, np.ndarray]] = field(default_factory=list)
    spine_heads: list[tuple[np.ndarray, float]] = field(default_factory=list)  # obstacles for axons
    next_label: int = 1

    def new_label(self, cls: str) -> int:
        label = self.next_label
        self.next_label += 1
        self.classes[label] = cls
        return label


@dataclass
class Painted:
    labels: np.ndarray  # uint64
    compartments: np.ndarray  # uint8
    tissue: np.ndarray  # uint8


def _counts(opts: TissueOptions, space: Space):
    wide = min(space.extent[1], space.extent[2]) >= opts.min_extent_for_cells_nm
    somata = opts.somata if opts.somata is not None else (max(1, round(space.volume_um3 / 2000)) if wide else 0)
    vessels = opts.vessels if opts.vessels is not None else (1 if wide else 0)
    myelin = (opts.myelinated_axons if opts.myelinated_axons is not None
              else min(4, int(space.volume_um3 // 8)))
    return somata, vessels, myelin


def layout(rng: np.random.Generator, shape, voxel_size, opts: TissueOptions) -> tuple[Scene, Obstacles]:
    """Place vessels, somata (with their dendrites) and myelinated axons: the structures painted first."""
    space = Space.of(shape, voxel_size)
    scene = Scene()
    obstacles = Obstacles()
    n_somata, n_vessels, n_myelin = _counts(opts, space)
    min_xy = float(min(space.extent[1], space.extent[2]))
    for _ in range(n_vessels):
        tilt = rng.uniform(0, np.pi / 4)
        d = unit(np.array([np.cos(tilt), 0, 0]) + np.sin(tilt) * np.r_[0, random_unit(rng)[1:]])
        q = space.lo + space.extent * np.r_[0.5, rng.uniform(0.2, 0.8, 2)]
        lumen = float(np.clip(0.15 * min_xy, 150.0, 2500.0))
        wall = max(0.2 * lumen, 2.5 * float(min(voxel_size)))
        endfoot = max(0.15 * lumen, 80.0)
        far = float(np.linalg.norm(space.extent)) + lumen
        label = scene.new_label(K.GLIA)
        scene.vessels.append(Vessel(q - d * far, q + d * far, lumen, wall, endfoot, label))
        obstacles.add(q - d * far, q + d * far, lumen + wall + endfoot)
    heads = scene.spine_heads
    for _ in range(n_somata):
        R = float(np.clip(0.3 * min_xy, 300.0, opts.shapes.soma_radius_max))
        for _try in range(30):
            c = space.uniform(rng)
            if obstacles.clearance(c, 1.15 * R) > 0:
                break
        else:
            continue
        label = scene.new_label(K.SOMA)
        neuron, (nc, nr) = make_soma_neuron(rng, label, c, R, space, obstacles, opts.shapes, heads)
        scene.neurons.append(neuron)
        scene.nuclei.append((label, nc, nr))
        _add_shafts(obstacles, neuron)
    for _ in range(n_myelin):
        axon_label = scene.new_label(K.AXON)
        sheath_label = scene.new_label(K.GLIA)
        axon, sheath = make_myelinated_axon(rng, axon_label, sheath_label, space, obstacles, opts.shapes)
        scene.neurons += [axon, sheath]
    return scene, obstacles


def _add_shafts(obstacles: Obstacles, neuron: Neuron, compartment: int = K.C_DENDRITE,
                softness: float = 1.0) -> None:
    """Register a neuron's shaft capsules as obstacles, radius scaled by `softness`."""
    rows = [s for s in neuron.segs if s[5] == compartment]
    if rows:
        obstacles.add([s[0] for s in rows], [s[1] for s in rows],
                      [softness * max(s[2], s[3]) for s in rows])


def neurites(rng, scene: Scene, obstacles: Obstacles, shape, voxel_size, labels, comps, locked,
             opts: TissueOptions) -> None:
    """Add and paint spiny dendrites, then axons with boutons, until the tubes cover their share.

    Dendrites stop at an estimated volume share; axons are painted in batches until the painted
    tubes cover `opts.coverage` of the voxels not taken by vessels, somata and myelin.
    """
    space = Space.of(shape, voxel_size)
    free_vox = int((~locked).sum())
    free_nm3 = free_vox * float(np.prod(voxel_size))
    heads = scene.spine_heads
    best = np.full(shape, np.inf, np.float32)
    have = sum(n.volume_nm3 for n in scene.neurons if n.cls in (K.DENDRITE, K.SOMA))
    painted = 0
    target = opts.dendrite_fraction * free_nm3
    misses = 0
    for _ in range(500):
        if have >= target or misses >= 5:
            break  # enough, or no room left for another dendrite
        label = scene.new_label(K.DENDRITE)
        n = make_dendrite(rng, label, space, obstacles, opts.shapes, heads)
        scene.neurons.append(n)
        _add_shafts(obstacles, n)
        have += n.volume_nm3
        misses = misses + 1 if n.volume_nm3 < 0.02 * target else 0
    segs = Segments.from_rows([s for n in scene.neurons[painted:] for s in n.segs])
    rasterise(segs, voxel_size, labels, comps, best, locked)
    painted = len(scene.neurons)
    if heads:
        obstacles.add([h[0] for h in heads], [h[0] for h in heads], [h[1] for h in heads])
    batch = 8
    before = -1
    for _ in range(0, 4000, batch):
        covered = int(np.count_nonzero(labels)) - int(np.count_nonzero(labels[locked]))
        if covered >= opts.coverage * free_vox or covered - before < 0.002 * free_vox:
            break  # covered enough, or saturated: the gaps close below
        before = covered
        for _ in range(batch):
            axon = make_axon(rng, scene.new_label(K.AXON), space, obstacles, opts.shapes)
            scene.neurons.append(axon)
            # later axons may press into this one, but their centrelines stay outside it
            _add_shafts(obstacles, axon, K.C_AXON, softness=0.5)
        segs = Segments.from_rows([s for n in scene.neurons[painted:] for s in n.segs])
        rasterise(segs, voxel_size, labels, comps, best, locked)
        painted = len(scene.neurons)
    n_glia = max(1, round(opts.glia_cells_per_um3 * space.volume_um3))
    for _ in range(n_glia):
        scene.glia_seeds.append((scene.new_label(K.GLIA), space.uniform(rng)))


def paint_priority(scene: Scene, shape, voxel_size):
    """Paint vessels, somata and myelinated axons, which other cells may not enter."""
    labels = np.zeros(shape, np.uint64)
    comps = np.zeros(shape, np.uint8)
    locked = np.zeros(shape, bool)
    for v in scene.vessels:
        win = capsule_window(shape, voxel_size, v.a, v.b, v.lumen + v.wall + v.endfoot,
                             v.lumen + v.wall + v.endfoot)
        if win is None:
            continue
        sl, m2 = win
        dist = np.sqrt(m2) * (v.lumen + v.wall + v.endfoot)
        free = ~locked[sl]
        lumen = free & (dist < v.lumen)
        wall = free & (dist >= v.lumen) & (dist < v.lumen + v.wall)
        foot = free & (dist >= v.lumen + v.wall) & (dist < v.lumen + v.wall + v.endfoot)
        comps[sl][lumen] = K.C_VESSEL_LUMEN
        comps[sl][wall] = K.C_VESSEL_WALL
        comps[sl][foot] = K.C_GLIA
        labels[sl][foot] = v.glia_label
        locked[sl] |= lumen | wall | foot
    forced = Segments.from_rows([s for n in scene.neurons for s in n.forced])
    rasterise(forced, voxel_size, labels, comps, None, locked, force=True)
    return labels, comps, locked


def close_gaps(scene: Scene, voxel_size, labels, comps, locked, opts: TissueOptions) -> None:
    """Grow cells into the gaps between them, fill deep gaps with glia, leave thin extracellular space."""
    vs = np.asarray(voxel_size, float)
    empty = labels == 0
    free = empty & ~locked
    dist, idx = ndi.distance_transform_edt(empty, sampling=vs, return_indices=True)
    grow = free & (dist <= opts.fill_nm)
    src = tuple(i[grow] for i in idx)
    labels[grow] = labels[src]
    comps[grow] = comps[src]
    del idx, src
    gap = free & (dist > opts.fill_nm)
    core = gap & (dist > opts.glia_core_nm)
    if not core.any() or not scene.glia_seeds:
        return
    reach = opts.glia_core_nm - opts.fill_nm - opts.ecs_nm
    to_core = edt.edt(~core, anisotropy=tuple(vs), black_border=False, parallel=1)
    glia = gap & (dist > opts.fill_nm + opts.ecs_nm) & (to_core <= max(reach, 0.0))
    where = np.nonzero(glia)
    pos = np.stack(where, axis=1) * vs
    seeds = np.array([s for _, s in scene.glia_seeds])
    nearest = np.zeros(len(pos), np.int64)
    best = np.full(len(pos), np.inf)
    for k, s in enumerate(seeds):
        d2 = ((pos - s) ** 2).sum(1)
        closer = d2 < best
        best[closer] = d2[closer]
        nearest[closer] = k
    glia_labels = np.array([lab for lab, _ in scene.glia_seeds], np.uint64)
    labels[where] = glia_labels[nearest]
    comps[where] = K.C_GLIA


def paint_nuclei(scene: Scene, voxel_size, labels, comps) -> None:
    for label, centre, r in scene.nuclei:
        win = capsule_window(labels.shape, voxel_size, centre, centre, r, r)
        if win is None:
            continue
        sl, m2 = win
        comps[sl][(m2 < 1.0) & (labels[sl] == label)] = K.C_NUCLEUS


def tissue_of(comps: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    lut[[K.C_VESSEL_LUMEN, K.C_VESSEL_WALL]] = K.TISSUE_VESSEL
    lut[[K.C_SOMA, K.C_NUCLEUS]] = K.TISSUE_SOMA
    lut[K.C_MYELIN] = K.TISSUE_MYELIN
    return lut[comps]


def pack(rng, shape, voxel_size, opts: TissueOptions, timings: dict | None = None):
    """Build and paint the tissue: returns the scene and the painted label/compartment/tissue volumes."""
    t = time.perf_counter()
    timings = {} if timings is None else timings
    scene, obstacles = layout(rng, shape, voxel_size, opts)
    labels, comps, locked = paint_priority(scene, shape, voxel_size)
    neurites(rng, scene, obstacles, shape, voxel_size, labels, comps, locked, opts)
    timings["neurites_s"] = time.perf_counter() - t
    t = time.perf_counter()
    close_gaps(scene, voxel_size, labels, comps, locked, opts)
    paint_nuclei(scene, voxel_size, labels, comps)
    timings["gaps_s"] = time.perf_counter() - t
    return scene, Painted(labels, comps, tissue_of(comps))

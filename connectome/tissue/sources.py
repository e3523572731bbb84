"""Training and validation sources: 2-d sections with partial labels (bit sets of allowed classes).

- synthetic (connectome.synth, 40 x 5 x 5 nm, one missing section per volume): every class, from
  its `tissue`, `organelles` and `compartments` volumes;
- VNC stack 1 (ssTEM, 4.6 nm in-plane): `labels_9class` glia/extracellular and mitochondria apart
  from the rest, which is neuropil (a larval VNC has no vessels or myelin; membranes may border
  any of the three); sections 0-15 train, 16-19 validate;
- EPFL CA1 (FIB-SEM slices, 5 nm): mitochondria against the rest, which is neuropil, glia or
  myelin (no soma, vessel or defect in these slices: see epfl_target); 27 train slices, the 5 test
  slices validate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from connectome.tissue import classes as T

SYNTH_VOXEL = (40.0, 5.0, 5.0)
SYNTH_SHAPE = (8, 512, 512)
TRAIN_SEEDS = tuple(range(101, 109))
VAL_SEED = 901
VNC_TRAIN, VNC_VAL = (0, 16), (16, 20)
VNC_FILE = os.path.join("drosophila_vnc_sstem", "vnc_stack1.npz")
EPFL_FILE = os.path.join("epfl_ca1_markup", "epfl_markup.npz")


@dataclass
class Sections:
    """Sections of one source: raw (n, Y, X) uint8 and target (n, Y, X) uint8 bit sets (0 = unlabelled)."""

    name: str
    raw: np.ndarray
    target: np.ndarray
    voxel_size: tuple[float, float, float]


def synth_target(tissue: np.ndarray, organelles: np.ndarray, compartments: np.ndarray) -> np.ndarray:
    """One class per voxel: the tissue code, then mitochondria and glia/extracellular inside neuropil."""
    from connectome.synth import codes as K

    cls = tissue.astype(np.uint8).copy()  # codes 0-4 are the same in both tables
    neuropil = tissue == K.TISSUE_NEUROPIL
    cls[neuropil & np.isin(compartments, (K.C_GLIA, K.C_NONE))] = T.GLIA
    cls[neuropil & (organelles == K.O_MITOCHONDRION)] = T.MITOCHONDRION
    return (np.uint8(1) << cls).astype(np.uint8)


def vnc_target(labels_9class: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    lut[[0, 32, 64, 96, 128]] = T.bits(T.NEUROPIL, T.GLIA, T.MITOCHONDRION)  # membranes and junctions
    lut[[223, 255]] = T.bits(T.NEUROPIL)  # synapse, intracellular
    lut[159] = T.bits(T.GLIA)
    lut[191] = T.bits(T.MITOCHONDRION)
    return lut[labels_9class]


def epfl_target(mitochondrion: np.ndarray) -> np.ndarray:
    """Mitochondria, or else neuropil, glia/extracellular or myelin: the 32 CA1 slices (768 x 1024 at 5 nm)
    show neuropil with a few myelinated axons and no cell body, nucleus, vessel or damaged section."""
    not_mito = T.bits(T.NEUROPIL, T.GLIA, T.MYELIN)
    return np.where(mitochondrion, T.bits(T.MITOCHONDRION), not_mito).astype(np.uint8)


def synthetic(seed: int, shape=SYNTH_SHAPE) -> Sections:
    from connectome.synth import Defects, TissueOptions, generate

    v = generate(shape, SYNTH_VOXEL, seed=seed, defects=Defects(missing=True, missing_sections=1),
                 tissue=TissueOptions(myelinated_axons=2))
    return Sections(f"synthetic seed {seed}", v.raw, synth_target(v.tissue, v.organelles, v.compartments),
                    SYNTH_VOXEL)


def vnc(data_dir: str, sections: tuple[int, int]) -> Sections:
    d = np.load(os.path.join(data_dir, VNC_FILE))
    z0, z1 = sections
    vs = tuple(float(v) for v in d["resolution_zyx_nm"])
    return Sections(f"VNC stack 1 sections {z0}-{z1 - 1}", d["raw"][z0:z1], vnc_target(d["labels_9class"][z0:z1]),
                    vs)  # type: ignore[arg-type]


def epfl(data_dir: str, split: str) -> Sections:
    d = np.load(os.path.join(data_dir, EPFL_FILE))
    vs = tuple(float(v) for v in d["resolution_zyx_nm"])
    return Sections(f"EPFL CA1 {split} slices", d[f"{split}_raw"], epfl_target(d[f"{split}_mitochondrion"]),
                    vs)  # type: ignore[arg-type]


def real_data_available(data_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(data_dir, f)) for f in (VNC_FILE, EPFL_FILE))


def synthetic_set(seeds, shape=SYNTH_SHAPE) -> Sections:
    """Several synthetic volumes of one shape, their sections stacked as one source."""
    vols = [synthetic(s, shape) for s in seeds]
    return Sections(f"synthetic seeds {', '.join(str(s) for s in seeds)}", np.concatenate([v.raw for v in vols]),
                    np.concatenate([v.target for v in vols]), SYNTH_VOXEL)


def training_sources(data_dir: str, seeds=TRAIN_SEEDS) -> list[Sections]:
    return [synthetic_set(seeds), vnc(data_dir, VNC_TRAIN), epfl(data_dir, "train")]


def validation_sources(data_dir: str, seed: int = VAL_SEED) -> list[Sections]:
    return [synthetic(seed), vnc(data_dir, VNC_VAL), epfl(data_dir, "test")]

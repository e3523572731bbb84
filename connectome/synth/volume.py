"""SynthVolume (image + ground truth in memory), saving it to zarr + tables, and reading the tables back."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from connectome.core.errors import UserError
from connectome.io import create_volume
from connectome.synth import codes as K
from connectome.synth.defects import Defects, SectionRecord
from connectome.synth.synapses import SYNAPSE_DTYPE, SYNAPSE_FIELDS

VOLUMES = ("raw", "labels", "tissue", "compartments", "organelles")
SHIFT_CONVENTION = "raw[z, y, x] = aligned[z, y - dy, x - dx]; labels and tissue are aligned"


@dataclass
class SynthVolume:
    """A synthetic EM volume and its complete ground truth. Arrays are (z, y, x)."""

    raw: np.ndarray  # uint8
    labels: np.ndarray  # uint64 cell ids; 0 = extracellular space and blood vessel
    tissue: np.ndarray  # uint8, codes.TISSUE_*
    compartments: np.ndarray  # uint8, codes.C_*
    organelles: np.ndarray  # uint8, codes.O_*
    voxel_size: tuple[float, float, float]  # nm
    seed: int
    classes: dict[int, str]  # id -> axon | dendrite | soma | glia
    synapses: np.ndarray  # structured, synapses.SYNAPSE_DTYPE
    skeletons: dict[int, tuple[np.ndarray, np.ndarray]]  # id -> (nodes nm (N, 3) zyx, edges (E, 2))
    sections: SectionRecord
    defects: Defects = field(default_factory=Defects)
    options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape)

    @property
    def section_shifts(self) -> np.ndarray:
        return self.sections.shifts

    def save(self, out_dir: str, chunk_shape=(32, 128, 128), overwrite: bool = False) -> dict[str, str]:
        """Write the volumes as OME-Zarr (out_dir/raw, labels, tissue, compartments, organelles) and
        the tables under out_dir/ground_truth. Returns the paths written, by name."""
        chunk = tuple(min(int(c), int(s)) for c, s in zip(chunk_shape, self.shape))
        paths: dict[str, str] = {}
        os.makedirs(out_dir, exist_ok=True)
        for name in VOLUMES:
            data = getattr(self, name)
            address = os.path.join(out_dir, name)
            vol = create_volume(address, self.shape, data.dtype, chunk, self.voxel_size, overwrite=overwrite)
            vol.write(vol.box, data)
            paths[name] = address
        gt = os.path.join(out_dir, "ground_truth")
        os.makedirs(gt, exist_ok=True)
        paths["synapses"] = _write_synapses(os.path.join(gt, "synapses.csv"), self.synapses)
        paths["classes"] = _write_json(os.path.join(gt, "classes.json"),
                                       {str(k): v for k, v in sorted(self.classes.items())})
        sk = os.path.join(gt, "skeletons.npz")
        arrays = {"ids": np.array(sorted(self.skeletons), np.uint64)}
        for i, (nodes, edges) in self.skeletons.items():
            arrays[f"nodes_{i}"] = nodes.astype(np.float32)
            arrays[f"edges_{i}"] = edges.astype(np.int32)
        np.savez_compressed(sk, allow_pickle=True, **arrays)  # the default, named: no key of `arrays` can fill it
        paths["skeletons"] = sk
        paths["section_shifts"] = _write_json(os.path.join(gt, "section_shifts.json"), {
            "shifts_px": self.sections.shifts.tolist(), "convention": SHIFT_CONVENTION})
        paths["defects"] = _write_json(os.path.join(gt, "defects.json"), {
            "options": dataclasses.asdict(self.defects),
            "missing_sections": list(self.sections.missing),
            "gain": None if self.sections.gain is None else self.sections.gain.tolist(),
            "offset": None if self.sections.offset is None else self.sections.offset.tolist(),
        })
        paths["meta"] = _write_json(os.path.join(gt, "meta.json"), {
            "shape": list(self.shape), "voxel_size": list(self.voxel_size), "seed": self.seed,
            "position_convention": "nm, (z, y, x); voxel i has its centre at i * voxel_size",
            "tissue_codes": K.TISSUE_NAMES, "compartment_codes": K.COMPARTMENT_NAMES,
            "organelle_codes": K.ORGANELLE_NAMES, "options": self.options, "timings_s": self.timings,
        })
        return paths


@dataclass
class GroundTruth:
    """The tables of a saved synthetic volume."""

    classes: dict[int, str]
    synapses: np.ndarray
    skeletons: dict[int, tuple[np.ndarray, np.ndarray]]
    section_shifts: np.ndarray
    defects: dict
    meta: dict


def load_ground_truth(out_dir: str) -> GroundTruth:
    """Read back what SynthVolume.save wrote under out_dir/ground_truth (volumes: open_volume)."""
    gt = os.path.join(out_dir, "ground_truth")
    if not os.path.isdir(gt):
        raise UserError(f"{out_dir}: no ground_truth folder (not written by connectome synth?)")
    classes = {int(k): v for k, v in _read_json(os.path.join(gt, "classes.json")).items()}
    with open(os.path.join(gt, "synapses.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    synapses = np.zeros(len(rows), SYNAPSE_DTYPE)
    for i, r in enumerate(rows):
        synapses[i] = tuple(SYNAPSE_DTYPE[name].type(r[name]) for name in SYNAPSE_FIELDS)
    with np.load(os.path.join(gt, "skeletons.npz")) as z:
        skeletons = {int(i): (z[f"nodes_{int(i)}"], z[f"edges_{int(i)}"]) for i in z["ids"]}
    shifts = np.array(_read_json(os.path.join(gt, "section_shifts.json"))["shifts_px"], float).reshape(-1, 2)
    return GroundTruth(classes, synapses, skeletons, shifts, _read_json(os.path.join(gt, "defects.json")),
                       _read_json(os.path.join(gt, "meta.json")))


def _write_json(path: str, obj) -> str:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_synapses(path: str, synapses: np.ndarray) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SYNAPSE_FIELDS)
        for s in synapses:
            w.writerow([s[n] for n in SYNAPSE_FIELDS])
    return path

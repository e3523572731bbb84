"""Neurons beside a black region: what `segment`'s blank-region handling (`affinity.blank`) buys, per band width.

A real volume gets a black strip (x >= CUT set to exactly 0, as an aligned section's margins or a lab's blacked-out
region are) and is segmented by the real `connectome segment` at its defaults but for `--blank-band` (off, then each
band); the tissue at x < SCORE (away from the band) is scored against the real labels, beside the crop x < CUT (the
same tissue with the volume ending where the black begins: its faces are mirrored, the best a black region can give).
Sets: medulla z 0-63, y, x 0-191 (fib-10nm, 10 nm; CUT 120, SCORE 100) and the CREMI crop z 0-49 in its stored
order (sstem, 40 x 4 x 4 nm; `segment` recovers the section order; CUT 160, SCORE 130). Writes
benchmarks/results/blank_regions.md. Usage:
    .venv/bin/python benchmarks/blank_regions.py [--sets medulla cremi] [--bands 0 4 8 12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from connectome.core.machine import cpu_name
from connectome.io import open_volume
from connectome.metrics.voi import voi

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "connectome.cli"]

# name: file, raw key, labels key, crop, model, voxel size, block shape, CUT, SCORE
SETS = {
    "medulla": ("flyem_medulla_fib_train/medulla_train.npz", "raw", "neuron_ids", np.s_[:64, :192, :192],
                "fib-10nm", (10, 10, 10), (32, 96, 96), 120, 100),
    "cremi": ("cremi_sstem_crop/cremi_train.npz", "raw", "neuron_ids", np.s_[:, :, :], "sstem", (40, 4, 4),
              (25, 128, 128), 160, 130),
}


CENSUS = [("medulla", "flyem_medulla_fib_train/medulla_train.npz", "raw"), ("gala train", "gala_fib_crops/gala_fib.npz",
           "train_raw"), ("gala test", "gala_fib_crops/gala_fib.npz", "test_raw"),
          ("CREMI crop", "cremi_sstem_crop/cremi_train.npz", "raw"), ("ISBI train", "isbi2012/isbi2012.npz", "train_raw"),
          ("ISBI test", "isbi2012/isbi2012.npz", "test_raw"), ("VNC stack 1", "drosophila_vnc_sstem/vnc_stack1.npz", "raw")]


def census() -> list[str]:
    """Blank voxels (band 0) in every real set as stored and with its darkest 0.5 % clipped to 0 (as a percentile
    rescale clipping more than ingest's 0.1 % would): real EM is not blank, so `segment` leaves it as before."""
    from connectome.affinity.blank import blank_voxels

    rows = ["", "Blank voxels (`affinity.blank`, band 0) in the real sets: as stored / darkest 0.5 % set to 0", "",
            "| set | shape | zero voxels | blank | blank, 0.5 % clipped |", "|---|---|---|---|---|"]
    for name, relative, key in CENSUS:
        with np.load(DATA / relative) as f:
            raw = f[key]
        clipped = np.where(raw <= np.percentile(raw, 0.5), 0, raw)
        counts = [0 if b is None else int(b.sum()) for b in (blank_voxels(raw, 0), blank_voxels(clipped, 0))]
        rows.append(f"| {name} | {raw.shape} | {int((raw == 0).sum())} | {counts[0]} | {counts[1]} |")
    return rows


def segment(raw: np.ndarray, work: Path, name: str, model: str, voxel_size, block, extra: list[str]):
    """The segmentation `connectome segment` gives for `raw` (written as an npz), and the seconds it took."""
    np.savez(work / f"{name}.npz", raw=raw)
    out = work / name
    cmd = [*CLI, "segment", f"{work / name}.npz#raw", str(out), "--model", model, "--voxel-size",
           *map(str, voxel_size), "--block-shape", *map(str, block), "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    seconds = time.perf_counter() - start
    vol = open_volume(str(out / "segmentation"))
    return vol.read(vol.box).astype(np.uint64), seconds


def rows_for(set_name: str, bands: list[int], work: Path) -> list[str]:
    relative, raw_key, gt_key, crop, model, voxel_size, block, cut, score = SETS[set_name]
    with np.load(DATA / relative) as f:
        raw, gt = f[raw_key][crop].copy(), f[gt_key][crop].astype(np.uint64)
    scored = gt[:, :, :score]
    variants = [(f"crop x < {cut} (no black)", raw[:, :, :cut].copy(), [])]
    strip = raw.copy()
    strip[:, :, cut:] = 0
    variants.append((f"black x >= {cut}, --blank-band off", strip, ["--blank-band", "off"]))
    variants += [(f"black x >= {cut}, --blank-band {b}", strip, ["--blank-band", str(b)]) for b in bands]
    rows = []
    for i, (label, data, extra) in enumerate(variants):
        seg, seconds = segment(data, work, f"{set_name}{i}", model, voxel_size, block, extra)
        split, merge = voi(seg[:, :, :score], scored)
        left_out = float(np.mean(seg[:, :, :cut] == 0))
        rows.append(f"| {set_name} ({model}) | {label} | {split:.3f} | {merge:.3f} | **{split + merge:.3f}** | "
                    f"{100 * left_out:.1f} % | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--bands", nargs="+", type=int, default=[0, 4, 8, 12])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "blank_regions.md"))
    args = parser.parse_args()
    lines = ["# Neurons beside a black region (`segment --blank-band`)", "",
             f"Made by `.venv/bin/python benchmarks/blank_regions.py --sets {' '.join(args.sets)} --bands "
             f"{' '.join(map(str, args.bands))}` on {time.strftime('%Y-%m-%d')}, {cpu_name()}; see the script's "
             "docstring for the sets. VOI (bits) of the tissue left of the scored line; 'left out': voxels of "
             "x < CUT in no segment (the band, and segment 0 where the chain leaves voxels out anyway).", "",
             "| set (model) | image | VOI split | VOI merge | VOI | left out | time |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            lines += rows_for(name, args.bands, Path(tmp))
    lines += census()
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

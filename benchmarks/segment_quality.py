"""Segmentation quality on real EM and on the synthetic demo volume, through `connectome segment`.

Runs the full blockwise chain (affinities -> fragments -> agglomerate -> relabel) with the shipped
models and scores it with `connectome evaluate`'s metrics:
- gala test crop (FIB-SEM, 10 nm; never trained on) with `fib-10nm`, against gala's own
  agglomeration `test_seg4_gala` (VOI 0.629 from the reference values);
- medulla_train z >= 100 (the validation split `fib-10nm` never saw) with `fib-10nm`;
- the synthetic demo volume with `synthetic`.
Also checks 8+ blocks against one block. Usage: .venv/bin/python benchmarks/segment_quality.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "connectome.cli"]


def cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_zarr(path: str, array: np.ndarray, voxel_size) -> str:
    from connectome.io import create_volume

    vol = create_volume(path, array.shape, array.dtype, (32, 128, 128), voxel_size, overwrite=True)
    vol.write(vol.box, array)
    return path


def case(name, raw, gt, model, voxel_size, block_shape, tmp) -> dict:
    out = os.path.join(tmp, name)
    seg = cli("segment", raw, out, "--model", model, "--block-shape", *map(str, block_shape), "--no-progress",
              *(["--voxel-size", *map(str, voxel_size)] if voxel_size else []))
    one = cli("segment", raw, out + "-one", "--model", model, "--block-shape", "512", "512", "512",
              "--no-progress", *(["--voxel-size", *map(str, voxel_size)] if voxel_size else []))
    metrics = cli("evaluate", "--seg", seg["segmentation"], "--gt", gt,
                  *(["--voxel-size", *map(str, voxel_size)] if voxel_size else []))
    seam = cli("evaluate", "--seg", seg["segmentation"], "--gt", one["segmentation"],
               *(["--voxel-size", *map(str, voxel_size)] if voxel_size else []))
    blocks = seg["stages"][0]["blocks"]
    return {"case": name, "model": model, "blocks": blocks, "threshold": seg["threshold"],
            "voi_split": metrics["voi_split"], "voi_merge": metrics["voi_merge"],
            "voi": metrics["voi_split"] + metrics["voi_merge"], "arand": metrics["arand"],
            "erl_nm": metrics["erl_nm"], "max_erl_nm": metrics["max_erl_nm"], "merges": metrics["merges"],
            "splits": metrics["splits"], "blocks_vs_one_voi": seam["voi_split"] + seam["voi_merge"],
            "seconds": seg["seconds"], "voxels": seg["voxels"]}


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="segquality-")
    rows = []
    gala = DATA / "gala_fib_crops" / "gala_fib.npz"
    medulla = DATA / "flyem_medulla_fib_train" / "medulla_train.npz"
    if gala.exists():
        g = np.load(gala)
        raw = save_zarr(os.path.join(tmp, "gala", "raw"), g["test_raw"], (10, 10, 10))
        gt = save_zarr(os.path.join(tmp, "gala", "gt"), g["test_gt"].astype(np.uint64), (10, 10, 10))
        rows.append(case("gala test (50x100x200)", raw, gt, "fib-10nm", None, (32, 64, 128), tmp))
    if medulla.exists():
        m = np.load(medulla)
        raw = save_zarr(os.path.join(tmp, "med", "raw"), np.ascontiguousarray(m["raw"][100:]), (10, 10, 10))
        gt = save_zarr(os.path.join(tmp, "med", "gt"), np.ascontiguousarray(m["neuron_ids"][100:]).astype(np.uint64),
                       (10, 10, 10))
        rows.append(case("medulla val z>=100 (25x250x250)", raw, gt, "fib-10nm", None, (16, 128, 128), tmp))
    from connectome.synth import generate

    synth = os.path.join(tmp, "synth")
    generate((64, 256, 256), (8.0, 8.0, 8.0), seed=0).save(synth, chunk_shape=(32, 128, 128))
    rows.append(case("synthetic demo (64x256x256, seed 0)", os.path.join(synth, "raw"), os.path.join(synth, "labels"),
                     "synthetic", None, (32, 128, 128), tmp))
    lines = [
        "# Segmentation quality (connectome segment, blockwise)",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; "
        "command: `.venv/bin/python benchmarks/segment_quality.py`",
        "- VOI in bits (gt == 0 excluded), adapted Rand error, ERL in nm (gt skeletons by kimimaro);"
        " 'blocks vs one' is the VOI between the blockwise result and a single-block run.",
        "- reference: gala's own agglomeration test_seg4_gala has VOI 0.629 on the gala test crop.",
        "",
        "| case | model | blocks | threshold | VOI split | VOI merge | VOI | adapted Rand | ERL nm (max) | merges | splits | blocks vs one | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['model']} | {r['blocks']} | {r['threshold']:.2f} | {r['voi_split']:.3f} | "
            f"{r['voi_merge']:.3f} | {r['voi']:.3f} | {r['arand']:.3f} | {r['erl_nm']:.0f} ({r['max_erl_nm']:.0f}) | "
            f"{r['merges']} | {r['splits']} | {r['blocks_vs_one_voi']:.4f} | {r['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "segment_quality.md").write_text(text)
    (ROOT / "benchmarks" / "results" / "segment_quality.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

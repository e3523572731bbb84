"""Meshes (zmesh) and skeletons (kimimaro) per core: voxels per second and peak memory against volume
size, on synthetic ground-truth labels (connectome.synth, 8 nm isotropic), one block per process.

    .venv/bin/python benchmarks/meshes.py [--quick]

Each case runs in its own single-threaded process; its peak memory is the rise of the process's RSS
(sampled every 2 ms) over the labels already in memory. Prints a table and writes benchmarks/results/meshes.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
SHAPES = [(64, 128, 128), (64, 256, 256), (128, 256, 256), (256, 256, 256)]
QUICK = SHAPES[:2]
KINDS = ("marching cubes only", "mesh, no simplification", "mesh, simplified 10x", "skeleton")


def one_case(path: str, kind: str) -> dict:
    """Inside a child process: load the labels, then time one block of `kind` over the whole volume."""
    import time

    import numpy as np

    from connectome.core.geometry import Box
    from connectome.morphology.meshing import mesh_block
    from connectome.morphology.skeletonizing import skeletonize_block

    from peak_memory import peak_rise_mb
    labels = np.load(path)
    shape = labels.shape
    box = Box.from_shape(shape)
    import kimimaro  # noqa: F401  (imports outside the measured memory and time)
    import zmesh

    with peak_rise_mb() as rise:
        start = time.perf_counter()
        if kind == "marching cubes only":  # what the anchor measures: zmesh's pass over the voxels
            mesher = zmesh.Mesher((8.0, 8.0, 8.0))
            mesher.mesh(labels.T)
            made, unit = len(mesher.ids()), "objects"
        elif kind.startswith("mesh"):
            simplify = 0 if "no simplification" in kind else 10
            made = sum(len(t) for _, _, t in mesh_block(labels, box, box, (8.0, 8.0, 8.0), simplify))
            unit = "triangles"
        else:
            made = int(skeletonize_block(labels, box, (8.0, 8.0, 8.0))["vertices"].shape[0])
            unit = "vertices"
        seconds = time.perf_counter() - start
    return {"shape": list(shape), "kind": kind, "seconds": seconds, "mvx_s": labels.size / seconds / 1e6,
            "peak_rise_mb": rise[0], "labels_mb": labels.nbytes / 2**20, "made": made, "unit": unit,
            "objects": int(np.unique(labels).size - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest volumes only")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        path, kind = json.loads(args.case)
        print(json.dumps(one_case(path, kind)))
        return
    import tempfile

    import numpy as np

    from connectome.synth import generate

    rows = []
    load = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="meshes-bench-")
    for shape in (QUICK if args.quick else SHAPES):
        path = os.path.join(tmp, "labels.npy")
        np.save(path, np.ascontiguousarray(generate(shape, (8.0, 8.0, 8.0), seed=0).labels))
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--case", json.dumps([path, kind])], check=True,
                                 capture_output=True, text=True, env={**os.environ, **SINGLE_THREAD})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{'x'.join(map(str, row['shape'])):>12} {kind:<24} {row['seconds']:7.2f} s "
                  f"{row['mvx_s']:8.2f} Mvx/s  +{row['peak_rise_mb']:.0f} MB", flush=True)
    lines = [
        "# meshes: zmesh and kimimaro per core, memory against volume size", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load:.1f} before / {os.getloadavg()[0]:.1f} after (shared)",
        f"- command: `.venv/bin/python benchmarks/meshes.py{' --quick' if args.quick else ''}` "
        "(one thread; each case in its own process)",
        "- labels: connectome.synth ground truth at 8 nm, seed 0; one block covering the whole volume",
        "- peak MB: rise of the process's RSS (sampled every 2 ms) over the labels already in memory "
        "(uint64: 8 B per voxel)",
        "", "| volume | work | seconds | Mvx/s per core | peak MB over labels | labels MB | objects | made |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['kind']} | {r['seconds']:.2f} | {r['mvx_s']:.2f} | "
                     f"{r['peak_rise_mb']:.0f} | {r['labels_mb']:.0f} | {r['objects']} | {r['made']} {r['unit']} |")
    lines += ["", "Anchors measured on this kind of machine (issue 13): zmesh about 185 Mvx/s without "
              "simplification, kimimaro about 0.35 Mvx/s. The 'mesh' rows also extract every object's mesh "
              "(and simplify it), as the `meshes` stage does per block; 'marching cubes only' is zmesh's pass "
              "over the voxels. In a run each block also reads its labels and writes one file per object; the "
              "joins (`mesh_manifests`, `skeleton_merge`) hold only the fragments of the objects a task owns, "
              "so their memory follows the largest objects, not the volume."]
    os.unlink(os.path.join(tmp, "labels.npy"))
    os.rmdir(tmp)
    out = Path(__file__).parent / "results" / "meshes.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Voxels per second of each segmentation stage on a 2-worker LocalCluster (1 thread each).

Segments a synthetic volume (default 64 x 256 x 256 at 8 nm, in 8 blocks of 32 x 128 x 128) with a
shipped model's stage chain, several times, and reports the median per stage and end to end.
Writes benchmarks/results/segment_throughput_MODEL_BLOCK.md.
Usage: .venv/bin/python benchmarks/segment_throughput.py [--runs 3] [--model synthetic] [--shape Z Y X] [--block Z Y X]
       [--scoring mean|learned] (default: the model's; the results file then names the scoring) [--voxel-size Z Y X]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from connectome.affinity.segment import plan_segmentation, run_segmentation, segmentation_config
from connectome.cluster.client import ClusterConfig, open_client


def main() -> None:
    from connectome.synth import generate

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="synthetic")
    parser.add_argument("--shape", nargs=3, type=int, default=(64, 256, 256))
    parser.add_argument("--block", nargs=3, type=int, default=(32, 128, 128),
                        help="block shape (`connectome segment` uses 64 256 256 unless told)")
    parser.add_argument("--scoring", choices=["mean", "learned"], default=None,
                        help="agglomeration score (default: the model's)")
    parser.add_argument("--tta", type=int, default=None, help="test-time augmentation (default: the model's)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--voxel-size", nargs=3, type=float, default=(8.0, 8.0, 8.0),
                        help="of the synthetic volume, nm (z y x): the model's, e.g. 40 4 4 for sstem")
    args = parser.parse_args()
    block = tuple(args.block)
    tmp = tempfile.mkdtemp(prefix="segbench-")
    generate(tuple(args.shape), tuple(args.voxel_size), seed=0).save(os.path.join(tmp, "synth"), chunk_shape=block)
    raw = os.path.join(tmp, "synth", "raw")
    per_stage: dict[str, list[float]] = {}
    totals = []
    cluster = ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with open_client(cluster, quiet=True) as client:
        for i in range(args.runs):
            out = os.path.join(tmp, f"run{i}")
            config = segmentation_config(raw, out, args.model, block, cluster=cluster, scoring=args.scoring,
                                         tta=args.tta, precision=args.precision)
            start = time.perf_counter()
            summary = run_segmentation(plan_segmentation(config), client, progress=False)
            totals.append(time.perf_counter() - start)
            for s in summary["stages"]:
                per_stage.setdefault(s["stage"], []).append(s["seconds"])
            shutil.rmtree(out)
    shutil.rmtree(tmp)
    voxels = args.shape[0] * args.shape[1] * args.shape[2]
    blocks = math.prod(-(-s // b) for s, b in zip(args.shape, block))
    lines = [
        f"# Segmentation throughput, 2 CPU workers (model `{args.model}`"
        + (f", {args.scoring} scoring" if args.scoring else "") + (f", --tta {args.tta}" if args.tta else "")
        + (f", {args.precision}" if args.precision != "auto" else "") + ")",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; "
        f"command: `.venv/bin/python benchmarks/segment_throughput.py --runs {args.runs} --model {args.model} "
        f"--shape {' '.join(map(str, args.shape))} --block {' '.join(map(str, block))}"
        + (f" --scoring {args.scoring}" if args.scoring else "") + (f" --tta {args.tta}" if args.tta else "")
        + (f" --precision {args.precision}" if args.precision != "auto" else "")
        + (f" --voxel-size {' '.join(f'{v:g}' for v in args.voxel_size)}" if tuple(args.voxel_size) != (8, 8, 8) else "")
        + "`",
        f"- volume: synthetic {list(args.shape)} at {' x '.join(f'{v:g}' for v in args.voxel_size)} nm = "
        f"{voxels / 1e6:.1f} Mvx, {blocks} blocks of "
        f"{' x '.join(map(str, block))}, "
        "LocalCluster of 2 worker processes x 1 thread; medians over runs",
        "",
        "| stage | median s | Mvx/s | Mvx/s per core |",
        "|---|---|---|---|",
    ]
    for name, secs in per_stage.items():
        t = statistics.median(secs)
        lines.append(f"| {name} | {t:.2f} | {voxels / t / 1e6:.2f} | {voxels / t / 2e6:.2f} |")
    t = statistics.median(totals)
    lines.append(f"| end to end (incl. planning, global merge) | {t:.2f} | {voxels / t / 1e6:.2f} | {voxels / t / 2e6:.2f} |")
    lines += ["", "target: >= 0.5 Mvx/s end to end on 2 CPU cores with the shipped model"]
    text = "\n".join(lines) + "\n"
    print(text)
    size = "x".join(map(str, block))
    suffix = (f"_{args.scoring}" if args.scoring else "") + (f"_tta{args.tta}" if args.tta else "")
    suffix += f"_{args.precision}" if args.precision != "auto" else ""
    out = Path(__file__).with_name("results") / f"segment_throughput_{args.model}_{size}{suffix}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()

"""Choosing `ffn_agglomerate`'s `agree` on a validation volume (synthetic seed 310, not the seed
benchmarks/ffn_consensus.py reports, or a real one given by --raw/--labels): the consensus run, one
agglomeration pass that stores both shares of every tested pair, then the merge and VOI for each
candidate threshold (in memory, from the stored shares: the FFN fills are not repeated).

Usage: nice -n 5 .venv/bin/python benchmarks/ffn_agglomeration_threshold.py [--seed 310] [--shape 32 96 96]
       [--raw ADDR --labels ADDR --voxel-size Z Y X] [--model M] [--tmp DIR] [--out FILE]
Writes benchmarks/results/ffn_agglomeration_threshold.md unless --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "connectome.cli"]
THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from connectome.cluster.client import ClusterConfig, open_client
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.ffn.reconcile import load_tables, lookup_table
    from connectome.io import open_volume
    from connectome.io.lookup import relabel
    from connectome.metrics.voi import voi
    from connectome.synth import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=310)
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 96, 96])
    ap.add_argument("--raw", default=None, help="a real validation image (default: a synthetic volume)")
    ap.add_argument("--labels", default=None, help="its ground truth")
    ap.add_argument("--voxel-size", nargs=3, type=float, default=None)
    ap.add_argument("--model", default="ffn-synthetic")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ffn_agglomeration_threshold.md"))
    args = ap.parse_args()
    if args.raw:
        if not args.labels:
            raise SystemExit("--raw needs --labels")
        root = os.path.join(args.tmp or tempfile.mkdtemp(prefix="ffn-agree-"), "real")
        raw, labels = args.raw, args.labels
        shape = open_volume(raw).shape
        what = f"`{raw}` ({'x'.join(map(str, shape))})"
    else:
        root = os.path.join(args.tmp or tempfile.mkdtemp(prefix="ffn-agree-"), f"synth{args.seed}")
        if not os.path.isdir(os.path.join(root, "labels")):
            generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=args.seed).save(root)
        raw, labels, shape = os.path.join(root, "raw"), os.path.join(root, "labels"), tuple(args.shape)
        what = f"synthetic seed {args.seed}, {'x'.join(map(str, shape))} at 8 nm"
    voxel = ["--voxel-size", *map(str, args.voxel_size)] if args.voxel_size else []
    seg = cli("segment", raw, os.path.join(root, "consensus"), "--method", "ffn", "--model", args.model, "--consensus",
              "--block-shape", *map(str, shape), "--workers", "1", "--no-progress", *voxel)
    out = os.path.join(root, "agglomerate")
    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=tuple(shape)),
                       voxel_size=tuple(args.voxel_size) if args.voxel_size else None, cluster=ClusterConfig(),
                       stages=[StageConfig(stage="ffn_agglomerate", params={"model": args.model},
                                           inputs={"ffn_segments": seg["segmentation"]}),
                               StageConfig(stage="ffn_merge", inputs={"ffn_segments": seg["segmentation"]})])
    start = time.perf_counter()
    with open_client(config.cluster, quiet=True) as client:
        execute(plan_run(config), client, progress=False)
    seconds = time.perf_counter() - start
    tables = load_tables(os.path.join(out, "tables", "ffn_merges"))
    pairs = np.concatenate([t["pairs"] for t in tables.values()])
    shares = np.concatenate([t["shares"] for t in tables.values()])
    ids = np.concatenate([t["ids"] for t in tables.values()])
    segs, gt = (open_volume(a).read(open_volume(a).box) for a in (seg["segmentation"], labels))
    fg = gt != 0
    s0, m0 = voi(segs[fg], gt[fg])
    lines = ["# Choosing `ffn_agglomerate`'s `agree` (validation)", "",
             f"- date: {time.strftime('%Y-%m-%d')}; command: `nice -n 5 .venv/bin/python "
             f"benchmarks/ffn_agglomeration_threshold.py {' '.join(sys.argv[1:])}`",
             f"- {what}, `{args.model}`, one block; {len(pairs)} touching pairs tested in {seconds:.0f} s; a pair merges when both shares >= agree", "",
             "| agree | merges | VOI split | VOI merge | VOI |", "|---|---|---|---|---|",
             f"| (consensus, no agglomeration) | 0 | {s0:.3f} | {m0:.3f} | {s0 + m0:.3f} |"]
    for agree in THRESHOLDS:
        ok = (shares >= agree).all(axis=1)
        keys, values = lookup_table(ids, pairs[ok])
        s, m = voi(relabel(segs, keys, values)[fg], gt[fg])
        lines.append(f"| {agree} | {int(ok.sum())} | {s:.3f} | {m:.3f} | {s + m:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

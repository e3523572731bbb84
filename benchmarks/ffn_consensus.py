"""FFN over-segmentation consensus and FFN agglomeration: how merges and splits change at each step.

Runs the real `connectome segment --method ffn` (one block: the consensus of whole-volume runs, as
the paper forms it) with seeds in forward order, in reverse order, with `--consensus`, and with
`--consensus --ffn-agglomerate` (the consensus pieces merged where the FFN agrees from both sides), on held-out
synthetic volumes (seeds never used in training `ffn-synthetic`), and scores each against the ground
truth with `connectome evaluate --json`: VOI split / merge, adapted Rand, merges and splits (the
metrics' counts of ground-truth objects that share a segment / of segments per object).

Usage: nice -n 5 .venv/bin/python benchmarks/ffn_consensus.py [--seeds 300 301] [--shape 32 96 96] [--tmp DIR]
Writes benchmarks/results/ffn_consensus.md after every run. With `--tmp` (a folder of an earlier call) finished
runs resume instead of running again; their seconds are then not measured ("resumed").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "connectome.cli"]
# run label, output folder, options
RUNS = (("forward seeds", "forward", []), ("reverse seeds", "reverse", ["--reverse-seeds"]),
        ("consensus of both", "consensus", ["--consensus"]),
        ("consensus + FFN agglomeration", "agglomerated", ["--consensus", "--ffn-agglomerate"]))


def cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[300, 301])
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 96, 96])
    ap.add_argument("--model", default="ffn-synthetic")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ffn_consensus.md"))
    ap.add_argument("--tmp", default=None, help="work folder (reused: finished runs resume)")
    args = ap.parse_args()
    from connectome.synth import generate

    tmp = args.tmp or tempfile.mkdtemp(prefix="ffn-consensus-")
    shape = "x".join(map(str, args.shape))
    rows = []
    for seed in args.seeds:
        root = os.path.join(tmp, f"synth{seed}")
        if not os.path.isdir(os.path.join(root, "labels")):
            generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=seed).save(root)
        for label, folder, extra in RUNS:
            out = os.path.join(root, folder)
            t0 = time.perf_counter()
            seg = cli("segment", os.path.join(root, "raw"), out, "--method", "ffn", "--model", args.model,
                      "--block-shape", *map(str, args.shape), "--workers", "1", "--no-progress", *extra)
            resumed = not any(s["ran"] for s in seg["stages"])
            seconds = None if resumed else time.perf_counter() - t0
            m = cli("evaluate", "--seg", seg["segmentation"], "--gt", os.path.join(root, "labels"))
            rows.append((seed, label, m, seconds))
            print(f"seed {seed} {label}: split {m['voi_split']:.3f} merge {m['voi_merge']:.3f}", file=sys.stderr,
                  flush=True)
            write(args, shape, rows)


def write(args, shape: str, rows: list) -> None:
    lines = [
        "# FFN over-segmentation consensus (forward and reverse seed order) and FFN agglomeration", "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores (shared); command: "
        f"`nice -n 5 .venv/bin/python benchmarks/ffn_consensus.py --seeds {' '.join(map(str, args.seeds))} "
        f"--shape {' '.join(map(str, args.shape))}`",
        f"- held-out synthetic volumes {shape} at 8 nm (generator seeds above; `{args.model}` trained on others), "
        "one block each; `connectome segment RAW OUT --method ffn [--reverse-seeds | --consensus "
        "[--ffn-agglomerate]]`, then `connectome evaluate --seg OUT/segmentation --gt LABELS --json`; merges: "
        "segments that merge ground-truth skeletons, splits: skeleton edges that pass between segments (the ERL "
        "counts, `connectome.metrics.erl`)", "",
        "| seed | run | VOI split | VOI merge | VOI | adapted Rand | merges | splits | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, label, m, seconds in rows:
        lines.append(f"| {seed} | {label} | {m['voi_split']:.3f} | {m['voi_merge']:.3f} | "
                     f"{m['voi_split'] + m['voi_merge']:.3f} | {m['arand']:.3f} | {m['merges']} | {m['splits']} | "
                     f"{'resumed' if seconds is None else f'{seconds:.0f}'} |")
    Path(args.out).write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()

"""Learned agglomeration vs mean and quantile scoring with fib-10nm on the real validation splits.

1. Thresholds: each scoring's merge threshold is chosen by VOI on medulla z 75-99 (held out of the
   edge classifier's training; the quality table's splits are not used to choose anything here),
   in memory with the chain `connectome segment` runs (`edge_training.voi_sweep`).
2. The quality table's splits (medulla z 100-124, gala test) are segmented by the real
   `connectome segment --scoring mean|quantile|learned --threshold T` and scored by
   `connectome evaluate --json`; mean scoring also at the model's shipped threshold.

The classifier is the shipped connectome/models/weights/fib-10nm-edges.json, reproduced by
`--train` (its provenance names the command). Writes benchmarks/results/learned_agglomeration.md.
Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_agglomeration.py [--train]
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
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "connectome.cli"]
MED = str(DATA / "flyem_medulla_fib_train" / "medulla_train.npz")
GALA = str(DATA / "gala_fib_crops" / "gala_fib.npz")
MODEL = "fib-10nm"
EDGES = ROOT / "connectome" / "models" / "weights" / f"{MODEL}-edges.json"
TRAIN = ["--raw", f"{MED}#raw[0:75]", "--labels", f"{MED}#neuron_ids[0:75]",
         "--raw", f"{GALA}#train_raw", "--labels", f"{GALA}#train_gt"]
CHOOSE = (f"{MED}#raw[75:100]", f"{MED}#neuron_ids[75:100]")
SETS = [("medulla val z100-124", f"{MED}#raw[100:125]", f"{MED}#neuron_ids[100:125]"),
        ("gala test", f"{GALA}#test_raw", f"{GALA}#test_gt")]
THRESHOLDS = [round(0.05 * k, 2) for k in range(4, 20)]


def cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train() -> None:
    cmd = [*CLI, "train", "edges", "--model", MODEL, *TRAIN, "--val-raw", CHOOSE[0], "--val-labels", CHOOSE[1],
           "--out", str(EDGES), "--steps", "600"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def sweep(raw: str, gt_address: str, cache: str | None) -> dict[str, list[dict]]:
    """VOI of each scoring at every threshold, in memory with the chain `segment` runs in one block."""
    import numpy as np
    import torch

    from connectome.affinity.edge_classifier import load_classifier
    from connectome.affinity.edge_training import voi_sweep, volume_edges
    from connectome.models.registry import load_model

    torch.set_num_threads(1)
    edges, _, gt = volume_edges(load_model(MODEL, "cpu"), raw, gt_address, cache)
    gt = np.asarray(gt)
    out = {}
    for scoring, clf, how in (("mean", None, "mean"), ("quantile", None, "quantile"),
                              ("learned", load_classifier(str(EDGES)), "mean")):
        out[scoring] = voi_sweep(edges, gt, clf, THRESHOLDS, how)
        best = min(out[scoring], key=lambda r: r["voi"])
        print(f"{raw}: {scoring} best VOI {best['voi']:.3f} at {best['threshold']}", file=sys.stderr, flush=True)
    return out


def run_case(name, raw, gt, scoring, threshold, tmp, blocks=None) -> dict:
    out = os.path.join(tmp, f"{name.split()[0]}-{scoring}-{threshold}-{blocks}")
    vs = ["--voxel-size", "10", "10", "10"]
    args = ["--scoring", scoring] + (["--threshold", str(threshold)] if threshold is not None else [])
    args += ["--block-shape", *map(str, blocks)] if blocks else []
    t0 = time.perf_counter()
    seg = cli("segment", raw, out, "--model", MODEL, "--no-progress", *vs, *args)
    seconds = time.perf_counter() - t0
    m = cli("evaluate", "--seg", seg["segmentation"], "--gt", gt, *vs)
    return {"set": name + (f", blocks {'x'.join(map(str, blocks))}" if blocks else ""), "scoring": scoring,
            "threshold": seg["threshold"], "voi_split": m["voi_split"],
            "voi_merge": m["voi_merge"], "voi": m["voi_split"] + m["voi_merge"], "arand": m["arand"],
            "seconds": round(seconds, 1)}


def main() -> None:
    from concurrent.futures import ThreadPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true", help="retrain the shipped classifier first")
    ap.add_argument("--cache", help="keep predicted affinities here (in-memory sweeps)")
    ap.add_argument("--jobs", type=int, default=3, help="segment runs at once")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learned_agglomeration.md"))
    args = ap.parse_args()
    if args.train:
        train()
    meta = json.loads(EDGES.read_text())
    chosen_sweep = sweep(*CHOOSE, args.cache)
    chosen = {s: min(rows, key=lambda r: r["voi"])["threshold"] for s, rows in chosen_sweep.items()}
    tmp = tempfile.mkdtemp(prefix="learned-agg-")
    cases = [(name, raw, gt, scoring, threshold) for name, raw, gt in SETS
             for scoring, threshold in (("mean", None), ("mean", chosen["mean"]), ("quantile", chosen["quantile"]),
                                        ("learned", chosen["learned"]))]
    # learned scores do not depend on the block layout: the same run in many small blocks
    cases += [(name, raw, gt, "learned", chosen["learned"], (16, 64, 64)) for name, raw, gt in SETS]
    with ThreadPoolExecutor(args.jobs) as pool:  # each case is its own `connectome` process
        rows = list(pool.map(lambda c: run_case(*c[:5], tmp, *c[5:]), cases))
    for row, case in zip(rows, cases):
        row["chosen_on"] = "mean's shipped threshold" if case[4] is None else "medulla z75-99"
    prov = meta["provenance"]
    lines = [
        "# Learned agglomeration (edge classifier) vs mean and quantile scoring, fib-10nm",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores shared with other "
        "jobs; command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_agglomeration.py`",
        f"- classifier: `{EDGES.relative_to(ROOT)}`, trained by `{prov['command']}` "
        f"({prov['date']}, {prov['fit_seconds']} s fit, {prov['weighting']} weighting, hidden {prov['hidden']}); "
        "training edges: " + "; ".join(f"{d['raw'].split('/')[-1]}: {d['edges']} ({d['merge']} merge)"
                                       for d in prov["data"]["train"]),
        "- thresholds chosen by VOI on medulla z 75-99 (not trained on by the classifier; the U-Net was "
        "trained on z 0-99) with the in-memory chain; the first `mean` row uses mean scoring's shipped "
        "threshold (chosen on z 100-124 when fib-10nm was trained); `connectome segment --model fib-10nm` "
        "without `--scoring` runs the `learned` row (the classifier's threshold)",
        "- learned scores are layout-free (`connectome/affinity/edge_context.py`): the rows with blocks 16x64x64 "
        "differ from one block only where the U-Net's blockwise affinities differ in rounding",
        "- every row: `connectome segment RAW OUT --model fib-10nm --voxel-size 10 10 10 --scoring S "
        "[--threshold T]` then `connectome evaluate --seg OUT/segmentation --gt GT --voxel-size 10 10 10 --json`; "
        "seconds: the segment command, several running at once on a loaded machine",
        "",
        "| set | scoring | threshold (chosen on) | VOI split | VOI merge | VOI | adapted Rand | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['set']} | {r['scoring']} | {r['threshold']:.2f} ({r['chosen_on']}) | "
                     f"{r['voi_split']:.3f} | {r['voi_merge']:.3f} | {r['voi']:.3f} | {r['arand']:.3f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", "Threshold sweeps on medulla z 75-99 (VOI split + merge, in memory):", "",
              "| threshold | " + " | ".join(chosen_sweep) + " |", "|---|" + "---|" * len(chosen_sweep)]
    for k, t in enumerate(THRESHOLDS):
        lines.append(f"| {t:.2f} | " + " | ".join(f"{chosen_sweep[s][k]['voi']:.3f}" for s in chosen_sweep) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Re-check the default merge thresholds of `synthetic` and `sstem-2d` with the chain `connectome segment`
runs (uint8 affinities, steepest-ascent watershed, region graph, strict mean merge) on their validation
splits; they were chosen with waterz's watershed when trained. Writes benchmarks/results/threshold_check.md
(--out). Usage: .venv/bin/python benchmarks/threshold_check.py [--help]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012" / "isbi2012.npz"
THRESHOLDS = [round(0.05 * k, 2) for k in range(4, 20)]
OUT = ROOT / "benchmarks" / "results" / "threshold_check.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("Usage:")[0].strip())
    ap.add_argument("--out", default=str(OUT), help=f"results file written (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--isbi", default=str(ISBI), help=f"ISBI 2012 npz of the sstem-2d split (default {ISBI})")
    ap.add_argument("--seed", type=int, default=101,
                    help="seed of the synthetic validation volume (default 101, the synthetic model's validation seed)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS, metavar="T",
                    help="merge thresholds swept (default 0.20 to 0.95 in steps of 0.05; a model's shipped threshold "
                         "left out reads 'not swept')")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--work", help="folder for the synthetic volume (default: a new temporary one)")
    args = ap.parse_args(argv)
    problems = [f"--isbi {args.isbi}: expected the ISBI 2012 .npz file, found no such file"
                if not os.path.isfile(args.isbi) else "",
                f"--out {args.out}: expected a file in an existing folder, found no folder {os.path.dirname(args.out)}"
                if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))) else "",
                f"--thresholds: expected values in (0, 1), found {[t for t in args.thresholds if not 0 < t < 1]}"
                if any(not 0 < t < 1 for t in args.thresholds) else "",
                f"--threads: expected a positive number, found {args.threads}" if args.threads < 1 else ""]
    for problem in filter(None, problems):  # one line each, before anything slow runs
        print(f"threshold_check.py: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from connectome.affinity.training import score_pair
    from connectome.models.registry import load_model
    from connectome.synth import generate
    from connectome.training.data import load_pair

    thresholds = [round(t, 6) for t in args.thresholds]
    torch.set_num_threads(args.threads)
    tmp = args.work or tempfile.mkdtemp(prefix="threshold-check-")
    synth = os.path.join(tmp, f"s{args.seed}")
    generate((64, 256, 256), (8.0, 8.0, 8.0), seed=args.seed).save(synth, chunk_shape=(64, 256, 256), overwrite=True)
    validation = " (its validation volume)" if args.seed == 101 else ""
    cases = [("synthetic", f"`connectome synth` seed {args.seed}, 64 x 256 x 256{validation}",
              load_pair(os.path.join(synth, "raw"), os.path.join(synth, "labels")), False),
             ("sstem-2d", "ISBI 2012 train sections 25-29, per section (its validation split)",
              load_pair(f"{args.isbi}#train_raw[25:30]", f"{args.isbi}#derived_train_cells2d[25:30]"), True)]
    command = shlex.join([".venv/bin/python", "benchmarks/threshold_check.py", *sys.argv[1:]] if argv is None
                         else [".venv/bin/python", "benchmarks/threshold_check.py", *argv])
    lines = ["# Default thresholds re-checked with our own chain", "",
             f"- date: {time.strftime('%Y-%m-%d')}; command: `{command}`",
             "- VOI split + merge (bits, gt 0 excluded) of `affinity.training.score_pair` (what `connectome train "
             "affinities` validates with: `connectome segment`'s chain in one block; 2-D labels per section)", "",
             "| model | validation split | shipped threshold | best threshold | VOI at best | VOI at shipped |",
             "|---|---|---|---|---|---|"]
    sweeps = []
    for name, split, pair, two_d in cases:
        model = load_model(name, "cpu")
        rows = score_pair(model, pair, thresholds, two_d)
        best = min(rows, key=lambda r: r["voi"])
        shipped = next((r for r in rows if abs(r["threshold"] - (model.info.threshold or 0.5)) < 1e-9), None)
        at_shipped = "not swept" if shipped is None else f"{shipped['voi']:.3f}"
        lines.append(f"| {name} | {split} | {model.info.threshold} | {best['threshold']} | {best['voi']:.3f} | "
                     f"{at_shipped} |")
        sweeps.append((name, rows))
    lines += ["", "Sweeps:", "", "| threshold | " + " | ".join(n for n, _ in sweeps) + " |",
              "|---|" + "---|" * len(sweeps)]
    for k, t in enumerate(thresholds):
        lines.append(f"| {t:.2f} | " + " | ".join(f"{rows[k]['voi']:.3f}" for _, rows in sweeps) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

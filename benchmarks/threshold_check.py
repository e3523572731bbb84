"""Re-check the default merge thresholds of `synthetic` and `sstem-2d` with the chain `connectome segment`
runs (uint8 affinities, steepest-ascent watershed, region graph, strict mean merge) on their validation
splits; they were chosen with waterz's watershed when trained. Writes benchmarks/results/threshold_check.md.
Usage: .venv/bin/python benchmarks/threshold_check.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "data" / "isbi2012" / "isbi2012.npz"
THRESHOLDS = [round(0.05 * k, 2) for k in range(4, 20)]


def main() -> None:
    import torch

    from connectome.affinity.training import score_pair
    from connectome.models.registry import load_model
    from connectome.synth import generate
    from connectome.training.data import load_pair

    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="threshold-check-")
    generate((64, 256, 256), (8.0, 8.0, 8.0), seed=101).save(os.path.join(tmp, "s101"), chunk_shape=(64, 256, 256))
    cases = [("synthetic", "`connectome synth` seed 101, 64 x 256 x 256 (its validation volume)",
              load_pair(os.path.join(tmp, "s101", "raw"), os.path.join(tmp, "s101", "labels")), False),
             ("sstem-2d", "ISBI 2012 train sections 25-29, per section (its validation split)",
              load_pair(f"{ISBI}#train_raw[25:30]", f"{ISBI}#derived_train_cells2d[25:30]"), True)]
    lines = ["# Default thresholds re-checked with our own chain", "",
             f"- date: {time.strftime('%Y-%m-%d')}; command: `.venv/bin/python benchmarks/threshold_check.py`",
             "- VOI split + merge (bits, gt 0 excluded) of `affinity.training.score_pair` (what `connectome train "
             "affinities` validates with: `connectome segment`'s chain in one block; 2-D labels per section)", "",
             "| model | validation split | shipped threshold | best threshold | VOI at best | VOI at shipped |",
             "|---|---|---|---|---|---|"]
    sweeps = []
    for name, split, pair, two_d in cases:
        model = load_model(name, "cpu")
        rows = score_pair(model, pair, THRESHOLDS, two_d)
        best = min(rows, key=lambda r: r["voi"])
        shipped = next(r for r in rows if abs(r["threshold"] - (model.info.threshold or 0.5)) < 1e-9)
        lines.append(f"| {name} | {split} | {model.info.threshold} | {best['threshold']} | {best['voi']:.3f} | "
                     f"{shipped['voi']:.3f} |")
        sweeps.append((name, rows))
    lines += ["", "Sweeps:", "", "| threshold | " + " | ".join(n for n, _ in sweeps) + " |",
              "|---|" + "---|" * len(sweeps)]
    for k, t in enumerate(THRESHOLDS):
        lines.append(f"| {t:.2f} | " + " | ".join(f"{rows[k]['voi']:.3f}" for _, rows in sweeps) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "threshold_check.md").write_text(text)


if __name__ == "__main__":
    main()

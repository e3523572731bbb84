"""Edge classifiers of one affinity model compared on several labelled volumes: the mean VOI split / merge
(gt == 0 excluded) over the volumes at each merge threshold, one block each, in memory, as `connectome
segment --scoring learned` merges (`edge_training.volume_edges` + `voi_sweep`; each classifier at its own
extent). For choosing between classifiers on validation volumes, e.g. synthetic ones:

    .venv/bin/python benchmarks/edge_sweep.py --model synthetic \
        --volumes /tmp/val/synth-511 /tmp/val/synth-512 --classifiers synthetic-edges /tmp/new-edges.json

A volume is a folder holding `raw` and `labels` (as `connectome.synth` writes them), or `RAW,LABELS` addresses.
Prints a markdown table; `--cache DIR` keeps the predicted affinities for re-runs.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from connectome.affinity.edge_classifier import load_classifier, resolve_edge_model
from connectome.affinity.edge_training import voi_sweep, volume_edges
from connectome.models.registry import load_model

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def addresses(volume: str) -> tuple[str, str]:
    if "," in volume:
        raw, labels = volume.split(",", 1)
        return raw, labels
    return os.path.join(volume, "raw"), os.path.join(volume, "labels")


def sweep(model_name: str, volumes, classifiers, thresholds=THRESHOLDS, cache: str | None = None) -> dict:
    """Per classifier: (its own threshold, rows of mean split / merge over the volumes per threshold)."""
    model = load_model(model_name, "cpu")
    loaded = {name: load_classifier(resolve_edge_model(name)) for name in classifiers}
    total = {name: np.zeros((len(thresholds), 2)) for name in classifiers}
    for volume in volumes:
        raw, labels = addresses(volume)
        for extent in sorted({clf.extent for clf in loaded.values()}):  # one edge set per extent
            edges, _, gt = volume_edges(model, raw, labels, cache, extent)
            for name, clf in loaded.items():
                if clf.extent == extent:
                    total[name] += [[r["voi_split"], r["voi_merge"]] for r in voi_sweep(edges, gt, clf, thresholds)]
    return {name: (clf.threshold, clf.extent, total[name] / len(volumes)) for name, clf in loaded.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--volumes", nargs="+", required=True)
    p.add_argument("--classifiers", nargs="+", required=True, help="edge classifier names or .json paths")
    p.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS))
    p.add_argument("--cache")
    a = p.parse_args(argv)
    res = sweep(a.model, a.volumes, a.classifiers, a.thresholds, a.cache)
    print(f"mean over {len(a.volumes)} volumes; VOI split + merge (bits)\n")
    print("| classifier | extent | its threshold | " + " | ".join(f"{t:.2f}" for t in a.thresholds) + " |")
    print("|---|---|---|" + "---|" * len(a.thresholds))
    for name, (own, extent, rows) in res.items():
        cells = " | ".join(f"{s + m:.3f} ({s:.3f} + {m:.3f})" for s, m in rows)
        print(f"| {name} | {extent} | {own} | {cells} |")


if __name__ == "__main__":
    main()

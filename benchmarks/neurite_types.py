"""Neurite types with groups of descriptors, on held-apart predicted fragments and on ground-truth cells.

The runs are `connectome reconstruct` outputs of synthetic volumes, as `benchmarks/synapses.py --out DIR`
leaves them (DIR/out-SEED, DIR/synth-SEED). The runs are split into two folds. Each fold is classified by an
MLP fitted, as `connectome.neurites.training` fits the shipped one, on the ground-truth cells of seeds
300-311 and on the other fold's runs, once per descriptor set (`--sets`, groups joined by '+': `shape` the
size, shape, radius, intensity and synapse descriptors, `patches` the patch network's, `sholl` the local
Sholl analysis of branching) and fit seed. Reported: segments right, voxels right, segments of at least
1000 voxels right and the recall per class, pooled over both folds; and the accuracy on the ground-truth
cells of seeds 400-403 of an MLP fitted on the cells of 300-311 and all the runs.

With --speed: the feature sums of the first run's whole volume (one block, one thread) timed without and
with the patch network.

Usage: .venv/bin/python benchmarks/neurite_types.py --runs DIR --seeds 510 511 512 513 514 515 [--fit-seeds 0 1 2]
           [--sets shape shape+patches shape+patches+sholl]
       .venv/bin/python benchmarks/neurite_types.py --runs DIR --seeds 510 --speed
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from connectome.neurites import patch_net, sholl
from connectome.neurites.classifier import CLASSES
from connectome.neurites.features import FEATURE_NAMES, PATCH_FEATURES, block_sums
from connectome.neurites.training import confusion, fit, predicted_examples, synthetic_set

GROUPS = {"patches": PATCH_FEATURES, "sholl": sholl.FEATURES}
GROUPS["shape"] = tuple(f for f in FEATURE_NAMES if not any(f in g for g in GROUPS.values()))


def features_of(spec: str) -> tuple[str, ...]:
    names = set().union(*(GROUPS[g] for g in spec.split("+")))
    return tuple(f for f in FEATURE_NAMES if f in names)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", required=True, help="a benchmarks/synapses.py work directory")
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--patch-network", default="patches-synthetic")
    p.add_argument("--fit-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--sets", nargs="+", default=["shape", "shape+patches", "shape+patches+sholl"],
                   help=f"descriptor sets, groups joined by '+' ({', '.join(GROUPS)})")
    p.add_argument("--speed", action="store_true")
    a = p.parse_args(argv)
    model = patch_net.load(a.patch_network)
    if a.speed:
        speed(f"{a.runs}/out-{a.seeds[0]}", f"{a.runs}/synth-{a.seeds[0]}", model)
        return
    cells = synthetic_set(range(300, 312), patch_model=model)
    test_cells = synthetic_set(range(400, 404), patch_model=model)
    runs = {s: predicted_examples(f"{a.runs}/out-{s}", f"{a.runs}/synth-{s}", model) for s in a.seeds}
    half = len(a.seeds) // 2
    folds = (a.seeds[:half], a.seeds[half:])
    for fit_seed in a.fit_seeds:
        for spec in a.sets:
            features = features_of(spec)
            m = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
            big_right = big = 0
            vox_right = vox = 0.0
            for fold in folds:
                train = [cells] + [runs[s] for s in a.seeds if s not in fold]
                x, y, n = (np.concatenate([t[i] for t in train]) for i in range(3))
                clf = fit(x, y, voxels=n, balance=0.5, features=features, seed=fit_seed)
                for s in fold:
                    xv, yv, nv = runs[s]
                    pred = clf.predict(clf.select(xv))[0]
                    m += confusion(yv, pred)
                    ok = pred == yv
                    vox_right, vox = vox_right + float(nv[ok].sum()), vox + float(nv.sum())
                    large = nv >= 1000
                    big_right, big = big_right + int(ok[large].sum()), big + int(large.sum())
            train = [cells, *runs.values()]
            x, y, n = (np.concatenate([t[i] for t in train]) for i in range(3))
            clf = fit(x, y, voxels=n, balance=0.5, features=features, seed=fit_seed)
            cells_right = float(np.mean(clf.predict(clf.select(test_cells[0]))[0] == test_cells[1]))
            recall = {c: round(float(m[i, i] / max(m[i].sum(), 1)), 3) for i, c in enumerate(CLASSES)}
            print(json.dumps({"fit_seed": fit_seed, "set": spec, "descriptors": len(features),
                              "segments_right": round(float(np.trace(m) / m.sum()), 3),
                              "voxels_right": round(vox_right / vox, 3),
                              "segments_over_1000_voxels_right": round(big_right / big, 3),
                              "errors_over_1000_voxels": big - big_right, "recall": recall,
                              "cells_400_403_right": round(cells_right, 3), "segments": int(m.sum()),
                              "segments_over_1000_voxels": big}), flush=True)


def speed(out_dir: str, synth_dir: str, model) -> None:
    import torch

    from connectome.core.geometry import Box
    from connectome.io import open_volume

    torch.set_num_threads(1)
    seg_v, raw_v = open_volume(f"{out_dir}/segmentation"), open_volume(f"{synth_dir}/raw")
    seg, raw = seg_v.read(seg_v.box), raw_v.read(raw_v.box)
    box = Box.from_shape(seg.shape)
    for name, m in (("without the patch network", None), ("with it", model)):
        t = time.perf_counter()
        block_sums(seg, raw, box, box, box, seg_v.meta.voxel_size, patch_model=m)
        s = time.perf_counter() - t
        print(json.dumps({"features": name, "voxels": int(seg.size), "seconds": round(s, 2),
                          "voxels_per_s": round(seg.size / s)}), flush=True)


if __name__ == "__main__":
    main()

"""Neurite types with and without the patch network's features, on held-apart predicted fragments.

The runs are `connectome reconstruct` outputs of synthetic volumes, as `benchmarks/synapses.py --out DIR`
leaves them (DIR/out-SEED, DIR/synth-SEED). The runs are split into two folds. Each fold is classified by an
MLP fitted, as `connectome.neurites.training` fits the shipped one, on the ground-truth cells of seeds
300-311 and on the other fold's runs. The MLP is fitted once on the 14 descriptors without the patch network
and once on all 20, with each of the fit seeds. Reported: segments right, voxels right, and segments of at
least 1000 voxels right, pooled over both folds.

With --speed: the feature sums of the first run's whole volume (one block, one thread) timed with and
without the patch network.

Usage: .venv/bin/python benchmarks/neurite_patches.py --runs DIR --seeds 510 511 512 513 514 515 [--fit-seeds 0 1 2]
       .venv/bin/python benchmarks/neurite_patches.py --runs DIR --seeds 510 --speed
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from connectome.neurites import patch_net
from connectome.neurites.features import FEATURE_NAMES, PATCH_FEATURES, block_sums
from connectome.neurites.training import fit, predicted_examples, synthetic_set


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", required=True, help="a benchmarks/synapses.py work directory")
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--patch-network", default="patches-synthetic")
    p.add_argument("--fit-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--speed", action="store_true")
    a = p.parse_args(argv)
    model = patch_net.load(a.patch_network)
    if a.speed:
        speed(f"{a.runs}/out-{a.seeds[0]}", f"{a.runs}/synth-{a.seeds[0]}", model)
        return
    cells = synthetic_set(range(300, 312), patch_model=model)
    runs = {s: predicted_examples(f"{a.runs}/out-{s}", f"{a.runs}/synth-{s}", model) for s in a.seeds}
    half = len(a.seeds) // 2
    folds = (a.seeds[:half], a.seeds[half:])
    without = tuple(f for f in FEATURE_NAMES if f not in PATCH_FEATURES)
    for fit_seed, (name, features) in ((f, c) for f in a.fit_seeds
                                       for c in (("without the patch network", without), ("with it", FEATURE_NAMES))):
        right = total = big_right = big = 0
        vox_right = vox = 0.0
        for fold in folds:
            train = [cells] + [runs[s] for s in a.seeds if s not in fold]
            x, y, n = (np.concatenate([t[i] for t in train]) for i in range(3))
            clf = fit(x, y, voxels=n, balance=0.5, features=features, seed=fit_seed)
            for s in fold:
                xv, yv, nv = runs[s]
                ok = clf.predict(clf.select(xv))[0] == yv
                right, total = right + int(ok.sum()), total + len(ok)
                vox_right, vox = vox_right + float(nv[ok].sum()), vox + float(nv.sum())
                large = nv >= 1000
                big_right, big = big_right + int(ok[large].sum()), big + int(large.sum())
        print(json.dumps({"fit_seed": fit_seed, "descriptors": len(features), "features": name, "segments_right": round(right / total, 3),
                          "voxels_right": round(vox_right / vox, 3),
                          "segments_over_1000_voxels_right": round(big_right / big, 3),
                          "segments": total, "segments_over_1000_voxels": big,
                          "errors_over_1000_voxels": big - big_right}), flush=True)


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

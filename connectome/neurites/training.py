"""Training the neurite type classifier on synthetic volumes, whose compartments give every segment a
class (the majority compartment of its voxels); reported with a confusion matrix on held-out volumes.
Besides the ground-truth cells, `--predicted OUT SYNTH` adds the segments of a `connectome reconstruct`
run OUT on the synthetic volume SYNTH (`connectome.synth` saved): the fragments a predicted segmentation
really holds, with that run's synapse counts, as the `neurite_types` stage sees them.

    python -m connectome.neurites.training --name types-synthetic [--predicted OUT SYNTH ...] [--sholl]

The local Sholl descriptors of branching (`sholl.py`) are left out unless `--sholl`: on held-apart predicted
fragments of synthetic volumes they made the classifier worse (benchmarks/results/synapses.md, neurite types).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from connectome.core.geometry import Box
from connectome.neurites import sholl
from connectome.neurites.classifier import CLASSES, WEIGHTS_DIR, TypeClassifier, save
from connectome.neurites.features import FEATURE_NAMES, PATCH_FEATURES, block_sums, combine, describe
from connectome.synth import codes as K

VOXEL_NM = (8.0, 8.0, 8.0)  # the synthetic volumes' voxel size
COMPARTMENT_CLASS = {K.C_AXON: K.AXON, K.C_BOUTON: K.AXON, K.C_MYELIN: K.AXON, K.C_DENDRITE: K.DENDRITE,
                     K.C_SPINE: K.SPINE, K.C_SOMA: K.SOMA, K.C_NUCLEUS: K.SOMA, K.C_GLIA: K.GLIA}


def class_lut() -> np.ndarray:
    """uint8 compartment code -> index into CLASSES (-1: no class, e.g. vessel)."""
    lut = np.full(256, -1, np.int64)
    for c, name in COMPARTMENT_CLASS.items():
        lut[c] = CLASSES.index(name)
    return lut


def true_classes(seg: np.ndarray, compartments: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index into CLASSES of each segment's majority compartment class (-1: none, e.g. vessel)."""
    cls = class_lut()[compartments]
    fg = (seg != 0) & (cls >= 0)
    keys, inv = np.unique(seg[fg], return_inverse=True)
    counts = np.zeros((len(keys), len(CLASSES)))
    np.add.at(counts, (inv.ravel(), cls[fg]), 1)
    out = np.full(len(ids), -1, np.int64)
    at = np.searchsorted(keys, ids)
    ok = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == ids)
    out[ok] = counts[at[ok]].argmax(1)
    return out


def split_spines(labels: np.ndarray, compartments: np.ndarray) -> np.ndarray:
    """Ground-truth cells with every spine cut off as its own segment (as a segmentation often does)."""
    import cc3d

    seg = labels.astype(np.uint64).copy()
    spines = cc3d.connected_components(compartments == K.C_SPINE, connectivity=6).astype(np.uint64)
    base = np.uint64(int(labels.max()) + 1)
    seg[spines != 0] = spines[spines != 0] + base
    return seg


def _labelled(seg, raw, voxel_size, compartments, counts,
              patch_model=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors, class index, voxels) of each segment with a class; `counts(ids)` gives the
    segments' synapses out and in; `patch_model`: a loaded patch network (None: no patch features)."""
    box = Box.from_shape(seg.shape)
    sums = combine([block_sums(seg, raw, box, box, box, voxel_size, patch_model=patch_model)])
    ids = sums["ids"]
    x = describe(sums, voxel_size, *counts(ids))
    y = true_classes(seg, compartments, ids)
    keep = (y >= 0) & (sums["voxels"] > 0)
    return x[keep], y[keep], sums["voxels"][keep]


def segment_examples(seg, raw, voxel_size, synapses, compartments, pre=None, post=None, patch_model=None):
    """(descriptors, class index, voxels) of each segment of one volume; synapse partners as segment ids."""
    pre = synapses["pre_id"].astype(np.uint64) if pre is None else pre
    post = synapses["post_id"].astype(np.uint64) if post is None else post

    def counts(ids):
        return (np.array([np.sum(pre == i) for i in ids], float), np.array([np.sum(post == i) for i in ids], float))

    return _labelled(seg, raw, voxel_size, compartments, counts, patch_model)


def predicted_examples(out_dir: str, synth_dir: str, patch_model=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors, class index, voxels) of each segment of a reconstruct run's segmentation `out_dir` of
    the synthetic volume `synth_dir`, with the run's synapse counts (synapses.csv, if any)."""
    from connectome.io import open_volume
    from connectome.neurites.types import synapse_counts

    seg_v = open_volume(os.path.join(out_dir, "segmentation"))
    seg = seg_v.read(seg_v.box).astype(np.uint64)
    raw_v, comp_v = open_volume(os.path.join(synth_dir, "raw")), open_volume(os.path.join(synth_dir, "compartments"))
    voxel_size = tuple(float(v) for v in seg_v.meta.voxel_size)
    table = os.path.join(out_dir, "synapses.csv")
    return _labelled(seg, raw_v.read(raw_v.box), voxel_size, comp_v.read(comp_v.box),
                     lambda ids: synapse_counts(ids, table if os.path.exists(table) else None), patch_model)


def synthetic_set(seeds, shape=(64, 192, 192), voxel_size=VOXEL_NM, patch_model=None):
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions

    xs, ys, ns = [], [], []
    for seed in seeds:
        v = generate(shape, voxel_size, seed=int(seed), tissue=TissueOptions(synapses_per_um3=8.0))
        for seg in (v.labels.astype(np.uint64), split_spines(v.labels, v.compartments)):
            post = v.synapses["post_id"].astype(np.uint64)
            if seg is not v.labels:  # a synapse on a spine lands on the spine's own segment
                post = seg[v.synapses["z"], v.synapses["y"], v.synapses["x"]]
            x, y, n = segment_examples(seg, v.raw, voxel_size, v.synapses, v.compartments, post=post,
                                       patch_model=patch_model)
            xs.append(x)
            ys.append(y)
            ns.append(n)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ns)


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    m = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    np.add.at(m, (truth, pred), 1)
    return m


def fit(x: np.ndarray, y: np.ndarray, hidden: int = 32, steps: int = 3000, seed: int = 0,
        voxels: np.ndarray | None = None, balance: float = 1.0, features=FEATURE_NAMES) -> TypeClassifier:
    """An MLP with one hidden layer over the `features` columns of `x` (x's columns: all of FEATURE_NAMES,
    or just `features` when it has that many); with `voxels`, each segment weighs log(1 + its voxels) (a
    one-voxel fragment of a predicted segmentation counts less than a cell); each class's total weight is
    then evened out to the power `balance` (1: classes weigh the same, 0: as they come)."""
    features = tuple(features)
    if x.shape[1] == len(FEATURE_NAMES) and len(features) != len(FEATURE_NAMES):
        x = x[:, [FEATURE_NAMES.index(f) for f in features]]
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y)
    w = np.ones(len(y)) if voxels is None else np.log1p(np.asarray(voxels, float))
    counts = np.bincount(y, weights=w, minlength=len(CLASSES))
    per_class = (np.where(counts > 0, 1.0 / np.maximum(counts, 1e-12), 0.0) * counts.sum() / len(CLASSES)) ** balance
    sample = torch.tensor(w * per_class[y], dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, len(CLASSES)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = (torch.nn.functional.cross_entropy(net(xt), yt, reduction="none") * sample).sum() / sample.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layers = tuple((m.weight.detach().numpy().T.astype(float), m.bias.detach().numpy().astype(float))
                   for m in net if isinstance(m, torch.nn.Linear))
    return TypeClassifier("", features, CLASSES, mean, std, layers, {})


def descriptor_names(patches: bool, with_sholl: bool) -> tuple[str, ...]:
    """The classifier's descriptors: all of FEATURE_NAMES but the patch network's unless `patches` and the
    Sholl ones unless `with_sholl`."""
    left_out = (() if patches else PATCH_FEATURES) + (() if with_sholl else sholl.FEATURES)
    return tuple(f for f in FEATURE_NAMES if f not in left_out)


def train(name: str, train_seeds=range(300, 312), test_seeds=range(400, 404), predicted=(),
          patch_network: str | None = "patches-synthetic", with_sholl: bool = False, log=print) -> dict:
    """Fit on the ground-truth cells of `train_seeds` and the segments of the `predicted` (out_dir,
    synth_dir) runs; report on the ground-truth cells of `test_seeds`. With `patch_network` (a name or
    path), the patch network's features are among the descriptors; without, they are left out; the Sholl
    descriptors only `with_sholl`."""
    from connectome.neurites import patch_net

    t0 = time.perf_counter()
    model = patch_net.load(patch_network) if patch_network else None
    features = descriptor_names(model is not None, with_sholl)
    x, y, n = synthetic_set(train_seeds, patch_model=model)
    n_cells = len(y)
    for out_dir, synth_dir in predicted:
        xp, yp, npv = predicted_examples(out_dir, synth_dir, model)
        x, y, n = np.concatenate([x, xp]), np.concatenate([y, yp]), np.concatenate([n, npv])
    xv, yv, _ = synthetic_set(test_seeds, patch_model=model)
    # with predicted fragments: weights by log size, classes evened out by the square root (chosen on
    # held-apart predicted volumes; benchmarks/results/synapses.md, neurite types)
    clf = fit(x, y, voxels=n if predicted else None, balance=0.5 if predicted else 1.0, features=features)
    pred, _ = clf.predict(clf.select(xv))
    m = confusion(yv, pred)
    per_class = {c: (float(m[i, i] / m[i].sum()) if m[i].sum() else None) for i, c in enumerate(CLASSES)}
    report = {"train_segments": int(len(y)), "train_ground_truth_cells": int(n_cells),
              "train_predicted_runs": [list(p) for p in predicted], "test_segments": int(len(yv)),
              "accuracy": float(np.trace(m) / max(m.sum(), 1)), "per_class_recall": per_class,
              "confusion_rows_truth_cols_predicted": m.tolist(), "classes": list(CLASSES),
              "data": "synthetic (64, 192, 192) at 8 nm: ground-truth cells, and the same with spines cut off",
              "voxel_size": list(VOXEL_NM),
              "train_seeds": list(train_seeds), "test_seeds": list(test_seeds), "patch_network": patch_network,
              "seconds": round(time.perf_counter() - t0, 1)}
    clf = TypeClassifier(name, clf.features, clf.classes, clf.mean, clf.std, clf.layers, report)
    path = save(WEIGHTS_DIR / f"{name}.json", clf)
    log(f"saved {path}: {json.dumps(report)}")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="types-synthetic")
    p.add_argument("--predicted", nargs=2, action="append", default=[], metavar=("OUT", "SYNTH"),
                   help="a reconstruct run's output directory and the synthetic volume it segmented")
    p.add_argument("--patch-network", default="patches-synthetic",
                   help="patch network whose features join the descriptors ('none': without)")
    p.add_argument("--sholl", action="store_true", help="add the local Sholl descriptors of branching")
    a = p.parse_args(argv)
    train(a.name, predicted=[tuple(x) for x in a.predicted],
          patch_network=None if a.patch_network == "none" else a.patch_network, with_sholl=a.sholl)


if __name__ == "__main__":
    main()

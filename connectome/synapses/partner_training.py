"""Training the partner classifier (connectome.synapses.interface) on synthetic volumes: the shipped
cleft network's clefts and directions, the ground-truth cells as the segmentation; each cleft group
(object, postsynaptic cell) near a true synapse onto that cell is one example whose right answer is
the synapse's presynaptic cell. Validated on other seeds against the direction-vote majority.

    python -m connectome.synapses.partner_training --name partners-synthetic --train-seeds 100 125
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from connectome.core.geometry import Box
from connectome.synapses import model as M
from connectome.synapses.detect import predict_volume
from connectome.synapses.fragments import fragment_table, label_block
from connectome.synapses.interface import (
    FEATURES,
    WEIGHTS_DIR,
    PartnerClassifier,
    fit_conditional_logit,
    group_softmax,
)
from connectome.synapses.merge import find_rows, group_candidates, majority
from connectome.synth import generate
from connectome.synth.options import TissueOptions

VOXEL_SIZE = (8.0, 8.0, 8.0)
SHAPE = (64, 160, 160)
TOLERANCE_NM = 200.0


def examples(seed: int, model: M.LoadedCleftModel, shape=SHAPE, min_voxels: int = 200,
             keep_volume: bool = False) -> dict:
    """One synthetic volume's candidates: group index, candidate id, features, whether it is the true
    presynaptic cell, and per group the direction-vote majority, the true pre (0: no synapse), its
    (object, post) key and centre; with `keep_volume`, the volume and the cleft probability too."""
    v = generate(shape, VOXEL_SIZE, seed=seed, tissue=TissueOptions(synapses_per_um3=8.0))
    prob, vec = predict_volume(model, v.raw)
    box = Box.from_shape(shape)
    frag = label_block(prob, model.info.threshold, 0)
    t = fragment_table(frag, prob, M.vectors_from_uint8(vec), v.labels, box, box, box, model.info.vector_nm,
                       VOXEL_SIZE, v.raw)
    ids = t["ids"].astype(np.uint64)
    obj = np.arange(len(ids))  # one block: a fragment is an object
    vo = obj[np.searchsorted(ids, t["vote_fragment"].astype(np.uint64))]
    keys, inv = np.unique(np.stack([vo.astype(np.uint64), t["vote_post"].astype(np.uint64)], 1), axis=0,
                          return_inverse=True)
    inv = inv.ravel()
    count = np.bincount(inv, weights=t["vote_count"], minlength=len(keys))
    centre = np.stack([np.bincount(inv, weights=t["vote_coord_sum"][:, j], minlength=len(keys)) for j in range(3)],
                      1) / np.maximum(count, 1)[:, None]
    keep = (count >= min_voxels) & (keys[:, 1] != 0)
    keys, count, centre = keys[keep], count[keep], centre[keep]
    pre_votes = t["vote_pre"].astype(np.uint64)
    gi, cand, feats, vkeys, vcount = group_candidates(t, ids, obj, vo, keys, count, pre_votes)
    # the true pre of each group: the nearest true synapse onto its post cell within the tolerance
    syn = v.synapses
    true_pre = np.zeros(len(keys), np.uint64)
    if len(syn) and len(keys):
        loc = np.stack([syn["z"], syn["y"], syn["x"]], 1).astype(float)
        d = np.linalg.norm((centre[:, None] - loc[None]) * np.asarray(VOXEL_SIZE), axis=2)
        d[keys[:, 1][:, None] != syn["post_id"].astype(np.uint64)[None]] = np.inf
        best = d.argmin(1)
        near = d[np.arange(len(keys)), best] <= TOLERANCE_NM
        true_pre[near] = syn["pre_id"][best[near]]
    vg = find_rows(keys.astype(np.uint64), vkeys[:, :2])
    hit = vg >= 0
    vote_pre, _, _ = majority(vg[hit], vkeys[hit, 2], vcount[hit], len(keys))
    out = {"group": gi, "cand": cand, "features": feats, "positive": cand == true_pre[gi], "true_pre": true_pre,
           "vote_pre": vote_pre, "count": count, "keys": keys, "centre": centre}
    return {**out, "volume": v, "prob": prob} if keep_volume else out


def _pool(parts: list[dict]):
    g, f, pos, offset = [], [], [], 0
    for p in parts:
        g.append(p["group"] + offset)
        f.append(p["features"])
        pos.append(p["positive"])
        offset += len(p["true_pre"])
    return np.concatenate(g), np.concatenate(f), np.concatenate(pos)


def accuracy(parts: list[dict], clf: PartnerClassifier | None) -> dict:
    """Groups with a true synapse: share whose chosen pre is right (classifier or vote majority)."""
    right = total = 0
    for p in parts:
        n = len(p["true_pre"])
        if clf is None:
            chosen = p["vote_pre"]
        else:
            chosen = p["vote_pre"].copy()
            if len(p["group"]):
                prob = group_softmax(p["group"], clf.scores(p["features"]), n)
                order = np.lexsort((p["cand"], -prob, p["group"]))
                first = order[np.r_[True, p["group"][order][1:] != p["group"][order][:-1]]]
                chosen[p["group"][first]] = p["cand"][first]
        known = p["true_pre"] != 0
        right += int((chosen[known] == p["true_pre"][known]).sum())
        total += int(known.sum())
    return {"right": right, "groups": total, "accuracy": right / max(total, 1)}


def train(name: str, model: str = "cleft-synthetic", train_seeds=range(100, 110), val_seeds=(200, 201, 202, 203),
          l2: float = 1e-2, log=print) -> dict:
    t0 = time.perf_counter()
    m = M.load(model, "cpu")
    tr = [examples(s, m) for s in train_seeds]
    va = [examples(s, m) for s in val_seeds]
    log(f"data in {time.perf_counter() - t0:.0f} s")
    g, f, pos = _pool(tr)
    have = np.zeros(int(g.max()) + 1, bool)
    have[g[pos]] = True  # only groups whose true pre is among the candidates
    keep = have[g]
    mean, std, w = fit_conditional_logit(f[keep], g[keep], pos[keep], l2)
    clf = PartnerClassifier(name, mean, std, w, {})
    result = {"train": {"classifier": accuracy(tr, clf), "votes": accuracy(tr, None)},
              "validation": {"classifier": accuracy(va, clf), "votes": accuracy(va, None)}}
    log(json.dumps(result))
    provenance = {"cleft_model": model, "train_seeds": list(train_seeds), "validation_seeds": list(val_seeds),
                  "shape": list(SHAPE), "l2": l2, "segmentation": "ground-truth cells", **result,
                  "command": f"python -m connectome.synapses.partner_training --name {name} "
                             f"--train-seeds {min(train_seeds)} {max(train_seeds) + 1} --l2 {l2}"}
    clf = PartnerClassifier(name, mean, std, w, provenance)
    with open(WEIGHTS_DIR / f"{name}.json", "w") as fh:
        json.dump(clf.to_json(), fh, indent=1)
    log("weights: " + ", ".join(f"{k} {v:+.2f}" for k, v in zip(FEATURES, w)))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="partners-synthetic")
    p.add_argument("--model", default="cleft-synthetic")
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--train-seeds", nargs=2, type=int, default=[100, 110], metavar=("FIRST", "END"))
    a = p.parse_args(argv)
    train(a.name, a.model, range(*a.train_seeds), l2=a.l2)


if __name__ == "__main__":
    main()

"""Training the cleft network on synthetic volumes (cleft mask and partner directions from the ground
truth), validated by synapse detection and partner F1 on a held-out synthetic volume.

    python -m connectome.synapses.training --minutes 8 --name cleft-synthetic
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from connectome.metrics.synapses import synapse_scores
from connectome.models.unet import preset
from connectome.synapses import model as M
from connectome.synapses.detect import cleft_table, predict_volume, synapses_in_memory
from connectome.synapses.interface import LINEAR_CLASSIFIER
from connectome.synapses.targets import cleft_targets
from connectome.synth import generate
from connectome.synth.options import TissueOptions

VOXEL_SIZE = (8.0, 8.0, 8.0)
SHAPE = (64, 160, 160)
VECTOR_NM = 80.0
TOLERANCE_NM = 200.0
VAL_SEEDS = tuple(range(200, 210))  # validation volumes: choose the checkpoint, threshold and sizes
THRESHOLDS = (0.75, 0.85, 0.9)
MIN_VOXELS = (800, 1200, 1500, 2000, 3000)
EDGE_MIN_VOXELS = (200, 400, 800)  # clefts cut by the volume's faces; also: the same as MIN_VOXELS
CORE_THRESHOLDS = (0.9, 0.95)  # cores that split a cleft object into one synapse per density
CORE_MIN_VOXELS = (300, 600)
VOTE_SPLIT_VOXELS = (1500, 2000, 2500, 3000, 4000)  # another bouton's votes on one density: a synapse of its own
SATELLITE_NM = (300.0, 500.0)  # a small synapse this near a much larger one is a piece of its density
SATELLITE_RATIOS = (0.1, 0.2, 0.3)


def synthetic_examples(seeds, shape=SHAPE, voxel_size=VOXEL_SIZE, density: float = 8.0):
    """(raw, cleft, vectors, vector mask, labels, synapses) per seed; `density` synapses per um^3 (more
    than the default tissue, so that every patch batch sees clefts)."""
    out = []
    for seed in seeds:
        v = generate(shape, voxel_size, seed=int(seed), tissue=TissueOptions(synapses_per_um3=density))
        cleft, vec, known = cleft_targets(v.labels, v.organelles, v.synapses, voxel_size)
        out.append((v.raw, cleft, vec, known, v.labels, v.synapses))
    return out


def patch_window(cleft: np.ndarray, size, rng, near_cleft: bool) -> tuple[slice, ...]:
    """Where a training patch of `size` lies: around a random cleft voxel (jittered by up to a quarter
    patch) when `near_cleft`, else anywhere in the volume."""
    shape, size = np.array(cleft.shape), np.array(size)
    if near_cleft and cleft.any():
        where = np.argwhere(cleft)
        c = where[rng.integers(len(where))]
        lo = np.clip(c - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, shape - size)
    else:
        lo = np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, size)])
    return tuple(slice(a, a + p) for a, p in zip(lo, size))


def _patch(example, size, rng, near_cleft: bool):
    raw, cleft, vec, known = example[:4]
    sl = patch_window(cleft, size, rng, near_cleft)
    r, c, v, k = raw[sl].astype(np.float32), cleft[sl], vec[(slice(None), *sl)].copy(), known[sl]
    for axis in range(3):  # flips: the direction component along a flipped axis changes sign
        if rng.random() < 0.5:
            r, c, k = np.flip(r, axis), np.flip(c, axis), np.flip(k, axis)
            v = np.flip(v, axis + 1)
            v[axis] *= -1
    perm = rng.permutation(3)  # isotropic voxels: axes may be exchanged
    r, c, k = r.transpose(perm), c.transpose(perm), k.transpose(perm)
    v = v[perm].transpose(0, *(perm + 1))
    r = r * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    return np.clip(r, 0, 255), c, v, k


def cleft_loss(y: torch.Tensor, cleft: torch.Tensor, vectors: torch.Tensor, known: torch.Tensor,
               margin) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-balanced cleft cross-entropy, squared direction error averaged over the voxels whose
    direction is `known` only: zero where none is), both inside `margin` voxels (an int or one per
    axis) of the patch faces; `y` (batch, 4, z, y, x), `cleft` and `known` (batch, z, y, x)."""
    m = (margin,) * 3 if isinstance(margin, int) else tuple(margin)
    inner = (slice(None), *(slice(a, cleft.shape[i + 1] - a) for i, a in enumerate(m)))
    logits, c_in = y[:, 0][inner], cleft[inner]
    pos = c_in.mean().clamp(min=1e-3, max=1 - 1e-3)
    weight = torch.where(c_in > 0, 0.5 / pos, 0.5 / (1 - pos))
    loss_c = F.binary_cross_entropy_with_logits(logits, c_in, weight=weight)
    kin = known[inner]
    diff = ((torch.tanh(y[:, 1:]) - vectors) ** 2).sum(1)[inner]
    loss_v = torch.where(kin > 0, diff, 0.0).sum() / kin.sum().clamp(min=1.0)
    return loss_c, loss_v


def validate(model: M.LoadedCleftModel, examples, threshold=None, min_voxels=None, predictions=None,
             classifier: str | None = LINEAR_CLASSIFIER, tables: dict | None = None,
             edge_min_voxels: int | None = None, core_threshold: float | None = None,
             core_min_voxels: int | None = None, satellite_nm: float | None = None,
             satellite_ratio: float = 0.2, vote_split_voxels: int | None = None) -> dict:
    """Detection and partner precision / recall / F1 (ground-truth cells as the segmentation, partners
    by `classifier`, None: the direction votes); `predictions` (per example: probability, vectors)
    saves predicting again, `tables` (a dict) keeps the cleft tables per (example, threshold, core
    threshold); `edge_min_voxels`: the minimum size of cleft objects cut by the volume's faces;
    `core_threshold` and `core_min_voxels`: the split of cleft objects by their cores (none if None);
    `satellite_nm` and `satellite_ratio`: merge.satellites (none if None); `vote_split_voxels`:
    merge.vote_splits (none if None, where min_voxels is given)."""
    tp = fp = fn = ptp = pfp = pfn = 0
    for i, (raw, _, _, _, labels, syn) in enumerate(examples):
        prob, vec = predictions[i] if predictions is not None else predict_volume(model, raw)
        table = None
        if tables is not None:
            key = (i, threshold, core_threshold)
            if key not in tables:
                tables[key] = cleft_table(prob, vec, labels, model.info, VOXEL_SIZE, threshold, raw, core_threshold)
            table = tables[key]
        rows = synapses_in_memory(prob, vec, labels, model.info, VOXEL_SIZE, threshold, min_voxels, raw=raw,
                                  classifier=classifier, table=table, edge_min_voxels=edge_min_voxels,
                                  core_min_voxels=core_min_voxels if core_threshold is not None else None,
                                  satellite_nm=satellite_nm, satellite_ratio=satellite_ratio,
                                  vote_split_voxels=vote_split_voxels)
        pred = np.stack([rows["z"], rows["y"], rows["x"]], 1)
        gt = np.stack([syn["z"], syn["y"], syn["x"]], 1)
        s = synapse_scores(pred, gt, TOLERANCE_NM, VOXEL_SIZE)
        tp, fp, fn = tp + s.true_positives, fp + s.false_positives, fn + s.false_negatives
        p = synapse_scores(pred, gt, TOLERANCE_NM, VOXEL_SIZE, np.stack([rows["pre"], rows["post"]], 1),
                           np.stack([syn["pre_id"], syn["post_id"]], 1))
        ptp, pfp, pfn = ptp + p.true_positives, pfp + p.false_positives, pfn + p.false_negatives

    def f1(t, a, b):
        return 2 * t / max(2 * t + a + b, 1)

    return {"detection_f1": f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
            "partner_f1": f1(ptp, pfp, pfn), "partners_right": ptp, "matched": tp}


def train(name: str, minutes: float, seed: int = 0, patch=(40, 40, 40), batch: int = 2, lr: float = 2e-3,
          train_seeds=range(100, 110), val_seeds=VAL_SEEDS, threads: int = 2, init: str | None = None,
          log=print) -> dict:
    """Train for `minutes` (continuing from the weights of model `init` if given), pick the threshold and
    minimum cleft size on the validation volumes, save `weights/{name}`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    examples = synthetic_examples(train_seeds)
    val = synthetic_examples(val_seeds)
    all_raw = np.concatenate([e[0].ravel() for e in examples]).astype(np.float64) / 255.0
    mean, std = float(all_raw.mean()), float(all_raw.std())
    config = dataclasses.replace(preset("iso"), norm="none")
    net = M.cleft_net(config)
    trained_before = 0
    if init:
        info = M.read_info(init)
        net.load_state_dict(torch.load(info.path, map_location="cpu", weights_only=True))
        mean, std = info.mean, info.std
        trained_before = int(info.provenance.get("iterations", 0))
    net = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # the fast CPU layout
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    margin = 6
    log(f"data ready in {time.perf_counter() - t0:.1f} s; {sum(len(e[5]) for e in examples)} training synapses")
    t_train = time.perf_counter()
    it = 0
    losses = []
    while time.perf_counter() - t_train < minutes * 60:
        items = [_patch(examples[rng.integers(len(examples))], patch, rng, near_cleft=rng.random() < 0.7)
                 for _ in range(batch)]
        x = torch.from_numpy(np.stack([i[0] for i in items])[:, None].copy())
        x = ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last_3d)
        c = torch.from_numpy(np.stack([i[1] for i in items]).astype(np.float32))
        v = torch.from_numpy(np.stack([i[2] for i in items]).astype(np.float32))
        k = torch.from_numpy(np.stack([i[3] for i in items]).astype(np.float32))
        frac = min(1.0, (time.perf_counter() - t_train) / (minutes * 60))
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))
        loss_c, loss_v = cleft_loss(net(x), c, v, k, margin)
        loss = loss_c + loss_v
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((loss_c.item(), loss_v.item()))
        it += 1
        if it % 50 == 0:
            lc, lv = np.mean(losses[-50:], axis=0)
            log(f"it {it} {time.perf_counter() - t_train:.0f} s  cleft {lc:.4f}  direction {lv:.4f}")
    train_s = time.perf_counter() - t_train
    provenance = {"data": f"synthetic {list(SHAPE)} at {list(VOXEL_SIZE)} nm, seeds {list(train_seeds)}, "
                          "8 synapses/um^3", "iterations": trained_before + it, "train_seconds": round(train_s, 1),
                  "patch": list(patch), "batch": batch}
    meta = {"voxel_size": list(VOXEL_SIZE), "normalisation": {"mean": mean, "std": std}, "vector_nm": VECTOR_NM,
            "threshold": 0.5, "min_voxels": 50, "partners": True}
    path = M.save(M.WEIGHTS_DIR / name, net, {**meta, "provenance": provenance})
    return tune(str(path), val_seeds, val, log)


def tune(name: str, val_seeds=VAL_SEEDS, val=None, log=print) -> dict:
    """Pick the model's rule by detection F1 on the validation volumes (ground-truth cells as the
    segmentation; ties: the first of the grid) and record it, with the scores, in its .json: first
    the threshold, minimum cleft size and minimum size of clefts cut by the volume's faces, then, at
    that threshold, the cores that split a cleft object (core threshold, core size) with the sizes,
    then, with those, the satellites' distance and size ratio with the sizes, then the vote split
    (merge.vote_splits) with the rule chosen so far."""
    import torch as _torch

    val = val if val is not None else synthetic_examples(val_seeds)
    model = M.load(name, "cpu")
    predictions = [predict_volume(model, e[0]) for e in val]
    best: tuple[dict, dict] | None = None
    tables: dict = {}

    def sizes(rule: dict) -> None:
        nonlocal best
        for min_voxels in MIN_VOXELS:
            for edge in (None, *(e for e in EDGE_MIN_VOXELS if e < min_voxels)):
                r_rule = {**rule, "min_voxels": min_voxels, "edge_min_voxels": edge}
                r = validate(model, val, predictions=predictions, tables=tables, **r_rule)
                log(f"{json.dumps(r_rule)}: {json.dumps(r)}")
                if best is None or r["detection_f1"] > best[1]["detection_f1"]:
                    best = (r_rule, r)

    plain = {"core_threshold": None, "core_min_voxels": None, "satellite_nm": None, "satellite_ratio": 0.2}
    for threshold in THRESHOLDS:
        sizes({**plain, "threshold": threshold})
    assert best is not None
    chosen = best[0]
    for core_threshold in (c for c in CORE_THRESHOLDS if c > chosen["threshold"]):
        for core_min in CORE_MIN_VOXELS:
            sizes({**plain, "threshold": chosen["threshold"], "core_threshold": core_threshold,
                   "core_min_voxels": core_min})
    chosen = best[0]
    for satellite_nm in SATELLITE_NM:
        for ratio in SATELLITE_RATIOS:
            sizes({**chosen, "satellite_nm": satellite_nm, "satellite_ratio": ratio})
    chosen = {**best[0], "vote_split_voxels": None}
    for split in VOTE_SPLIT_VOXELS:
        r_rule = {**chosen, "vote_split_voxels": split}
        r = validate(model, val, predictions=predictions, tables=tables, **r_rule)
        log(f"{json.dumps(r_rule)}: {json.dumps(r)}")
        if r["detection_f1"] > best[1]["detection_f1"]:
            best = (r_rule, r)
    rule, scores = best
    info = model.info
    meta = {"voxel_size": list(info.voxel_size), "normalisation": {"mean": info.mean, "std": info.std},
            "vector_nm": info.vector_nm, **rule, "partners": info.partners,
            "provenance": {**info.provenance, "validation_seeds": list(val_seeds), "validation": scores,
                           "tolerance_nm": TOLERANCE_NM}}
    net = M.cleft_net(info.config)
    net.load_state_dict(_torch.load(info.path, map_location="cpu", weights_only=True))
    M.save(info.path, net, meta)
    log(f"saved {info.path}: {json.dumps(meta)}")
    return meta


def load_runs(runs) -> list:
    """The cleft tables and ground truth of stored `connectome reconstruct` runs ((out_dir, synth_dir)
    pairs), read once for every rule `run_scores` tries."""
    from connectome.synapses.merge import load_fragment_tables
    from connectome.synth.volume import load_ground_truth

    return [(load_fragment_tables(os.path.join(out_dir, "tables", "cleft_fragments")), load_ground_truth(synth_dir))
            for out_dir, synth_dir in runs]


def run_scores(loaded: list, rule: dict, info: M.CleftModelInfo) -> tuple[int, int, int]:
    """Detection (true positives, false positives, misses) of stored runs (`load_runs`: their cleft
    tables on the affinity segmentation) under a size rule."""
    from connectome.synapses.interface import load_classifier
    from connectome.synapses.merge import synapse_rows

    clf = load_classifier(LINEAR_CLASSIFIER)
    tp = fp = fn = 0
    for t, gt in loaded:
        vs = gt.meta["voxel_size"]
        rows, _ = synapse_rows(t, rule["min_voxels"], vs, info.partners, True, clf, rule["edge_min_voxels"],
                               info.core_min_voxels, info.satellite_nm, info.satellite_ratio,
                               rule["vote_split_voxels"])
        s = synapse_scores(np.stack([rows["z"], rows["y"], rows["x"]], 1),
                           np.stack([gt.synapses["z"], gt.synapses["y"], gt.synapses["x"]], 1), TOLERANCE_NM, vs)
        tp, fp, fn = tp + s.true_positives, fp + s.false_positives, fn + s.false_negatives
    return tp, fp, fn


def tune_runs(name: str, runs, val_seeds=VAL_SEEDS, log=print) -> dict:
    """Re-choose a tuned model's size rules - the minimum of clefts cut by the volume's faces and the
    vote split - by detection F1 pooled over the validation volumes (ground-truth cells, in memory) and
    stored `connectome reconstruct` runs of other validation volumes made with this model (larger
    volumes, in blocks, on the affinity segmentation: `runs`, (out_dir, synth_dir) pairs); threshold,
    cores and satellites stay. Ties keep the model's own setting."""
    import torch as _torch

    model = M.load(name, "cpu")
    info = model.info
    val = synthetic_examples(val_seeds)
    predictions = [predict_volume(model, e[0]) for e in val]
    tables: dict = {}
    loaded = load_runs(runs)
    fixed: dict = {"threshold": info.threshold, "min_voxels": info.min_voxels, "core_threshold": info.core_threshold,
                   "core_min_voxels": info.core_min_voxels, "satellite_nm": info.satellite_nm,
                   "satellite_ratio": info.satellite_ratio}
    current = (info.edge_min_voxels, info.vote_split_voxels)
    grid = [current] + [(e, v) for e in sorted({*EDGE_MIN_VOXELS, 600, 1000, 1200}) if e < info.min_voxels
                        for v in (None, *VOTE_SPLIT_VOXELS) if (e, v) != current]
    best = None
    for edge, split in grid:
        rule = {**fixed, "edge_min_voxels": edge, "vote_split_voxels": split}
        r = validate(model, val, predictions=predictions, tables=tables, **rule)
        tp, fp, fn = run_scores(loaded, rule, info)
        tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        log(f"edge_min_voxels {edge}, vote_split_voxels {split}: validation volumes F1 {r['detection_f1']:.3f}, "
            f"pooled with the runs {f1:.3f} ({tp} found, {fp} extra, {fn} missed)")
        if best is None or f1 > best[0]:
            best = (f1, rule, r, (tp, fp, fn))
    assert best is not None
    f1, rule, r, (tp, fp, fn) = best
    meta = json.loads(Path(info.path).with_suffix(".json").read_text())
    meta.update(edge_min_voxels=rule["edge_min_voxels"], vote_split_voxels=rule["vote_split_voxels"])
    meta["provenance"] = {**meta.get("provenance", {}), "validation": r, "validation_runs": {
        "runs": [list(x) for x in runs], "pooled_detection_f1": f1, "tp": tp, "fp": fp, "fn": fn,
        "chosen": "edge_min_voxels and vote_split_voxels by pooled F1 (training.tune_runs)"}}
    net = M.cleft_net(info.config)
    net.load_state_dict(_torch.load(info.path, map_location="cpu", weights_only=True))
    M.save(info.path, net, {k: v for k, v in meta.items() if k not in ("format", "name", "architecture")})
    log(f"saved {info.path}: edge_min_voxels {rule['edge_min_voxels']}, vote_split_voxels {rule['vote_split_voxels']}")
    return meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="cleft-synthetic")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="continue from this cleft model's weights")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--tune-only", action="store_true", help="only pick the threshold, sizes and cores of --name")
    p.add_argument("--tune-runs", nargs=2, action="append", default=[], metavar=("OUT", "SYNTH"),
                   help="re-choose --name's face minimum and vote split, pooling the validation volumes with "
                        "these reconstruct runs (output directory, synthetic volume)")
    a = p.parse_args(argv)
    if a.tune_runs:
        tune_runs(a.name, [tuple(x) for x in a.tune_runs])
    elif a.tune_only:
        tune(a.name)
    else:
        train(a.name, a.minutes, a.seed, init=a.init, threads=a.threads)


if __name__ == "__main__":
    main()

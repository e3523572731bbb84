"""Synapse detection, partners, the graph and neurite types against ground truth, and detection speed.

Synthetic: held-out synthetic volumes (seeds never used in training) run through `connectome
reconstruct` (affinity segmentation, clefts, partners, types, graph; blockwise on a local cluster),
then scored: detection precision / recall / F1 (one-to-one matching within the tolerance), partner
accuracy (matched synapses whose predicted pre and post segments map, by largest overlap, to the true
pre and post cells; and, judged locally, whose pre and post are the segments that cover most of the
true pre and post cells within 100 nm of the synapse: segmentation merges elsewhere do not count), graph edges precision / recall / F1 (pre -> post pairs of mapped ids), neurite
type accuracy per class (truth: the majority compartment of each predicted segment). Also the same
detection with the ground-truth cells as the segmentation (partners without segmentation errors), with
the partner classifier (the default) and with the direction votes alone.

Real data (`--real vnc` / `--real epfl`): the test sections of a real set with a cleft mask, never used
to train or choose anything (connectome/synapses/real_training.py; VNC: sections 15-19, EPFL CA1: the 5
test slices, each a volume of its own) written as zarr and run through `connectome synapses` with the
set's cleft model (`cleft-sstem`, `cleft-fib`) blockwise on 1 and on 2 single-thread workers, with one
segment covering the volume (no segmentation of the real data exists: every cleft object is one
synapse); detection precision / recall / F1 against the ground-truth synapses (VNC: the 3-d objects of
`derived_synapses3d` cut to the test sections; EPFL: the 2-d components of each slice's PSD mask) within
100, 200 and 300 nm, and the clefts stage's voxels/s.

Usage: .venv/bin/python benchmarks/synapses.py [--seeds 500 501 502] [--shape 64 256 256] [--out DIR] [--threshold T]
       .venv/bin/python benchmarks/synapses.py --real vnc|epfl [--real-block 5 512 512] [--out DIR]
       .venv/bin/python benchmarks/synapses.py --real vnc|epfl --dark-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from connectome.io import open_volume
from connectome.metrics.contingency import Contingency
from connectome.metrics.synapses import synapse_scores
from connectome.metrics.voi import voi_from_table
from connectome.synapses.interface import load_classifier
from connectome.synapses.table import read_synapses

TOLERANCES_NM = (100.0, 200.0)
DENSITY = 8.0  # synapses per um^3 asked of the generator (its contacts and spacing allow fewer)


def _map(table: Contingency, ids: np.ndarray) -> np.ndarray:
    seg_ids, gt_ids = table.majority_gt()
    ids = np.asarray(ids, np.uint64)
    if not len(seg_ids):
        return np.zeros(ids.shape, np.uint64)
    at = np.minimum(np.searchsorted(seg_ids, ids), len(seg_ids) - 1)
    return np.where(seg_ids[at] == ids, gt_ids[at], np.uint64(0))


def _prf(tp, n_pred, n_true):
    p = tp / n_pred if n_pred else 1.0
    r = tp / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _local_segments(seg: np.ndarray, labels: np.ndarray, loc: np.ndarray, pairs: np.ndarray,
                    radius: int = 12) -> np.ndarray:
    """Per true synapse: the predicted segments that cover most of its true pre and post cells within
    `radius` voxels (about 100 nm) of it - the right answer for partner assignment, whatever the
    segmentation merged or split elsewhere."""
    out = np.zeros(pairs.shape, np.uint64)
    for i, (z, y, x) in enumerate(loc):
        win = tuple(slice(max(c - radius, 0), c + radius + 1) for c in (z, y, x))
        for k in range(2):
            ids, n = np.unique(seg[win][labels[win] == pairs[i, k]], return_counts=True)
            out[i, k] = ids[np.argmax(n)] if len(ids) else 0
    return out


def rerun_synapses(out: str, classifier: str) -> dict[str, np.ndarray]:
    """The synapse table of a stored run again from its cleft fragment tables, in memory, with its
    `synapses` stage as the run planned it (OUT/run.json) but pre partners chosen by `classifier`."""
    from connectome.engine.config import RunConfig
    from connectome.engine.plan import plan_run
    from connectome.synapses.merge import load_fragment_tables, synapse_rows

    with open(os.path.join(out, "run.json")) as f:
        config = RunConfig.model_validate(json.load(f))
    stages = [s.model_copy(update={"params": {**s.params, "partner_classifier": classifier}})
              if s.stage == "synapses" else s for s in config.stages]
    planned = [p.stage for p in plan_run(config.model_copy(update={"stages": stages})).stages]
    step = next(p for p in planned if p.name == "synapses").global_step()
    t = load_fragment_tables(step.tables_dir)
    rows, _ = synapse_rows(t, step.min_voxels, step.voxel_size, step.partners, step.split,
                           load_classifier(classifier), step.edge_min_voxels, step.core_min_voxels,
                           step.satellite_nm, step.satellite_ratio, step.vote_split_voxels)
    return rows


def score_run(out: str, synth_dir: str, partner_classifier: str | None = None) -> dict:
    """Scores of a stored run; with `partner_classifier`, of its synapse table chosen again with that
    classifier (`rerun_synapses`; the neurite types stay the run's)."""
    from connectome.neurites.classifier import CLASSES
    from connectome.neurites.training import true_classes
    from connectome.neurites.types import read_segments
    from connectome.synth.volume import load_ground_truth

    gt = load_ground_truth(synth_dir)
    vs = gt.meta["voxel_size"]
    labels_v = open_volume(os.path.join(synth_dir, "labels"))
    labels = labels_v.read(labels_v.box)
    seg_v = open_volume(os.path.join(out, "segmentation"))
    seg = seg_v.read(seg_v.box)
    comps_v = open_volume(os.path.join(synth_dir, "compartments"))
    comps = comps_v.read(comps_v.box)
    table = Contingency.from_arrays(seg, labels)
    syn = read_synapses(os.path.join(out, "synapses.csv")) if partner_classifier is None else \
        rerun_synapses(out, partner_classifier)
    pred = np.stack([syn["z"], syn["y"], syn["x"]], 1)
    true = np.stack([gt.synapses["z"], gt.synapses["y"], gt.synapses["x"]], 1)
    true_pairs = np.stack([gt.synapses["pre_id"], gt.synapses["post_id"]], 1).astype(np.uint64)
    split, merge = voi_from_table(table)
    res: dict = {"synapses_true": int(len(true)), "synapses_found": int(len(pred)),
                 "segmentation_voi": {"split": split, "merge": merge}}
    for tol in TOLERANCES_NM:
        s = synapse_scores(pred, true, tol, vs)
        mapped = np.stack([_map(table, syn["pre"]), _map(table, syn["post"])], 1)
        right = np.all(mapped[s.matched_pred] == true_pairs[s.matched_gt], axis=1)
        res[f"detection@{int(tol)}nm"] = {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                                          "tp": s.true_positives, "fp": s.false_positives, "fn": s.false_negatives}
        res[f"partner_accuracy@{int(tol)}nm"] = float(right.mean()) if len(right) else None
        local = np.all(np.stack([syn["pre"], syn["post"]], 1)[s.matched_pred]
                       == _local_segments(seg, labels, true[s.matched_gt], true_pairs[s.matched_gt]), axis=1)
        res[f"partner_accuracy_local@{int(tol)}nm"] = float(local.mean()) if len(local) else None
    # graph edges, in ground-truth ids
    ok = (syn["pre"] != 0) & (syn["post"] != 0)
    pe = {tuple(p) for p in np.stack([_map(table, syn["pre"][ok]), _map(table, syn["post"][ok])], 1).tolist()}
    te = {tuple(p) for p in true_pairs.tolist()}
    p, r, f = _prf(len(pe & te), len(pe), len(te))
    res["graph_edges"] = {"precision": p, "recall": r, "f1": f, "predicted": len(pe), "true": len(te)}
    # neurite types of the predicted segments
    segs = read_segments(os.path.join(out, "segments.csv"))
    known = segs["class"] != "unknown"
    truth = true_classes(seg, comps, segs["id"][known])
    predicted = np.array([CLASSES.index(c) for c in segs["class"][known]])
    keep = truth >= 0
    m = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    np.add.at(m, (truth[keep], predicted[keep]), 1)
    size = segs["size_voxels"][known][keep]
    right = truth[keep] == predicted[keep]
    big = size >= 1000  # segments of at least 1000 voxels (0.5 um^3)
    res["types"] = {"accuracy": float(np.trace(m) / max(m.sum(), 1)),
                    "accuracy_by_voxels": float(size[right].sum() / max(size.sum(), 1)),
                    "accuracy_segments_over_1000_voxels": float(right[big].mean()) if big.any() else None,
                    "segments_over_1000_voxels": int(big.sum()),
                    "per_class_recall": {c: (float(m[i, i] / m[i].sum()) if m[i].sum() else None)
                                         for i, c in enumerate(CLASSES)},
                    "confusion_rows_truth_cols_predicted": m.tolist()}
    return res


def gt_segmentation_scores(synth_dir: str, model: str = "cleft-synthetic") -> dict:
    """Detection and partners with the ground-truth cells as the segmentation (one block, in memory)."""
    from connectome.io import open_volume
    from connectome.synapses import model as M
    from connectome.synapses.detect import predict_volume, synapses_in_memory
    from connectome.synapses.interface import DEFAULT_CLASSIFIER
    from connectome.synth.volume import load_ground_truth

    gt = load_ground_truth(synth_dir)
    raw_v = open_volume(os.path.join(synth_dir, "raw"))
    lab_v = open_volume(os.path.join(synth_dir, "labels"))
    m = M.load(model, "cpu")
    raw = raw_v.read(raw_v.box)
    prob, vec = predict_volume(m, raw)
    out = {}
    for name, classifier in (("classifier", DEFAULT_CLASSIFIER), ("votes", None)):
        rows = synapses_in_memory(prob, vec, lab_v.read(lab_v.box), m.info, gt.meta["voxel_size"], raw=raw,
                                  classifier=classifier)
        pred = np.stack([rows["z"], rows["y"], rows["x"]], 1)
        true = np.stack([gt.synapses["z"], gt.synapses["y"], gt.synapses["x"]], 1)
        s = synapse_scores(pred, true, 200.0, gt.meta["voxel_size"])
        pairs = np.stack([rows["pre"], rows["post"]], 1).astype(np.uint64)
        tp = np.stack([gt.synapses["pre_id"], gt.synapses["post_id"]], 1).astype(np.uint64)
        right = np.all(pairs[s.matched_pred] == tp[s.matched_gt], axis=1)
        out[name] = {"detection@200nm_f1": s.f1, "tp": s.true_positives, "fp": s.false_positives,
                     "fn": s.false_negatives, "partner_accuracy": float(right.mean()) if len(right) else None}
    return out


def cli_json(args: list[str]) -> dict:
    """Run `connectome ARGS` in this process and return the JSON object it prints; stop on failure."""
    import contextlib
    import io

    from connectome.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args)
    if rc:
        raise SystemExit(f"connectome {' '.join(args)} failed ({rc})")
    return json.loads(buf.getvalue())


def run_synthetic(seed: int, shape, work: str, block, model: str | None = None,
                  threshold: float | None = None) -> dict:
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions

    synth_dir = os.path.join(work, f"synth-{seed}")
    if not os.path.exists(os.path.join(synth_dir, "ground_truth")):
        generate(shape, (8.0, 8.0, 8.0), seed=seed, tissue=TissueOptions(synapses_per_um3=DENSITY)).save(
            synth_dir, chunk_shape=block)
    out = os.path.join(work, f"out-{seed}")
    t = time.perf_counter()
    args = ["reconstruct", os.path.join(synth_dir, "raw"), out, "--block-shape", *map(str, block), "--json",
            "--no-progress", *(["--model", model] if model else []),
            *(["--threshold", str(threshold)] if threshold is not None else [])]
    result = cli_json(args)
    seconds = time.perf_counter() - t
    stages = {s["stage"]: s["seconds"] for s in result["stages"]}
    voxels = int(np.prod(shape))
    res = {"seed": seed, "shape": list(shape), "seconds": round(seconds, 1),
           "clefts_stage_s": stages.get("clefts"), "detection_voxels_per_s": round(voxels / stages["clefts"])
           if stages.get("clefts") else None, "summary": result["summary"], **score_run(out, synth_dir),
           "gt_segmentation": gt_segmentation_scores(synth_dir)}
    return res


REAL_MODELS = {"vnc": "cleft-sstem", "epfl": "cleft-fib"}
REAL_BLOCKS = {"vnc": (5, 512, 512), "epfl": (1, 384, 512)}


def run_real(data: str, work: str, block=None, workers=(1, 2), model: str | None = None) -> dict:
    """Detection on a real set's test sections through `connectome synapses` (each separate slice a
    volume of its own), scored and timed."""

    from connectome.io import create_volume
    from connectome.synapses.real_training import DATASETS, load, pieces, synapse_points

    model = model or REAL_MODELS[data]
    block = tuple(block or REAL_BLOCKS[data])
    ds = DATASETS[data]
    raw, _, objects = load(data, "test")
    parts = pieces(data, raw, objects)
    gts = [synapse_points(o) for _, o in parts]
    res: dict = {"data": data, "model": model, "test": f"{ds.test.raw} sections {list(ds.test.sections)}",
                 "volumes": len(parts), "shape": list(parts[0][0].shape), "voxel_size": list(ds.voxel_size),
                 "block": list(block), "true_synapses": sum(len(g) for g in gts), "runs": []}
    addrs = []
    for i, (r, _) in enumerate(parts):
        addr = {"raw": os.path.join(work, f"{data}-test", str(i), "raw"),
                "seg": os.path.join(work, f"{data}-test", str(i), "one_segment")}
        chunk = tuple(min(b, s) for b, s in zip(block, r.shape))
        for key, arr in (("raw", r), ("seg", np.ones(r.shape, np.uint32))):
            if not os.path.exists(addr[key]):
                vol = create_volume(addr[key], r.shape, arr.dtype, chunk, ds.voxel_size)
                vol.write(vol.box, arr)
        addrs.append(addr)
    preds: list[list[np.ndarray]] = []
    for n in workers:
        clefts_s = seconds = 0.0
        found = []
        for i, addr in enumerate(addrs):
            tag = "" if model == REAL_MODELS[data] else "-" + os.path.basename(model).removesuffix(".pt")
            out = os.path.join(work, f"{data}{tag}-out-w{n}", str(i))
            args = ["synapses", addr["raw"], out, "--segmentation", addr["seg"], "--model", model,
                    "--block-shape", *map(str, block), "--workers", str(n), "--json", "--no-progress",
                    "--no-types"]  # the type classifier knows 8 nm synthetic tissue only
            result = cli_json(args)
            clefts_s += {s["stage"]: s["seconds"] for s in result["stages"]}["clefts"]
            seconds += result["seconds"]
            t = read_synapses(result["synapses"])
            found.append(np.stack([t["z"], t["y"], t["x"]], 1))
        res["runs"].append({"workers": n, "threads_per_worker": 1, "clefts_stage_s": round(clefts_s, 1),
                            "detection_voxels_per_s": round(raw.size / clefts_s), "seconds": round(seconds, 1),
                            "command": "connectome " + " ".join(args)})
        preds.append(found)
    res["found"] = sum(len(p) for p in preds[0])
    res["same_table_every_run"] = all(np.array_equal(a, b) for p in preds for a, b in zip(p, preds[0]))
    for tol in (100.0, 200.0, 300.0):
        tp = fp = fn = 0
        for pred, gt in zip(preds[0], gts):
            sc = synapse_scores(pred, gt, tol, ds.voxel_size)
            tp, fp, fn = tp + sc.true_positives, fp + sc.false_positives, fn + sc.false_negatives
        p, r, f1 = _prf(tp, tp + fp, tp + fn)
        res[f"detection@{tol:.0f}nm"] = {"precision": round(p, 3), "recall": round(r, 3), "f1": round(f1, 3),
                                         "tp": tp, "fp": fp, "fn": fn}
    return res


def dark_baseline(data: str, sigma: float = 4.0) -> dict:
    """A detector that knows only that clefts are dark: cleft probability = darkness of the image smoothed
    by `sigma` voxels in plane (0 at the median, 1 at the 0.5th percentile), threshold and minimum size
    chosen on the tuning sections by the same grid and rule as the trained models, scored on the test
    sections (in memory, detection as `connectome synapses` does it): what a trained model has to beat."""
    from scipy.ndimage import gaussian_filter

    from connectome.models.unet import UNetConfig
    from connectome.synapses.model import CleftModelInfo
    from connectome.synapses.real_training import DATASETS, detect, load, pieces, synapse_points, tune_detection

    ds = DATASETS[data]
    info = CleftModelInfo("dark", UNetConfig(), ds.voxel_size, 0.5, 0.2, 80.0, 0.5, 1, partners=False)

    def dark(raw):
        sm = np.stack([gaussian_filter(s.astype(np.float32), sigma) for s in raw])
        lo, hi = np.percentile(sm, [0.5, 50])
        return (np.clip((hi - sm) / (hi - lo), 0, 1) * 255).astype(np.uint8)

    raw, _, obj = load(data, "tune")
    best = tune_detection([(dark(r), o) for r, o in pieces(data, raw, obj)], info, ds.voxel_size)
    raw, _, obj = load(data, "test")
    tp = fp = fn = 0
    for r, o in pieces(data, raw, obj):
        sc = synapse_scores(detect(dark(r), info, ds.voxel_size, best["threshold"], best["min_voxels"]),
                            synapse_points(o), 200.0, ds.voxel_size)
        tp, fp, fn = tp + sc.true_positives, fp + sc.false_positives, fn + sc.false_negatives
    p, r, f1 = _prf(tp, tp + fp, tp + fn)
    return {"data": data, "dark_baseline": {"tuning": best, "test@200nm": {
        "precision": round(p, 3), "recall": round(r, 3), "f1": round(f1, 3), "tp": tp, "fp": fp, "fn": fn}}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", nargs="+", type=int, default=[500, 501, 502])
    p.add_argument("--shape", nargs=3, type=int, default=[64, 256, 256])
    p.add_argument("--block", nargs=3, type=int, default=[32, 128, 128])
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--score-only", action="store_true", help="score the outputs already in --out")
    p.add_argument("--partner-classifier", default=None,
                   help="with --score-only: choose the stored runs' pre partners again with this classifier")
    p.add_argument("--real", choices=sorted(REAL_MODELS), default=None,
                   help="score a real set's test sections instead (blocks: --real-block, default per set)")
    p.add_argument("--real-block", nargs=3, type=int, default=None)
    p.add_argument("--cleft-model", default=None, help="with --real: another cleft model (name or .pt path) than "
                   "the shipped one of the set")
    p.add_argument("--dark-baseline", action="store_true", help="with --real: score the darkness baseline only")
    p.add_argument("--model", default=None, help="affinity model of the synthetic runs (default: reconstruct's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="segmentation merge threshold of the synthetic runs (default: reconstruct's)")
    a = p.parse_args(argv)
    if a.partner_classifier and not a.score_only:
        p.error("--partner-classifier re-scores stored runs: it needs --score-only")
    if a.cleft_model and (not a.real or a.dark_baseline):
        p.error("--cleft-model is for --real runs (not --dark-baseline)")
    if a.real and a.dark_baseline:
        print(json.dumps(dark_baseline(a.real)), flush=True)
        return
    if a.real:
        os.environ["OMP_NUM_THREADS"] = "1"  # one thread per worker process
        work = a.out or tempfile.mkdtemp(prefix="synapse-real-")
        r = {"machine": f"{platform.node()} {os.cpu_count()} cores", **run_real(a.real, work, a.real_block,
                                                                                 model=a.cleft_model)}
        print(json.dumps(r), flush=True)
        return
    if a.score_only:
        for seed in a.seeds:
            r = score_run(os.path.join(a.out, f"out-{seed}"), os.path.join(a.out, f"synth-{seed}"),
                          a.partner_classifier)
            print(json.dumps({"seed": seed, **r}), flush=True)
        return
    work = a.out or tempfile.mkdtemp(prefix="synapse-bench-")
    results = {"machine": f"{platform.node()} {os.cpu_count()} cores", "runs": []}
    for seed in a.seeds:
        r = run_synthetic(seed, tuple(a.shape), work, tuple(a.block), a.model, a.threshold)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

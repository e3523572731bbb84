"""Tissue classes: quality on the held-out splits and CPU throughput of the shipped model.

Quality (the model as the stage runs it: float64, mirrored faces, argmax):
- synthetic seed 901 (the validation volume, 8 x 512 x 512 at 40 x 5 x 5 nm) and seed 902 (the
  unseen volume of tests/tissue/test_tissue_stage.py, 4 x 512 x 512): every class labelled;
- VNC stack 1 sections 16-19 (never trained on): neuropil / glia-extracellular / mitochondrion
  (membrane and junction pixels, which may border any of them, are left out);
- EPFL CA1 test slices (never trained on): mitochondrion against the rest.
Per class: precision, recall and IoU over the pixels whose truth is one class, a confusion matrix
(rows truth, columns prediction), and the fraction of pixels the default mask would exclude.
Throughput: voxels per second of the network on a 8 x 512 x 512 synthetic volume, 1 and 2 threads.

Run: .venv/bin/python benchmarks/tissue.py [--model tissue] [--data ../shared/data]
Records benchmarks/results/tissue.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scores(truth: np.ndarray, pred: np.ndarray, classes: list[int], n: int) -> tuple[np.ndarray, list[dict]]:
    """Confusion matrix (truth rows over `classes`, prediction columns over all n) and per-class scores."""
    keep = np.isin(truth, classes)
    conf = np.zeros((n, n), np.int64)
    np.add.at(conf, (truth[keep].astype(np.int64), pred[keep].astype(np.int64)), 1)
    rows = []
    for c in classes:
        tp = conf[c, c]
        fp = conf[:, c].sum() - tp
        fn = conf[c].sum() - tp
        rows.append({"class": c, "pixels": int(conf[c].sum()), "precision": tp / max(tp + fp, 1),
                     "recall": tp / max(tp + fn, 1), "iou": tp / max(tp + fp + fn, 1)})
    return conf, rows


def evaluate(name: str, raw: np.ndarray, truth: np.ndarray, classes: list[int], net, info, lines: list[str]) -> dict:
    from connectome.tissue import classes as T
    from connectome.tissue.predict import classify_volume

    t = time.perf_counter()
    pred = classify_volume(net, info, raw)
    seconds = time.perf_counter() - t
    conf, rows = scores(truth, pred, classes, T.N_CLASSES)
    excluded = np.isin(pred, [T.code_of(c) for c in T.DEFAULT_EXCLUDE])
    lines += [f"### {name}", "", f"{raw.shape[0]} x {raw.shape[1]} x {raw.shape[2]} voxels, classified in "
              f"{seconds:.1f} s.", "", "| class | pixels | precision | recall | IoU |", "|---|---|---|---|---|"]
    lines += [f"| {T.NAMES[r['class']]} | {r['pixels']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['iou']:.3f} |"
              for r in rows]
    lines += ["", "Confusion matrix (rows: truth; columns: predicted class; pixels):", "",
              "| truth \\ predicted | " + " | ".join(T.NAMES) + " |", "|---" * (T.N_CLASSES + 1) + "|"]
    lines += [f"| {T.NAMES[c]} | " + " | ".join(str(v) for v in conf[c]) + " |" for c in classes]
    lines += ["", f"Excluded by the default mask ({', '.join(T.DEFAULT_EXCLUDE)}): {excluded.mean():.2%} of all "
              f"pixels; of the pixels whose truth is not an excluded class: "
              f"{excluded[np.isin(truth, [c for c in classes if T.NAMES[c] not in T.DEFAULT_EXCLUDE])].mean():.2%}.", ""]
    return {r["class"]: r for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tissue.md"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from connectome.synth import Defects, TissueOptions, generate
    from connectome.tissue import classes as T
    from connectome.tissue import sources as S
    from connectome.tissue.model import load_model
    from connectome.tissue.predict import classify_volume

    torch.set_num_threads(2)
    net, info = load_model(args.model)
    prov = info.provenance
    lines = ["# Tissue classes", "", f"Model `{args.model}` ({info.path}), trained by: `{prov.get('command')}`; "
             f"checkpoint of iteration {prov.get('iteration')} ({prov.get('training_minutes', 0):.1f} min of training). "
             f"Receptive field {info.config.radius[1]} px each side in-plane (context {info.context[1]} px), "
             f"2-d (per section). Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}.",
             "", "Command: `.venv/bin/python benchmarks/tissue.py`", "", "## Quality on held-out data", ""]
    everything = list(range(T.N_CLASSES))
    for seed, shape in ((S.VAL_SEED, S.SYNTH_SHAPE), (902, (4, 512, 512))):
        v = generate(shape, S.SYNTH_VOXEL, seed=seed, defects=Defects(missing=True),
                     tissue=None if seed == 902 else TissueOptions(myelinated_axons=2))
        truth = np.log2(S.synth_target(v.tissue, v.organelles, v.compartments)).astype(np.uint8)
        label = "validation" if seed == S.VAL_SEED else "unseen, default tissue options (as in the test)"
        evaluate(f"synthetic seed {seed} ({label})", v.raw, truth, everything, net, info, lines)
    if S.real_data_available(args.data):
        d = np.load(os.path.join(args.data, S.VNC_FILE))
        nine = d["labels_9class"][S.VNC_VAL[0]:S.VNC_VAL[1]]
        truth = np.full(nine.shape, 255, np.uint8)
        truth[np.isin(nine, (223, 255))] = T.NEUROPIL
        truth[nine == 159] = T.GLIA
        truth[nine == 191] = T.MITOCHONDRION
        evaluate("VNC stack 1, sections 16-19 (membranes and junctions left out)",
                 d["raw"][S.VNC_VAL[0]:S.VNC_VAL[1]], truth, [T.NEUROPIL, T.GLIA, T.MITOCHONDRION], net, info, lines)
        e = np.load(os.path.join(args.data, S.EPFL_FILE))
        mito = e["test_mitochondrion"]
        pred_lines: list[str] = []
        raw = e["test_raw"]
        pred = classify_volume(net, info, raw)
        conf, rows = scores(mito.astype(np.uint8), (pred == T.MITOCHONDRION).astype(np.uint8), [0, 1], 2)
        r = rows[1]
        excluded = np.isin(pred, [T.code_of(c) for c in T.DEFAULT_EXCLUDE]).mean()
        pred_lines += ["### EPFL CA1, the 5 test slices (mitochondrion against the rest)", "",
                       "| class | pixels | precision | recall | IoU |", "|---|---|---|---|---|",
                       f"| mitochondrion | {r['pixels']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['iou']:.3f} |",
                       "", f"Confusion (rows truth not-mito / mito, columns predicted not-mito / mito): "
                           f"{conf[0].tolist()} / {conf[1].tolist()}. Predicted classes of the not-mitochondrion "
                           f"pixels: " + ", ".join(f"{T.NAMES[c]} {np.mean(pred[~mito] == c):.2%}"
                                                    for c in range(T.N_CLASSES)) + ".",
                       f"Excluded by the default mask: {excluded:.2%} of all pixels (CA1 neuropil: all false).", ""]
        lines += pred_lines
    else:
        lines += [f"(real data not found at {args.data}: VNC and EPFL not scored)", ""]

    lines += ["## CPU throughput", "", "The network as the stage runs it, on a synthetic 8 x 512 x 512 volume, the "
              "mirrored context (80 px each side) included in the work (classify_volume). float64 is the default "
              "(blockwise == one block exactly); float32 (`--precision float32`) is faster. The machine was shared "
              "with other jobs (load average 4-8 on 2 cores), so these are lower bounds: 2 threads ran slower "
              "than 1 here, the second core being busy.", "", "| precision | threads | seconds | voxels/s |", "|---|---|---|---|"]
    v = generate((8, 512, 512), S.SYNTH_VOXEL, seed=905)
    codes = {}
    for precision in ("float64", "float32"):
        net_p, _ = load_model(args.model, precision)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            classify_volume(net_p, info, v.raw[:1])
            t = time.perf_counter()
            codes[precision] = classify_volume(net_p, info, v.raw)
            s = time.perf_counter() - t
            lines.append(f"| {precision} | {threads} | {s:.2f} | {v.raw.size / s:,.0f} |")
    differ = int(np.count_nonzero(codes["float32"] != codes["float64"]))
    lines += ["", f"float32 and float64 classes differ on {differ} of {v.raw.size} voxels ({differ / v.raw.size:.4%}).",
              ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

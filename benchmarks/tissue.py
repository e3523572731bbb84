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

`--sections LABEL` instead appends one section to that file: real serial sections as the tissue stage
meets them after `connectome align` and on uneven staining (ISBI 2012 train sections 0, 10, 20, which
hold no myelin and no vessel): each section dimmed (x0.6, x0.4, x0.3, x0.15 + 30) against the section
itself; shifted by whole pixels and rotated by 3 degrees with exact-zero margins, as an alignment's warp
leaves them, against the unshifted section; and the mean balanced set-accuracy on the held-out VNC
sections 16-19 and EPFL CA1 test slices (as `connectome train tissue` validates).
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


BAD = (1, 2, 3)  # vessel, soma/nucleus, myelin: classes an alignment margin's edge must not create


def shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`a` moved by (dy, dx) whole pixels, exact zeros where nothing was imaged (as `align` leaves margins)."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def sections_report(label: str, data: str, net, info, lines: list[str]) -> None:
    """Dim, shifted and rotated real sections (see the module docstring), one table each."""
    from scipy import ndimage as ndi

    from connectome.tissue import classes as T
    from connectome.tissue import sources as S
    from connectome.tissue.predict import classify_volume

    raw = np.load(os.path.join(data, "isbi2012", "isbi2012.npz"))["train_raw"][[0, 10, 20]]
    t0 = time.perf_counter()
    base = classify_volume(net, info, raw)
    lines += [f"### {label}", "", "Dimmed sections (ISBI train 0, 10, 20; 3 x 512 x 512), against the same sections "
              "undimmed:", "", "| intensity | defect | myelin, vessel or soma | same class as undimmed |",
              "|---|---|---|---|", f"| x1 (as imaged) | {np.mean(base == T.DEFECT):.2%} | "
              f"{np.isin(base, BAD).mean():.2%} | 100% |"]
    for gain, offset in ((0.6, 0), (0.4, 0), (0.3, 0), (0.15, 30)):
        dim = np.clip(np.rint(raw * gain + offset), 0, 255).astype(np.uint8)
        pred = classify_volume(net, info, dim)
        lines.append(f"| x{gain}{f' + {offset}' if offset else ''} | {np.mean(pred == T.DEFECT):.2%} | "
                     f"{np.isin(pred, BAD).mean():.2%} | {np.mean(pred == base):.2%} |")
    rng = np.random.default_rng(0)
    for sigma in (2, 4, 8):
        blank = np.clip(np.rint(128 + rng.normal(0, sigma, raw.shape)), 0, 255).astype(np.uint8)
        pred = classify_volume(net, info, blank)
        lines.append(f"| blank frame, grey 128 + noise sigma {sigma} (not tissue) | {np.mean(pred == T.DEFECT):.2%} | "
                     f"{np.isin(pred, BAD).mean():.2%} | |")
    lines += ["", "Margins (exact zeros) as an alignment leaves them; 'near the edge' = imaged pixels within 8 px of "
              "the margin; 'new' = myelin, vessel or soma where the unmoved section had none (ISBI holds no myelin):",
              "", "| section(s) | margin pixels | labelled defect | labelled myelin | new myelin/vessel/soma near the edge "
              "| myelin anywhere in the imaged part | same class as unmoved (imaged part) |", "|---|---|---|---|---|---|---|"]
    for dy, dx in ((24, -31), (-40, 17), (6, 9)):
        pred = classify_volume(net, info, shifted(raw, dy, dx))
        ref = shifted(base, dy, dx)
        imaged = shifted(np.ones_like(raw), dy, dx).astype(bool)
        near = imaged & np.stack([ndi.distance_transform_edt(m) <= 8 for m in imaged])
        new = near & np.isin(pred, BAD) & ~np.isin(ref, BAD)
        lines.append(f"| shifted ({dy}, {dx}) | {np.count_nonzero(~imaged)} | {np.mean(pred[~imaged] == T.DEFECT):.1%} | "
                     f"{np.mean(pred[~imaged] == T.MYELIN):.1%} | {np.count_nonzero(new)} of {np.count_nonzero(near)} | "
                     f"{np.count_nonzero((pred == T.MYELIN) & imaged)} | {np.mean(pred[imaged] == ref[imaged]):.2%} |")
    rot = np.stack([ndi.rotate(s, 3.0, reshape=False, order=1, mode="constant", cval=0) for s in raw])
    ones = np.stack([ndi.rotate(np.full(s.shape, 255, np.uint8), 3.0, reshape=False, order=1, mode="constant",
                                cval=0) for s in raw])
    pred = classify_volume(net, info, rot)
    ref = np.stack([ndi.rotate(b, 3.0, reshape=False, order=0, mode="constant", cval=T.DEFECT) for b in base])
    imaged = ones == 255  # fully imaged pixels; the interpolation fringe (partly zero) is neither
    margin = ones == 0
    near = imaged & np.stack([ndi.distance_transform_edt(~m) <= 8 for m in margin])
    new = near & np.isin(pred, BAD) & ~np.isin(ref, BAD)
    lines += [f"| rotated 3 degrees (bilinear, zero fill) | {np.count_nonzero(margin)} | "
              f"{np.mean(pred[margin] == T.DEFECT):.1%} | {np.mean(pred[margin] == T.MYELIN):.1%} | "
              f"{np.count_nonzero(new)} of {np.count_nonzero(near)} | {np.count_nonzero((pred == T.MYELIN) & imaged)} | "
              f"{np.mean(pred[imaged] == ref[imaged]):.2%} |", ""]
    scores_ = []
    for s in (S.vnc(data, S.VNC_VAL), S.epfl(data, "test")):
        pred = classify_volume(net, info, s.raw)
        allowed = (s.target >> pred) & 1
        recall = [float(allowed[s.target == v].mean()) for v in np.unique(s.target) if v]
        scores_.append(f"{s.name}: {np.mean(recall):.4f}")
    lines += ["Held-out balanced set-accuracy (mean over label sets of the fraction of pixels predicted inside the "
              "set, float64 as the stage runs): " + "; ".join(scores_) + ".", "",
              f"({time.perf_counter() - t0:.0f} s)", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tissue.md"))
    parser.add_argument("--sections", metavar="LABEL", help="append the dim/shifted/rotated real-section figures "
                                                            "under this heading instead of rewriting --out")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.sections:
        import torch

        from connectome.tissue.model import load_model

        torch.set_num_threads(2)
        net, info = load_model(args.model)
        sec_lines: list[str] = []
        sections_report(args.sections, args.data, net, info, sec_lines)
        with open(args.out, "a") as f:
            f.write("\n".join(sec_lines) + "\n")
        print("\n".join(sec_lines))
        return 0
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

"""Quality of every shipped affinity model on the validation split of every real data set.

Each (set, model) pair whose voxel sizes agree within the `affinities` stage's tolerance (a factor
1.5 per axis) is segmented by the real `connectome segment` command at its defaults (block shape,
the model's validated threshold and scoring) and scored by `connectome evaluate --json`
(`--per-section` for ISBI 2012, whose labels are 2-D). Sets (held out from training of the
models that were trained on them):
- medulla z 100-124 (fib-10nm's validation split), 10 nm;
- gala test crop (never trained on), 10 nm;
- CREMI crop z 40-49 in its recovered section order (`sstem`'s validation split; the stored file's
  sections are shuffled, see benchmarks/cremi_section_order.py, which this script runs first), 40 x 4 x 4
  nm, dense 3-D labels;
- the same ten CREMI sections in their stored order (stored z 17, 18, 20, 24, 28, 30, 31, 32, 33, 49): what a user
  with a shuffled stack gets, `segment` recovering the order from the images (`--section-order auto`);
- ISBI 2012 train z 25-29 (sstem's validation split), 50 x 4 x 4 nm, scored per section.
Writes benchmarks/results/quality.md (with `--tta N`: segment's test-time augmentation, quality_ttaN.md). Usage:
    .venv/bin/python benchmarks/quality.py [--models NAME ...] [--sets NAME ...] [--tta N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from connectome.core.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "connectome.cli"]

# name, raw address, gt address, voxel size (nm, z y x), per-section scoring, quality target (VOI)
SETS = [
    ("medulla val z100-124", "flyem_medulla_fib_train/medulla_train.npz#raw[100:125]",
     "flyem_medulla_fib_train/medulla_train.npz#neuron_ids[100:125]", (10.0, 10.0, 10.0), False, 0.8),
    ("gala test", "gala_fib_crops/gala_fib.npz#test_raw", "gala_fib_crops/gala_fib.npz#test_gt",
     (10.0, 10.0, 10.0), False, 0.45),
    ("CREMI crop reordered z40-49", "{cremi_reordered}#raw[40:50]",
     "{cremi_reordered}#neuron_ids[40:50]", (40.0, 4.0, 4.0), False, 1.0),
    ("CREMI crop as stored, the same sections", "{cremi_stored}#raw", "{cremi_stored}#neuron_ids",
     (40.0, 4.0, 4.0), False, 1.0),
    ("ISBI train z25-29 (per section)", "isbi2012/isbi2012.npz#train_raw[25:30]",
     "isbi2012/isbi2012.npz#derived_train_cells2d[25:30]", (50.0, 4.0, 4.0), True, 0.4),
]


NOTES = [
    "",
    "Notes",
    "- The CREMI crop's 50 sections are stored out of physical order (`shared/data/cremi_sstem_crop`): consecutive "
    "sections share a neuron id on 19 % of their voxels (83 % in the order recovered from the labels by "
    "`benchmarks/cremi_section_order.py`; raw correlation 0.09 vs 0.70). This table scores z 40-49 of the "
    "recovered order (stored z 17, 31, 49, 33, 20, 28, 30, 32, 18, 24), the validation split of `sstem`, which "
    "trained on z 0-39 of it. Its 6-connected ground-truth components alone score split 0.318; one single "
    "segment scores VOI 4.344.",
    "- 'CREMI crop as stored, the same sections' is that split's ten sections in their stored order, as a user "
    "with a shuffled stack would give them. `connectome segment` (`--section-order auto`, since 2026-12-05) finds "
    "them out of order from the images, segments them in the order it recovers (here the labels' order "
    "reversed) and writes the segmentation in the stored order; with `--section-order keep` they scored 3.853 "
    "(2.093 + 1.760) on 2026-12-05. Its ERL is not comparable: the ground truth's skeletons run through the "
    "shuffled sections.",
    "- `sstem` (3-D labels: the reordered CREMI crop z 0-39, with ISBI z 0-24 and VNC as per-section labels) chose "
    "its threshold on that CREMI split; `sstem-2d` (ISBI + VNC, 2-D labels only; its z affinity is derived from "
    "the in-plane ones) is the model shipped as `sstem` before, and `connectome segment` warns when it is used. "
    "`sstem` cuts fragments within sections (`in_plane`, since 2026-12-01: CREMI 3.022 -> 2.919, ISBI 2.408 -> "
    "1.820). `fib-10nm` and `sstem` average four flipped predictions (`tta` 4 in their json, chosen on these "
    "splits; benchmarks/results/tta.md) and every model predicts with `--precision auto` (the first line says "
    "what that was on this machine; bfloat16 and float32 differ by up to 0.3 on ISBI, benchmarks/results/tta.md).",
    "- ISBI is scored per section as 2-D segmentations (`evaluate --per-section`, since 2026-12-07): segments and "
    "ground-truth profiles as their connected pieces within each section, as the 2-D labels and the ISBI 2012 "
    "challenge count objects; before, a 3-D segment holding two profiles of a section was a merge there even where "
    "right (`--whole-segments` scores so: sstem 0.858 against 0.698 on 2026-12-07, README 'Per-section scoring').",
    "- `synthetic` was trained on synthetic volumes only; it is listed because its voxel size fits. Since "
    "2026-12-01 it merges by its own edge classifier (`synthetic-edges.json`, threshold 0.3; before: medulla "
    "4.273, gala 1.340).",
    "- `fib-10nm` and `sstem` are, since 2026-12-05 (session 39), the previous weights fine-tuned 3 minutes each on "
    "a lent NVIDIA H100 (benchmarks/results/gpu_session.md), each with its edge classifier refitted on its four-flip "
    "affinities. `fib-10nm` merges by its classifier's p(merge) (learned scoring; five fits averaged, the "
    "affinities' and, since 2026-12-07, the EM image's features, threshold 0.45 from `fib-10nm-edges.json`, chosen on "
    "medulla z 75-99); `synthetic` likewise by its own; `sstem` by its own "
    "(`sstem-edges.json`, fragments up to 128 px scored, five fits averaged, trained on CREMI z 0-39 and its "
    "threshold 0.35 chosen on z 40-49, this table's split); `sstem-2d` by mean affinity, one edge at a time in a "
    "strict order (score, contact count, segment ids). Learned against mean scoring: "
    "benchmarks/results/learned_agglomeration.md.",
    "- The CREMI rows move by up to 0.3 with the arithmetic alone (the previous `sstem` scored CREMI recovered 2.586 "
    "in bfloat16 on an AMD EPYC, 2.868 in bfloat16 on an Intel Xeon with AMX and 2.547 in float32 there): a few "
    "large merges flip. Compare models on one machine and at one precision (benchmarks/results/gpu_session.md).",
]


def _auto_precision() -> str:
    """What `--precision auto` means on this machine (bfloat16 needs native support on a CPU)."""
    import torch

    from connectome.models.inference import resolve_precision

    return resolve_precision("auto", torch.device("cpu"))


def cli(*args: str) -> tuple[dict, str]:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def fitting_models(voxel_size) -> list[str]:
    from connectome.models.registry import available_models, read_info, resolve_model_path
    from connectome.models.voxel_size import VOXEL_TOLERANCE

    names = []
    for name in available_models():
        if name.startswith("ffn"):
            continue
        try:
            info = read_info(resolve_model_path(name))
        except (KeyError, ValueError):  # not an affinity U-Net's json
            continue
        if all(1 / VOXEL_TOLERANCE <= d / m <= VOXEL_TOLERANCE for d, m in zip(voxel_size, info.voxel_size)):
            names.append(name)
    return names


def run_case(set_name, raw, gt, voxel_size, per_section, model, tmp, tta: int | None = None,
             precision: str | None = None, min_segment_voxels: int | None = None) -> dict:
    out = os.path.join(tmp, f"{'-'.join(set_name.split()[:3]).strip(',')}-{model}")
    vs = ["--voxel-size", *map(str, voxel_size)]
    t0 = time.perf_counter()
    seg, err = cli("segment", raw, out, "--model", model, "--no-progress", *vs, *(["--tta", str(tta)] if tta else []),
                   *(["--precision", precision] if precision else []),
                   *(["--min-segment-voxels", str(min_segment_voxels)] if min_segment_voxels is not None else []))
    seconds = time.perf_counter() - t0
    metrics, _ = cli("evaluate", "--seg", seg["segmentation"], "--gt", gt, *vs,
                     *(["--per-section"] if per_section else []))
    return {"set": set_name, "model": model, "threshold": seg["threshold"], "tta": seg.get("tta", 1),
            "voi_split": metrics["voi_split"], "voi_merge": metrics["voi_merge"],
            "voi": metrics["voi_split"] + metrics["voi_merge"], "arand": metrics["arand"],
            "erl_nm": metrics["erl_nm"], "max_erl_nm": metrics["max_erl_nm"], "merges": metrics["merges"],
            "splits": metrics["splits"], "seconds": round(seconds, 1), "segment_seconds": seg["seconds"],
            "voxels": seg["voxels"], "warning": "trained on 2-D labels only" in err}


def _num(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def write_stored_sections(cremi: Path, reordered: str, out: str) -> None:
    """The CREMI sections of the recovered order's z 40-49, in their stored (shuffled) order."""
    import numpy as np

    with np.load(reordered) as r, np.load(cremi) as c:
        sections = np.sort(r["stored_z"][40:50])
        np.savez(out, raw=c["raw"][sections], neuron_ids=c["neuron_ids"][sections])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--sets", nargs="*", help="only sets whose name starts with one of these words")
    ap.add_argument("--tta", type=int, default=None, help="segment with --tta N (default: each model's own)")
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=None,
                    help="segment with --precision (default: segment's, auto)")
    ap.add_argument("--min-segment-voxels", type=int, default=None,
                    help="segment with --min-segment-voxels N (default: each model's own; 0: no small segment absorbed)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/quality.md (quality_ttaN.md with --tta)")
    args = ap.parse_args()
    name = f"quality_tta{args.tta}.md" if args.tta else "quality.md"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / name)
    tmp = tempfile.mkdtemp(prefix="quality-")
    cremi = DATA / "cremi_sstem_crop" / "cremi_train.npz"
    reordered = os.path.join(tmp, "cremi_reordered.npz")
    stored = os.path.join(tmp, "cremi_stored_sections.npz")
    if cremi.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cremi_section_order.py"), "--input", str(cremi),
                        "--out", reordered], check=True, stdout=subprocess.DEVNULL)
        write_stored_sections(cremi, reordered, stored)
    rows, skipped = [], []
    for set_name, raw, gt, voxel_size, per_section, target in SETS:
        if args.sets and not any(set_name.startswith(s) for s in args.sets):
            continue
        raw, gt = (str(DATA / a) if "{" not in a else a.format(cremi_reordered=reordered, cremi_stored=stored) for a in (raw, gt))
        path = Path(raw.split("#")[0])
        if not path.exists():
            skipped.append(f"{set_name}: {path} absent")
            print(f"skip {set_name}: {path} absent", file=sys.stderr)
            continue
        for model in fitting_models(voxel_size):
            if args.models and model not in args.models:
                continue
            print(f"{set_name} with {model} ...", file=sys.stderr, flush=True)
            row = run_case(set_name, raw, gt, voxel_size, per_section, model, tmp, args.tta, args.precision,
                           args.min_segment_voxels)
            row["target"] = target
            rows.append(row)
            print(f"  VOI {row['voi']:.3f} (split {row['voi_split']:.3f}, merge {row['voi_merge']:.3f}), "
                  f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)
    lines = [
        "# Segmentation quality of the shipped affinity models on the real validation splits",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {cpu_name()}, {os.cpu_count()} cores (shared with "
        f"other jobs); precision auto resolves to {_auto_precision()} here; command: `.venv/bin/python benchmarks/quality.py"
        + (f" --tta {args.tta}" if args.tta else "") + (f" --models {' '.join(args.models)}" if args.models else "")
        + (f" --sets {' '.join(args.sets)}" if args.sets else "")
        + (f" --precision {args.precision}" if args.precision else "") + "`",
        "- every (set, model) pair within the voxel-size tolerance (factor 1.5 per axis); `connectome segment "
        "RAW OUT --model M --voxel-size ..." + (f" --tta {args.tta}" if args.tta else "") + "` at its "
        "defaults otherwise (block shape 64x256x256, the model's validated threshold and scoring), then `connectome evaluate --seg OUT/segmentation --gt GT --json` "
        "(`--per-section` for ISBI: the mean over its 5 sections)",
        "- VOI in bits (gt == 0 excluded); ERL in nm with kimimaro skeletons of the ground truth "
        "(gt ERL in brackets); seconds: the whole `connectome segment` command (start-up included)",
        "",
        "| set | model | threshold | tta | VOI split | VOI merge | VOI | target | adapted Rand | ERL nm (gt) | merges "
        "| splits | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r["voi"] <= r["target"] else "no"
        lines.append(
            f"| {r['set']} | {r['model']} | {r['threshold']:.2f} | {r['tta']} | {r['voi_split']:.3f} | {r['voi_merge']:.3f} | "
            f"{r['voi']:.3f} | <= {r['target']} ({met}) | {_num(r['arand'], '.3f')} | "
            f"{_num(r['erl_nm'], '.0f')} ({_num(r['max_erl_nm'], '.0f')}) | {r['merges']} | {r['splits']} | "
            f"{r['seconds']:.1f} |")
    lines += [f"- skipped: {s}" for s in skipped]
    lines += NOTES
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

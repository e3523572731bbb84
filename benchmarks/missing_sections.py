"""Missing sections: what `segment --fill-blank` (`affinity.blank.fill_blank`) does to the neurons around them.

A real validation split gets one or two whole sections set to exactly 0 (a section lost in cutting or imaging, as an
aligned stack shows it) and is segmented by the real `connectome segment` at its defaults but for `--fill-blank`: 0
(read as black and left out, as before the option) and 2 (filled from 2 sections above and below), and at its
defaults with the missing sections also given as `--mask` (the README's lab workflow, `--mask defects`; the
model's own fill: `fib-10nm` 2, `sstem` 0, chosen from this table), and that mask again with `--mask-values 2 3` (the
codes of `align`'s flagged regions and outside: its flagged sections, code 1, are then not a wall). Every run is scored against the real labels with the missing sections'
labels set to 0 (scored on the sections that exist), beside the same split with no section missing.
Sets: medulla z 100-124 (fib-10nm, 10 nm; missing z 112, then 112-113) and the CREMI crop's z 40-49 in the order
recovered from its labels (sstem, 40 x 4 x 4 nm; `benchmarks/cremi_section_order.py`; missing z 45, then 44-45), the
splits of benchmarks/quality.py. `medulla-ffn`: the medulla cases with `--method ffn --model ffn-fib-10nm`, which
masked blank voxels before it filled them (none missing, `--fill-blank 0`, the default 2). Writes
benchmarks/results/missing_sections.md. Usage:
    .venv/bin/python benchmarks/missing_sections.py [--sets medulla cremi medulla-ffn] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from connectome.core.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "connectome.cli"]

# name: model, voxel size, the missing sections (one, then two) within the split
SETS = {
    "medulla": ("fib-10nm", (10, 10, 10), [(12,), (12, 13)]),
    "cremi": ("sstem", (40, 4, 4), [(5,), (4, 5)]),
    "medulla-ffn": ("ffn-fib-10nm", (10, 10, 10), [(12,), (12, 13)]),
}
FFN = ["--method", "ffn"]


def split(name: str, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw, labels) of the set's validation split."""
    if name.startswith("medulla"):
        with np.load(DATA / "flyem_medulla_fib_train" / "medulla_train.npz") as f:
            return f["raw"][100:125].copy(), f["neuron_ids"][100:125].astype(np.uint64)
    reordered = work / "cremi_reordered.npz"
    if not reordered.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cremi_section_order.py"), "--out", str(reordered)],
                       check=True, cwd=ROOT, capture_output=True)
    with np.load(reordered) as f:
        return f["raw"][40:50].copy(), f["neuron_ids"][40:50].astype(np.uint64)


def run(cmd: list[str]) -> dict:
    return json.loads(subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout)


def scored(work: Path, label: str, raw: np.ndarray, gt: np.ndarray, model: str, voxel_size, extra: list[str],
           mask: np.ndarray | None = None) -> dict:
    """`connectome segment` on `raw` then `connectome evaluate` against `gt`: the evaluation's json and the seconds."""
    arrays = {"raw": raw, "gt": gt, **({"mask": mask} if mask is not None else {})}
    np.savez(work / f"{label}.npz", **arrays)
    out = work / label
    masked = ["--mask", f"{work / label}.npz#mask"] if mask is not None else []
    start = time.perf_counter()
    run([*CLI, "segment", f"{work / label}.npz#raw", str(out), "--model", model, "--voxel-size",
         *map(str, voxel_size), "--no-progress", "--json", *masked, *extra])
    seconds = time.perf_counter() - start
    result = run([*CLI, "evaluate", "--seg", str(out / "segmentation"), "--gt", f"{work / label}.npz#gt",
                  "--voxel-size", *map(str, voxel_size), "--json"])
    return {**result, "seconds": seconds}


def rows_for(name: str, work: Path) -> list[str]:
    model, voxel_size, gaps = SETS[name]
    raw, gt = split(name, work)
    rows = []
    for gap in gaps:
        lost = np.zeros(raw.shape[0], bool)
        lost[list(gap)] = True
        gt_here = np.where(lost[:, None, None], 0, gt)
        blank = np.where(lost[:, None, None], 0, raw).astype(raw.dtype)
        mask = np.broadcast_to(lost[:, None, None], raw.shape).astype(np.uint8)
        where = f"z {gap[0]}" if len(gap) == 1 else f"z {gap[0]}-{gap[-1]}"
        cases = [("no section missing", raw, [], None),
                 (f"{where} missing, --fill-blank 0 (black)", blank, ["--fill-blank", "0"], None),
                 (f"{where} missing, --fill-blank 2 (filled)", blank, ["--fill-blank", "2"], None),
                 (f"{where} missing, --mask on them (the model's fill)", blank, [], mask),
                 (f"{where} missing, --mask on them as code 1 (`align`'s flagged sections), --mask-values 2 3", blank,
                  ["--mask-values", "2", "3"], mask)]
        if name.endswith("-ffn"):  # the FFN: masked (as before it filled) or filled; no --mask cases
            cases = [(c[0].replace("(black)", "(masked, as before the FFN filled)"), c[1], FFN + c[2], c[3])
                     for c in cases[:3]]
        for i, (label, data, extra, m) in enumerate(cases):
            r = scored(work, f"{name}{len(gap)}{i}", data, gt_here, model, voxel_size, extra, m)
            rows.append(f"| {name} ({model}) | {len(gap)} | {label} | {r['voi_split']:.3f} | {r['voi_merge']:.3f} | "
                        f"**{r['voi_split'] + r['voi_merge']:.3f}** | {r['arand']:.3f} | {r['seconds']:.0f} s |")
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS, reverse=True))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "missing_sections.md"))
    args = parser.parse_args()
    lines = ["# Missing sections (`segment --fill-blank`)", "",
             f"Made by `.venv/bin/python benchmarks/missing_sections.py --sets {' '.join(args.sets)}` on "
             f"{time.strftime('%Y-%m-%d')}, {cpu_name()}; see the script's docstring for the sets. Scored on the "
             "sections that exist (the missing ones' labels set to 0), VOI in bits; 'missing': sections of the split "
             "counted from 0; seconds: the whole `connectome segment` command. No ERL: with the missing sections' "
             "labels set to 0 it collapses even where no section is missing (medulla: 6 nm, against 95 nm for the "
             "same segmentation scored on all labels; 67 merges against 54), so it would not compare the runs.", "",
             "| set (model) | sections missing | run | VOI split | VOI merge | VOI | adapted Rand | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            lines += rows_for(name, Path(tmp))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

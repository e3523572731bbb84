"""FFN blockwise vs one block: how far `connectome segment --method ffn` in 8 blocks lies from one block.

Issue 11 asks that the reconciled blockwise run equal a single-block run within VOI (split + merge)
0.05 on the synthetic volume and on a 64 x 128 x 128 medulla_train crop cut into 8 blocks. Each case
runs the real command twice (8 blocks, then the whole volume as one block, `segment` defaults
otherwise) and scores the 8-block segmentation against the one-block one with `connectome evaluate`
(the one-block result plays the ground truth: split = one-block objects cut by the blocks, merge =
one-block objects joined). The column "merge in the block canvases" scores the blocks' own canvases
(`ffn_fragments`, before reconciliation) the same way: the merge already there, not made by reconciliation;
"per block" gives the range over the blocks of each block's canvas against the one-block result inside its
write box (split, merge).

Cases: `synthetic` - the 16 x 64 x 64 volume of tests/ffn/test_segment_ffn.py (`generate(..., seed=15)`,
8 nm), `ffn-synthetic`, blocks 8 x 32 x 32; `medulla` - medulla_train z 61-124, y and x 61-188 (10 nm),
`ffn-fib-10nm`, blocks 32 x 64 x 64.

Usage: nice -n 5 .venv/bin/python benchmarks/ffn_blockwise.py [--cases synthetic medulla] [--tmp DIR] [--model M]
Writes benchmarks/results/ffn_blockwise.md. With `--tmp` (a folder of an earlier call) finished runs
resume instead of running again (their seconds are then those of the resumed call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "connectome.cli"]
MEDULLA = ROOT.parent / "shared" / "data" / "flyem_medulla_fib_train" / "medulla_train.npz"
# case: model, volume shape, block shape of the blockwise run, voxel size (nm)
CASES = {"synthetic": ("ffn-synthetic", (16, 64, 64), (8, 32, 32), 8.0),
         "medulla": ("ffn-fib-10nm", (64, 128, 128), (32, 64, 64), 10.0)}


def cli(*args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"connectome {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_raw(case: str, folder: str) -> str:
    """The case's raw volume as a zarr store in `folder` (written once)."""
    import numpy as np

    from connectome.io import create_volume

    path = os.path.join(folder, "raw")
    if os.path.isdir(path):
        return path
    if case == "synthetic":
        from connectome.synth import generate

        generate(CASES[case][1], (8.0, 8.0, 8.0), seed=15).save(folder, chunk_shape=(8, 32, 32))
        return path
    with np.load(MEDULLA) as f:
        raw = f["raw"][61:125, 61:189, 61:189]
    vol = create_volume(path, raw.shape, np.uint8, (32, 64, 64), (10.0, 10.0, 10.0))
    vol.write(vol.box, raw)
    return path


def per_block(canvases: str, one: str, block: tuple[int, int, int]) -> list[tuple[float, float]]:
    """(split, merge) of each block's canvas against the one-block segmentation inside the block's write box."""
    import numpy as np

    from connectome.io import open_volume
    from connectome.metrics.voi import voi

    a, b = (open_volume(x) for x in (canvases, one))
    canvas, whole = a.read(a.box), b.read(b.box)
    starts = np.stack(np.meshgrid(*[np.arange(0, n, s) for n, s in zip(canvas.shape, block)], indexing="ij"), -1)
    out = []
    for z, y, x in starts.reshape(-1, 3):
        window = np.s_[z:z + block[0], y:y + block[1], x:x + block[2]]
        out.append(voi(canvas[window], whole[window]))
    return out


def run_case(case: str, tmp: str, model: str | None = None) -> dict:
    """Both runs of `case` (with `model` in place of the case's own, if given) and their scores."""
    default, shape, block, nm = CASES[case]
    model = model or default
    folder = os.path.join(tmp, case)
    raw = write_raw(case, folder)
    row: dict = {"case": case, "model": model, "shape": shape, "block": block}
    for label, blocks in (("eight", block), ("one", shape)):
        start = time.time()
        result = cli("segment", raw, os.path.join(folder, label), "--method", "ffn", "--model", model,
                     "--block-shape", *map(str, blocks), "--workers", "2", "--no-progress")
        row[f"{label}_s"] = time.time() - start
        row[label] = result["segmentation"]
    score = cli("evaluate", "--seg", row["eight"], "--gt", row["one"], "--voxel-size", *[str(nm)] * 3)
    row.update(split=score["voi_split"], merge=score["voi_merge"], arand=score["arand"])
    # each block's own canvas before reconciliation (ids unique per block, so its split counts every block cut)
    canvases = os.path.join(folder, "eight", "ffn_fragments")
    row["canvas_merge"] = cli("evaluate", "--seg", canvases, "--gt", row["one"], "--voxel-size", *[str(nm)] * 3)["voi_merge"]
    row["per_block"] = per_block(canvases, row["one"], block)
    return row


def spread(pairs: list[tuple[float, float]]) -> str:
    """'split lo-hi, merge lo-hi' over the blocks."""
    split, merge = [p[0] for p in pairs], [p[1] for p in pairs]
    return f"{min(split):.2f}-{max(split):.2f}, {min(merge):.2f}-{max(merge):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ffn_blockwise.md"))
    ap.add_argument("--tmp", default=None, help="work folder (reused: finished runs resume)")
    ap.add_argument("--model", default=None, help="an FFN name or .pt path in place of the case's model (one case)")
    args = ap.parse_args()
    if args.model and len(args.cases) != 1:
        ap.error("--model replaces the model of one case; name it with --cases")
    tmp = args.tmp or tempfile.mkdtemp(prefix="ffn-blockwise-")
    load = os.getloadavg()[0]
    rows = [run_case(case, tmp, args.model) for case in args.cases]
    lines = ["# FFN: 8 blocks vs one block", "",
             f"`.venv/bin/python benchmarks/ffn_blockwise.py --cases {' '.join(args.cases)}"
             f"{' --model ' + args.model if args.model else ''}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average at start {load:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "The 8-block segmentation scored against the one-block one (VOI in bits; target split + merge <= 0.05).",
             "", "| case | model | volume | blocks | VOI split | VOI merge | split + merge | adapted Rand | "
             "merge in the block canvases | per block: split, merge | 8 blocks s | one block s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['model']} | {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['block']))} "
                     f"| {r['split']:.3f} | {r['merge']:.3f} | **{r['split'] + r['merge']:.3f}** | {r['arand']:.3f} "
                     f"| {r['canvas_merge']:.3f} | {spread(r['per_block'])} | {r['eight_s']:.0f} | {r['one_s']:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

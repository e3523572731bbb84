"""Metric throughput (voxels/s): contingency table + VOI + adapted Rand on a pair of uint64 label volumes.

The ground truth is a Voronoi tessellation of random seeds with 1-voxel boundaries set to 0; the
segmentation is the Voronoi of the same seeds jittered, with extra seeds (splits) and some cells
joined (merges). Measured three ways:
  whole-array  Contingency.from_arrays + voi_from_table + adapted_rand_stats on in-memory arrays;
  zarr read    reading both volumes from zarr block by block, nothing else (the I/O floor);
  blockwise    evaluate_volumes from zarr (read, tabulate, merge, VOI, adapted Rand, ERL lookups
               on small given skeletons; kimimaro is not timed).

Run: .venv/bin/python benchmarks/metrics_speed.py [--size 512] [--runs 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectome.core.geometry import BlockGrid  # noqa: E402
from connectome.io import create_volume, open_volume  # noqa: E402
from connectome.metrics import Contingency, Skeletons, adapted_rand_stats, evaluate_volumes, voi_from_table  # noqa: E402

VOXEL = (8.0, 8.0, 8.0)
CHUNKS = (64, 64, 64)
BLOCK = (128, 256, 256)
ID_SHIFT = np.uint64(1 << 33)  # ids far beyond 32 bits


def voronoi(seeds: np.ndarray, ids: np.ndarray, size: int, out: np.ndarray, slab: int = 16) -> None:
    """out[z, y, x] = ids[nearest seed], filled slab by slab to bound memory."""
    tree = cKDTree(seeds)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    plane = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)
    for z0 in range(0, size, slab):
        zs = np.arange(z0, min(z0 + slab, size), dtype=np.float32)
        pts = np.concatenate([np.column_stack([np.full(len(plane), z), plane]) for z in zs])
        _, nearest = tree.query(pts, workers=2)
        out[z0 : z0 + len(zs)] = ids[nearest].reshape(len(zs), size, size)


def make_pair(size: int, n_seeds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (n_seeds, 3))
    gt = np.empty((size,) * 3, np.uint64)
    voronoi(seeds, (np.arange(n_seeds, dtype=np.uint64) + 1) * ID_SHIFT + 7, size, gt)
    # 1-voxel boundaries (gt == 0) where a voxel differs from its +z, +y or +x neighbour
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        diff = gt[tuple(a)] != gt[tuple(b)]
        diff &= gt[tuple(b)] != 0
        gt[tuple(a)][diff] = 0
        del diff
    # segmentation: jittered seeds, 10% extra seeds (splits), 5% of cells joined to another (merges)
    extra = seeds[rng.integers(0, n_seeds, n_seeds // 10)] + rng.normal(0, 6, (n_seeds // 10, 3))
    seg_seeds = np.concatenate([seeds + rng.normal(0, 2, seeds.shape), extra])
    seg_ids = np.arange(len(seg_seeds), dtype=np.uint64) + 1
    joined = rng.choice(len(seg_seeds), len(seg_seeds) // 20, replace=False)
    seg_ids[joined] = seg_ids[rng.integers(0, len(seg_seeds), len(joined))]
    seg = np.empty((size,) * 3, np.uint64)
    voronoi(seg_seeds, seg_ids * ID_SHIFT + 3, size, seg)
    return seg, gt, seeds


def small_skeletons(seeds: np.ndarray, size: int) -> Skeletons:
    """A 5-node straight skeleton along x through each seed (for the node lookups in the pass)."""
    offsets = np.array([[0, 0, d] for d in (-2, -1, 0, 1, 2)], float)
    nodes = np.clip(np.rint(seeds)[:, None, :] + offsets[None], 0, size - 1).reshape(-1, 3)
    chain = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    edges = (np.arange(len(seeds))[:, None, None] * 5 + chain[None]).reshape(-1, 2)
    return Skeletons(nodes, edges, np.repeat(np.arange(len(seeds)) + 1, 5))


def whole_array(seg: np.ndarray, gt: np.ndarray) -> dict:
    table = Contingency.from_arrays(seg, gt)
    split, merge = voi_from_table(table)
    return {"voi_split": split, "voi_merge": merge, "arand": adapted_rand_stats(table).error, "pairs": len(table)}


def zarr_read(seg_addr: str, gt_addr: str) -> None:
    seg, gt = open_volume(seg_addr), open_volume(gt_addr)
    for block in BlockGrid(gt.box, BLOCK):
        seg.read(block.write_box)
        gt.read(block.write_box)


def kimimaro_timing() -> str:
    """Median time of the one whole-volume step (kimimaro on gt) on the gala test crop, if present."""
    path = ROOT.parent / "shared" / "data" / "gala_fib_crops" / "gala_fib.npz"
    if not path.exists():
        return f"kimimaro timing skipped: {path} not found"
    with np.load(path) as f:
        gt = f["test_gt"]
    times, sk = timed(lambda: Skeletons.from_labels(gt, (10.0, 10.0, 10.0)), 3)
    return (
        f"kimimaro skeletons of the gala test_gt ({gt.size / 1e6:.1f} Mvx, {len(np.unique(gt)) - 1} objects, "
        f"10 nm): median {statistics.median(times):.2f} s over 3 runs ({len(sk.edges)} edges); "
        "this whole-volume step is not in the rows above"
    )


def timed(fn, runs: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="edge of the cubic volumes (default 512)")
    ap.add_argument("--seeds", type=int, default=4000, help="Voronoi cells in the ground truth")
    ap.add_argument("--runs", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--workdir", help="where the zarr volumes go (default: a temporary dir, removed)")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/metrics_speed.md")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    seg, gt, seeds = make_pair(args.size, args.seeds)
    gen_s = time.perf_counter() - t
    n = gt.size
    print(f"generated {args.size}^3 uint64 pair ({n / 1e6:.0f} Mvx, {args.seeds} gt cells) in {gen_s:.0f} s")

    rows = []
    times, scores = timed(functools.partial(whole_array, seg, gt), args.runs)
    rows.append(("whole-array (in memory)", times))
    print(f"scores: {scores}")

    work = args.workdir or tempfile.mkdtemp(prefix="metrics_speed_")
    seg_addr, gt_addr = os.path.join(work, "seg"), os.path.join(work, "gt")
    try:
        for addr, data in ((seg_addr, seg), (gt_addr, gt)):
            vol = create_volume(addr, data.shape, data.dtype, CHUNKS, VOXEL, overwrite=True)
            vol.write(vol.box, data)
        del seg, gt
        sk = small_skeletons(seeds, args.size)
        zruns = max(3, args.runs // 2 + 1)
        times, _ = timed(lambda: zarr_read(seg_addr, gt_addr), zruns)
        rows.append(("zarr read only (I/O floor)", times))
        times, result = timed(lambda: evaluate_volumes(seg_addr, gt_addr, block_shape=BLOCK, skeletons=sk), zruns)
        rows.append(("blockwise evaluate_volumes from zarr", times))
        assert result["voi_split"] == scores["voi_split"] and result["arand"] == scores["arand"], "blockwise != whole"
        print("blockwise scores equal whole-array scores exactly")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    lines = [
        "| what | median s | runs (s) | Mvx/s (voxel positions scored per second) |",
        "|---|---|---|---|",
    ]
    for name, times in rows:
        med = statistics.median(times)
        lines.append(f"| {name} | {med:.2f} | {', '.join(f'{x:.2f}' for x in times)} | {n / med / 1e6:.1f} |")
    table = "\n".join(lines)
    load_after = os.getloadavg()[0]
    kimimaro_line = kimimaro_timing()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(kimimaro_line)
    print(f"peak resident memory {peak_gib:.2f} GiB")
    print(table)
    if args.no_record:
        return
    cpu = platform.processor() or platform.machine()
    command = " ".join([".venv/bin/python benchmarks/metrics_speed.py", *sys.argv[1:]])
    text = f"""# metrics_speed

Contingency table + VOI + adapted Rand on a {args.size}^3 pair of uint64 label volumes
(ground truth: Voronoi of {args.seeds} random seeds with 0-valued boundaries; segmentation: jittered
seeds, +10% split seeds, 5% of cells merged). Zarr: chunks {list(CHUNKS)}, default codec; blocks
{list(BLOCK)}. The blockwise row is `evaluate_volumes` (read both volumes block by block, tabulate,
merge tables, VOI, adapted Rand, skeleton-node lookups for {len(seeds)} small skeletons and ERL;
no kimimaro). Median over the runs listed.

- date: {datetime.date.today().isoformat()}
- machine: {platform.node()}, {cpu}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}
- 1-minute load average at start / end: {load_before:.1f} / {load_after:.1f} (other users' work counts;
  a load above the core count slows every row)
- command: `{command}`
- test data generated in {gen_s:.0f} s (not timed below)
- scores: voi_split {scores['voi_split']:.4f}, voi_merge {scores['voi_merge']:.4f}, arand {scores['arand']:.4f},
  {scores['pairs']} (seg, gt) pairs; blockwise scores equal whole-array scores exactly

{table}

- peak resident memory of the whole benchmark process: {peak_gib:.2f} GiB (the two volumes are 2 GiB)
- {kimimaro_line}
"""
    out = ROOT / "benchmarks" / "results" / "metrics_speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()

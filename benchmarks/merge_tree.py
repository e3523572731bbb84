"""The merge tree against the serial merge, and at scale.

    # tree vs serial on the region-graph tables of a finished run (any `connectome run` output)
    .venv/bin/python benchmarks/merge_tree.py compare OUTPUT_DIR --threshold 0.5 [--fanout 2 4] [--tree-levels 1]

    # a synthetic region graph of about N edges, written blockwise to disk (never whole in memory),
    # merged by the tree on a local Dask cluster: time and peak memory per task, per level
    .venv/bin/python benchmarks/merge_tree.py simulate --edges 1e7 --dir /tmp/mt [--serial] [--tree-levels 2]

    # the serial merge alone, in memory, in the strict and in waterz's order of equal scores
    .venv/bin/python benchmarks/merge_tree.py kernel --edges 3e6 --dir /tmp/mt3

The synthetic graph is a lattice of fragments, `--lattice`^3 per block, each joined to its lower
neighbour along z, y and x (about 3 edges per fragment, across block faces too), with 1-8 voxel
pairs per contact. Fragments belong to elongated objects (neurites along z, 2-5 blocks long,
about a third of a block wide): contacts inside an object have high uint8 affinities, others
low, both noisy, so segments chain across blocks and super-blocks. Peak memory is each task's own
resident peak (VmHWM, reset before the task; it includes the ~0.2 GB of a worker's libraries).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ---------------------------------------------------------------- the synthetic region graph

def _object_of(z, y, x, lattice):
    """Object id of lattice points: neurites along z, of random length and width (hashed cells)."""
    w = max(2, lattice // 3)
    cy, cx = y // w, x // w
    h = (cy * 73856093) ^ (cx * 19349663)
    length = lattice * (2 + (h % 4))
    shift = (h // 7) % length
    cz = (z + shift) // length
    return (cz * 83492791) ^ h


def write_block(args) -> int:
    """One block's table (as the agglomerate stage writes it); returns its edge count."""
    from connectome.io.tables import save_table

    directory, grid, lattice, index = args
    gz, gy, gx = grid
    bz, by, bx = index // (gy * gx), (index // gx) % gy, index % gx
    rng = np.random.default_rng(index)
    z, y, x = np.meshgrid(*[np.arange(lattice)] * 3, indexing="ij")
    z, y, x = z.ravel(), y.ravel(), x.ravel()
    local = np.arange(1, lattice**3 + 1, dtype=np.uint64)
    mine = (np.uint64(index) << np.uint64(32)) | local
    us, vs = [], []
    for dz, dy, dx in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        lz, ly, lx = z - dz, y - dy, x - dx
        inside = (lz >= 0) & (ly >= 0) & (lx >= 0)
        us.append(mine[inside])
        vs.append((np.uint64(index) << np.uint64(32)) | (((lz * lattice + ly) * lattice + lx)[inside] + 1).astype(np.uint64))
        face = ~inside  # the lower neighbour is in the block below this face
        nb = (bz - dz, by - dy, bx - dx)
        if min(nb) >= 0:
            nindex = (nb[0] * gy + nb[1]) * gx + nb[2]
            wz, wy, wx = lz[face] % lattice, ly[face] % lattice, lx[face] % lattice
            us.append(mine[face])
            vs.append((np.uint64(nindex) << np.uint64(32)) | (((wz * lattice + wy) * lattice + wx) + 1).astype(np.uint64))
    u, v = np.concatenate(us), np.concatenate(vs)
    def coords(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global lattice coordinates of fragment ids, for their objects."""
        b = (ids >> np.uint64(32)).astype(np.int64)
        i = (ids & np.uint64(0xFFFFFFFF)).astype(np.int64) - 1
        pz, py, px = b // (gy * gx), (b // gx) % gy, b % gx
        return (pz * lattice + i // lattice**2, py * lattice + (i // lattice) % lattice, px * lattice + i % lattice)

    same = _object_of(*coords(u), lattice) == _object_of(*coords(v), lattice)
    counts = rng.integers(1, 9, len(u))
    mean = np.where(same, rng.normal(0.8, 0.15, len(u)), rng.normal(0.25, 0.15, len(u)))
    sums = np.rint(np.clip(mean, 0, 1) * 255 * counts) / 255.0  # a sum of stored uint8 affinities
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    empty = np.zeros(0, np.uint64)
    save_table(directory, index, nodes=mine, u=lo, v=hi, sums=sums, counts=counts.astype(np.float64),
               hist_edge=np.zeros(0, np.uint32), hist_bin=np.zeros(0, np.uint8), hist_count=np.zeros(0, np.uint32),
               link_u=empty, link_v=empty, grid=np.array(grid))
    return len(u)


def grid_for(edges: float, lattice: int) -> tuple[int, int, int]:
    blocks = max(1, round(edges / (3 * lattice**3)))
    side = round(blocks ** (1 / 3))
    gz, gy = side, side
    gx = max(1, round(blocks / (gz * gy)))
    return (gz, gy, gx)


# ---------------------------------------------------------------- measuring

def _serial_child(edges_dir: str, threshold: float, scoring: str, out: str) -> None:
    """Serial merge in this (fresh) process: its time and peak memory; the table saved to `out`."""
    from connectome.affinity.agglomeration import load_tables, lookup_table
    from connectome.affinity.merge_tree import _peak_rss

    start = time.perf_counter()
    # the tree's order of equal scores (the default for mean scoring; quantile runs in waterz's order serially)
    keys, values = lookup_table(load_tables(edges_dir, histograms=scoring == "quantile"), threshold, scoring,
                                order="strict")
    seconds = time.perf_counter() - start
    np.savez(out, keys=keys, values=values)
    print(json.dumps({"seconds": seconds, "peak_rss": _peak_rss(), "fragments": int(len(keys)),
                      "segments": int(len(np.unique(values)))}))


def serial(edges_dir: str, threshold: float, scoring: str, out: str) -> dict:
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from benchmarks.merge_tree import _serial_child; "
            f"_serial_child({edges_dir!r}, {threshold!r}, {scoring!r}, {out!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_tree(edges_dir: str, work: str, threshold: float, scoring: str, fanout: int, workers: int,
             memory_limit: str = "4GiB", tree_levels: int | None = None) -> tuple[Any, list[dict], dict]:
    """The tree on a local Dask cluster; returns the tree, its task summaries and wall time per level."""
    from distributed import Client, LocalCluster

    from connectome.affinity.merge_tree import MergeTree, TreeLayout, submit_on_dask
    from connectome.affinity.relabel import table_grid

    grid = table_grid(edges_dir)
    if grid is None:
        raise SystemExit(f"{edges_dir}: tables without their block grid (written before the merge tree); re-run agglomerate")
    tree = MergeTree(edges_dir, os.path.join(work, "tree"), os.path.join(work, "shards"),
                     TreeLayout(grid, fanout), threshold, scoring,
                     top_level=None if tree_levels is None else tree_levels - 1)
    walls: dict[str, float] = {}

    def timed(t, todo):
        start = time.perf_counter()
        out = submit_on_dask(t, todo)
        key = f"{todo[0][0]} {todo[0][1] if todo[0][0] in ('up', 'down') else 'all'}"
        walls[key] = walls.get(key, 0.0) + time.perf_counter() - start
        return out

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                      dashboard_address=None) as cluster, Client(cluster):
        start = time.perf_counter()
        summaries = tree.run(submit=timed)
        walls["total"] = time.perf_counter() - start
    return tree, summaries, walls


def tree_table(tree) -> tuple[np.ndarray, np.ndarray]:
    from connectome.io.lookup import load_shard

    parts = [load_shard(tree.shards_dir, b) for b in range(int(np.prod(tree.layout.grid)))]
    keys, values = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(keys)
    return keys[order], values[order]


def level_rows(summaries: list[dict], walls: dict) -> list[str]:
    """One row per tree level and pass, and one per phase of the rounds (all rounds together)."""
    rows = ["| pass | level | tasks | nodes in (max) | edges or rows in (max) | passed up (sum) | wall s | task s (max) "
            "| CPU s (sum) | peak RSS per task (max) |", "|---|---|---|---|---|---|---|---|---|---|"]
    from connectome.affinity.merge_rounds import PHASES as phases

    def group_of(s: dict) -> tuple[str, object]:
        return (s["kind"], s["level"] if s["kind"] in ("up", "down") else "all")

    def order(k: tuple[str, object]) -> tuple:
        kind, level = k
        if kind == "up":
            return (0, level)
        if kind == "down":
            return (2, -level)  # type: ignore[operator]
        return (1, phases.index(kind))

    for kind, level in sorted({group_of(s) for s in summaries}, key=order):
        group = [s for s in summaries if group_of(s) == (kind, level)]
        edges = max(s.get("edges", s.get("rows", 0)) for s in group)
        rows.append(f"| {kind} | {level} | {len(group)} | {max(s.get('nodes', 0) for s in group):,} | "
                    f"{edges:,} | {sum(s.get('passed_up', 0) for s in group):,} | "
                    f"{walls.get(f'{kind} {level}', 0):.1f} | {max(s['seconds'] for s in group):.1f} | "
                    f"{sum(s.get('cpu_seconds', 0) for s in group):.1f} | "
                    f"{max(s['peak_rss'] for s in group) / 2**30:.2f} GiB |")
    return rows


# ---------------------------------------------------------------- commands

def simulate(args) -> None:
    grid = grid_for(float(args.edges), args.lattice)
    edges_dir = os.path.join(args.dir, "edges")
    os.makedirs(edges_dir, exist_ok=True)
    n = grid[0] * grid[1] * grid[2]
    start = time.perf_counter()
    todo = [(edges_dir, grid, args.lattice, i) for i in range(n) if not os.path.exists(os.path.join(edges_dir, f"{i}.npz"))]
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(write_block, todo, chunksize=4))
    generated = time.perf_counter() - start
    total_edges = 3 * args.lattice**3 * n  # minus the faces of the volume
    print(f"graph: {n} blocks {grid}, {args.lattice}^3 fragments each, ~{total_edges:.3g} edges; "
          f"written in {generated:.0f} s", flush=True)
    work = os.path.join(args.dir, f"levels-{args.tree_levels}" if args.tree_levels else "")
    tree, summaries, walls = run_tree(edges_dir, work, args.threshold, "mean", args.fanout, args.workers,
                                      tree_levels=args.tree_levels)
    rows = level_rows(summaries, walls)
    print("\n".join(rows))
    totals = tree.totals()
    rounds = max([s["level"] for s in summaries if s["kind"] == "propose"], default=-1) + 1
    print(f"tree: {walls['total']:.1f} s, {totals}; levels {tree.layout.levels}, fanout {args.fanout}, "
          f"rounds {rounds}")
    if args.serial:
        s = serial(edges_dir, args.threshold, "mean", os.path.join(args.dir, "serial.npz"))
        with np.load(os.path.join(args.dir, "serial.npz")) as t:
            keys, values = t["keys"], t["values"]
        got = tree_table(tree)
        same = np.array_equal(got[0], keys) and np.array_equal(got[1], values)
        print(f"serial: {s['seconds']:.1f} s, peak {s['peak_rss'] / 2**30:.2f} GiB, {s['segments']} segments; "
              f"tree == serial: {same}")


def kernel(args) -> None:
    """The serial merge alone (`merge_regions`, tables already in memory) on a synthetic graph, in
    each order of equal scores, alternating, best of `--repeat`."""
    from connectome.affinity.agglomeration import edge_stats, load_tables, merge_regions

    grid = grid_for(float(args.edges), args.lattice)
    edges_dir = os.path.join(args.dir, "edges")
    os.makedirs(edges_dir, exist_ok=True)
    for i in range(int(np.prod(grid))):
        if not os.path.exists(os.path.join(edges_dir, f"{i}.npz")):
            write_block((edges_dir, grid, args.lattice, i))
    tables = load_tables(edges_dir)
    stats, nodes = edge_stats(tables, "mean"), tables["nodes"]
    u, v = tables["u"].astype(np.uint64), tables["v"].astype(np.uint64)
    merge_regions(nodes, u[:1000], v[:1000], stats[:1000], args.threshold)  # compile
    merge_regions(nodes, u[:1000], v[:1000], stats[:1000], args.threshold, order="waterz")
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for order in ("strict", "waterz"):
            start = time.perf_counter()
            segments = len(np.unique(merge_regions(nodes, u, v, stats, args.threshold, order=order)))
            best[order] = min(best.get(order, np.inf), time.perf_counter() - start)
            print(f"{order}: {len(u):,} edges, {len(nodes):,} fragments -> {segments:,} segments, "
                  f"{time.perf_counter() - start:.2f} s", flush=True)
    for order, seconds in best.items():
        print(f"{order}: best of {args.repeat}: {seconds:.2f} s")


def compare(args) -> None:
    from connectome.affinity.relabel import table_grid
    from connectome.io import open_volume
    from connectome.io.lookup import relabel
    from connectome.metrics import voi

    edges_dir = os.path.join(args.output, "tables", "edges")
    work = args.work or os.path.join(args.output, "merge-tree-bench")
    s = serial(edges_dir, args.threshold, args.scoring, os.path.join(work + "-serial.npz"))
    with np.load(work + "-serial.npz") as t:
        keys, values = t["keys"], t["values"]
    fragments = open_volume(os.path.join(args.output, "fragments"))
    frag = fragments.read(fragments.box)
    serial_seg = relabel(frag, keys, values)
    print(f"{args.output}: {frag.size:,} voxels, grid {table_grid(edges_dir)}, {len(keys):,} fragments; "
          f"serial {s['seconds']:.1f} s, peak {s['peak_rss'] / 2**30:.2f} GiB, {s['segments']:,} segments")
    for fanout in args.fanout:
        tree, summaries, walls = run_tree(edges_dir, f"{work}-{fanout}-{args.tree_levels}", args.threshold, args.scoring,
                                          fanout, args.workers, tree_levels=args.tree_levels)
        tkeys, tvalues = tree_table(tree)
        seg = relabel(frag, tkeys, tvalues)
        split, merge = voi(seg, serial_seg)
        peak = max(x["peak_rss"] for x in summaries) if summaries else 0
        rounds = max([x["level"] for x in summaries if x["kind"] == "propose"], default=-1) + 1
        print(f"  tree fanout {fanout} ({tree.layout.levels} levels, {tree.tree_levels} as tasks per super-block, "
              f"{rounds} rounds above): {walls['total']:.1f} s, max task peak "
              f"{peak / 2**30:.2f} GiB; table identical: {np.array_equal(tkeys, keys) and np.array_equal(tvalues, values)}; "
              f"segmentation identical: {seg.tobytes() == serial_seg.tobytes()}; VOI split {split:.4f} merge {merge:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="tree vs serial on a finished run's tables")
    c.add_argument("output")
    c.add_argument("--threshold", type=float, default=0.5)
    c.add_argument("--scoring", default="mean")
    c.add_argument("--fanout", type=int, nargs="+", default=[2, 4])
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--work", default=None)
    c.add_argument("--tree-levels", type=int, default=None,
                   help="levels run as tasks per super-block, rounds above them (default: the whole tree)")
    s = sub.add_parser("simulate", help="a synthetic region graph merged by the tree")
    s.add_argument("--edges", default="1e7")
    s.add_argument("--lattice", type=int, default=32)
    s.add_argument("--fanout", type=int, default=4)
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--dir", required=True)
    s.add_argument("--serial", action="store_true", help="also the serial merge, in its own process")
    s.add_argument("--tree-levels", type=int, default=None,
                   help="levels run as tasks per super-block, rounds above them (default: the whole tree)")
    k = sub.add_parser("kernel", help="the serial merge alone, in memory, in each order of equal scores")
    k.add_argument("--edges", default="3e6")
    k.add_argument("--lattice", type=int, default=32)
    k.add_argument("--threshold", type=float, default=0.5)
    k.add_argument("--repeat", type=int, default=3)
    k.add_argument("--dir", required=True)
    args = p.parse_args()
    {"compare": compare, "simulate": simulate, "kernel": kernel}[args.command](args)


if __name__ == "__main__":
    main()

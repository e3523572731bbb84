"""Alignment speed and the global solve's memory.

1. Sections per second for 1024 x 1024 sections (real VNC ssTEM, shared/data, with known shifts and
   rotations applied) on a LocalCluster of 2 single-threaded workers: estimation (`align_match`),
   the global solve (`align_solve`) and the warp (`align`) separately, default parameters
   (patch 64, stride 64: 15 x 15 mesh nodes per section, 2 neighbour pairs per section).
2. The global solve alone (affine solve + elastic mesh relaxation) on synthetic measurements for
   100 ... 10,000 sections of 15 x 15 nodes: peak memory (tracemalloc: numpy's allocations) and time.

Run: .venv/bin/python benchmarks/alignment.py [--sections 8] [--solve-sizes 100 1000 10000] [--out FILE]
Prints the tables (recorded by hand in benchmarks/results/alignment.md, whose notes a run must not overwrite);
--out FILE also writes them there.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "drosophila_vnc_sstem" / "vnc_stack1.npz"


def speed(sections: int) -> list[tuple[str, float, float]]:
    from distributed import Client, LocalCluster

    from connectome.alignment.synthetic import Distortion, distort
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume

    clean = np.load(DATA)["raw"][:sections]
    clean = np.pad(clean, ((0, 0), (32, 32), (32, 32)), mode="reflect")
    raw = distort(clean, 32, Distortion(max_shift=20, max_rotation=1), seed=0).raw  # sections x 1024 x 1024
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        vol = create_volume(os.path.join(tmp, "raw"), raw.shape, raw.dtype, (1, 512, 512), (50.0, 4.6, 4.6))
        vol.write(vol.box, raw)
        config = RunConfig(input=os.path.join(tmp, "raw"), output=os.path.join(tmp, "out"),
                           blocks=BlocksConfig(shape=(1, 512, 512)), cluster=ClusterConfig(),
                           stages=[StageConfig(stage="align_match"), StageConfig(stage="align")])
        for report in execute(plan_run(config), client, progress=False):
            rows.append((report.stage, report.seconds, sections / report.seconds))
    return rows


def solve_memory(sections: int, grid: int = 15) -> tuple[float, float, int]:
    from connectome.alignment.solve import Measured, solve_fields

    rng = np.random.default_rng(0)
    ys = 32 + 64 * np.arange(grid, dtype=np.int64)
    truth = np.cumsum(rng.normal(0, 3, (sections, 1, 1, 2)), axis=0) + rng.normal(0, 0.5, (sections, grid, grid, 2))
    d = {k: truth[k:] - truth[:-k] + rng.normal(0, 0.1, (sections - k, grid, grid, 2)) for k in (1, 2)}
    w = {k: (rng.random((sections - k, grid, grid)) > 0.2).astype(np.float64) for k in (1, 2)}
    del truth
    tracemalloc.start()
    start = time.perf_counter()
    _, summary = solve_fields(Measured((ys, ys), d, w, sections))
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2 ** 20, seconds, summary["cg_iterations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--solve-sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    lines = ["# Alignment speed and global-solve memory", "",
             f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs visible (2 workers used), "
             f"`{' '.join(['.venv/bin/python', 'benchmarks/alignment.py', *sys.argv[1:]])}`", ""]
    if DATA.exists():
        lines += [f"## Speed: {args.sections} real VNC sections of 1024 x 1024, 2 single-threaded workers", "",
                  "| step | seconds | sections/s |", "|---|---|---|"]
        for stage, seconds, rate in speed(args.sections):
            lines.append(f"| {stage} | {seconds:.1f} | {rate:.3f} |")
            print(lines[-1], flush=True)
    else:
        lines.append(f"(speed skipped: {DATA} not found)")
    lines += ["", "## Global solve: 15 x 15 nodes per section, 2 neighbour pairs, 3 re-linearisations", "",
              "| sections | peak memory MiB | seconds | CG iterations |", "|---|---|---|---|"]
    for n in args.solve_sizes:
        mib, seconds, its = solve_memory(n)
        lines.append(f"| {n} | {mib:.0f} | {seconds:.1f} | {its} |")
        print(lines[-1], flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

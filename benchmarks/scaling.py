"""Speed-up of a real stage from 1 to 2 workers: `normalize` on a 256^3 uint8 zarr volume.

Run: .venv/bin/python benchmarks/scaling.py [--runs 3] [--size 256] [--workers 1 2]
Records benchmarks/results/scaling.md. Times the stage only (the LocalCluster is started before
the clock starts and reused for every run); each run starts from no done-markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from connectome.cluster.client import ClusterConfig, open_client
from connectome.engine.config import load_config
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.md"
BLOCK = (64, 128, 128)
SIGMA = 8.0


def make_input(directory: str, size: int) -> str:
    address = os.path.join(directory, "raw.zarr")
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:size, :size, :size]
    data = 100 + 50 * np.sin(y / 9.0 + z / 5.0) * np.cos(x / 11.0) + rng.normal(0, 20, (size, size, size))
    create_volume(address, (size,) * 3, "uint8", BLOCK, (8.0, 8.0, 8.0))
    volume = open_volume(address, "r+")
    from connectome.core.geometry import Box

    volume.write(Box.from_shape((size,) * 3), np.clip(data, 0, 255).astype(np.uint8))
    return address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-scaling-")
    times: dict[int, list[float]] = {}
    try:
        raw = make_input(tmp, args.size)
        cfg = os.path.join(tmp, "run.yaml")
        with open(cfg, "w") as f:
            yaml.safe_dump({"input": raw, "output": os.path.join(tmp, "out"), "blocks": {"shape": list(BLOCK)},
                            "stages": [{"stage": "normalize", "params": {"sigma": SIGMA}}]}, f)
        plan = plan_run(load_config(cfg))
        n_blocks = len(plan.stages[0].grid)
        for workers in args.workers:
            times[workers] = []
            config = ClusterConfig(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
            with open_client(config, quiet=True) as client:
                for r in range(args.runs):
                    shutil.rmtree(os.path.join(tmp, "out"), ignore_errors=True)
                    t = time.perf_counter()
                    report = execute(plan, client, overwrite=True, progress=False)[0]
                    times[workers].append(time.perf_counter() - t)
                    assert report.ran == n_blocks
                    print(f"{workers} worker(s), run {r + 1}: {times[workers][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(times[args.workers[0]])
    voxels = args.size ** 3
    lines = [
        "# scaling",
        "",
        f"`normalize` (sigma {SIGMA}, context {int(3 * SIGMA + 0.5)} voxels in y and x) on a {args.size}^3 uint8",
        f"zarr volume, blocks {list(BLOCK)} ({n_blocks} blocks), LocalCluster with 1 thread per worker",
        "process, reused across runs; the stage alone is timed (outputs created, blocks run, markers",
        "written). Median over the runs listed.",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.node()}, {platform.machine()}, {psutil.cpu_count()} CPU cores (shared), "
        f"Python {platform.python_version()}",
        f"- load average at the end (other engineers share the machine): "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- command: `.venv/bin/python benchmarks/scaling.py --runs {args.runs} --size {args.size} "
        f"--workers {' '.join(map(str, args.workers))}`",
        "",
        "| workers | median s | runs (s) | Mvoxel/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for workers, runs in times.items():
        median = statistics.median(runs)
        lines.append(f"| {workers} | {median:.2f} | {', '.join(f'{t:.2f}' for t in runs)} | "
                     f"{voxels / median / 1e6:.1f} | {base / median:.2f}x |")
    load = os.getloadavg()[0]
    if load > psutil.cpu_count():
        lines += ["", f"Note: the load average ({load:.1f}) exceeded the {psutil.cpu_count()} cores during these runs "
                      "(other engineers' jobs), so a second worker had no idle core to use; these figures do not "
                      "measure scaling on idle cores."]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())

"""Two worker pools on a real SLURM: how fast each pool's jobs come and go, and what the scaler costs.

Run: .venv/bin/python benchmarks/pools.py [--runs 3] [--pending 10000]
Needs a running SLURM with a `gpu` partition (bash deploy/local-slurm/start.sh). Records
benchmarks/results/pools.md:
- per run: a GPU stage then a CPU stage of 16 blocks x 0.2 s each on a fresh two-pool cluster; seconds
  from the stage's start to its first finished block (job submission + worker start), the stage's
  wall time, and seconds from the GPU stage's end until its GPU jobs were given back;
- the scaler's cost per check (pool_demand) with `--pending` tasks waiting for a GPU worker.
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

TESTS = str(Path(__file__).resolve().parents[1] / "tests")  # WhereStage lives with the tests
sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))  # and in jobs

from connectome.cluster.client import ClusterConfig, GpuJobsConfig, available_resources, open_client, task_resources  # noqa: E402
from connectome.cluster.pools import pool_demand  # noqa: E402
from connectome.core.geometry import BlockGrid, Box  # noqa: E402
from connectome.engine.markers import DoneMarkers  # noqa: E402
from connectome.engine.runner import run_stage  # noqa: E402

from stages_for_tests import GpuWhereStage, WhereParams, WhereStage  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pools.md"
BLOCKS = 16
SLEEP = 0.2
IDLE = 3.0  # idle_seconds (default 60): short, to time the give-back


def first_block_after(work: str, stage: str, start: float, stop) -> float:
    """Seconds from `start` until the stage's first done-marker appears (polled every 50 ms)."""
    markers = DoneMarkers(work, stage)
    while not stop():
        if markers.done():
            return time.perf_counter() - start
        time.sleep(0.05)
    return float("nan")


def one_run(tmp: str) -> dict[str, float]:
    import threading

    config = ClusterConfig(kind="slurm", interface="lo", maximum_jobs=2, dashboard_address=":0",
                           log_directory=os.path.join(tmp, "logs"), idle_seconds=IDLE,
                           gpu_jobs=GpuJobsConfig(queue="gpu", gpus=1, maximum_jobs=2))
    grid = BlockGrid.for_chunks(Box.from_shape((BLOCKS, 8, 8)), (1, 8, 8), (1, 8, 8))
    work = os.path.join(tmp, "work")
    shutil.rmtree(work, ignore_errors=True)
    out: dict[str, float] = {}
    with open_client(config, quiet=True) as client:
        available = available_resources(client)
        for key, stage in (("gpu", GpuWhereStage(WhereParams(sleep=SLEEP), {}, {})),
                           ("cpu", WhereStage(WhereParams(sleep=SLEEP), {}, {}))):
            finished = threading.Event()
            start = time.perf_counter()
            first: list[float] = []
            watcher = threading.Thread(target=lambda first=first, name=stage.name, start=start, done=finished.is_set:
                                       first.append(first_block_after(work, name, start, done)))
            watcher.start()
            run_stage(stage, grid, client, work, progress=False, resources=task_resources(stage.resources, available))
            out[f"{key}_stage_s"] = time.perf_counter() - start
            finished.set()
            watcher.join()
            out[f"{key}_first_block_s"] = first[0]
            if key == "gpu":
                ended = time.perf_counter()
                while any(n.startswith("gpu-") for n in client.cluster.worker_spec):
                    time.sleep(0.05)
                out["gpu_given_back_s"] = time.perf_counter() - ended
    return out


def demand_cost(pending: int, repeats: int = 20) -> float:
    """Milliseconds per pool_demand call with `pending` GPU tasks that no worker can run yet."""
    from distributed import Client, LocalCluster

    from connectome.cluster.pools import Pool

    with LocalCluster(n_workers=0, dashboard_address=":0", processes=False) as cluster, Client(cluster) as client:
        futures = client.map(lambda x: x, range(pending), resources={"GPU": 1}, pure=False)
        while len(cluster.scheduler.unrunnable) < pending:
            time.sleep(0.05)
        pools = [Pool("cpu", {}, "CPU", 8), Pool("gpu", {}, "GPU", 1)]
        start = time.perf_counter()
        for _ in range(repeats):
            demand = pool_demand(cluster.scheduler, pools)
        seconds = (time.perf_counter() - start) / repeats
        assert demand["gpu"] == pending, demand
        client.cancel(futures)
    return seconds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pending", type=int, default=10000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-pools-")
    try:
        runs = [one_run(tmp) for _ in range(args.runs)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cost = demand_cost(args.pending)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines = [
        "# Two worker pools on SLURM: job turnaround and scaler cost",
        "",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores; single-node SLURM from "
        "deploy/local-slurm (jobs start on this machine, so queue waits are near zero; a real cluster adds its own)",
        f"- command: `.venv/bin/python benchmarks/pools.py --runs {args.runs} --pending {args.pending}`",
        f"- per run: a fresh two-pool cluster (CPU jobs: 1 core, max 2; GPU jobs: `--gres=gpu:1` in partition gpu, "
        f"max 2); a GPU stage then a CPU stage, {BLOCKS} blocks x {SLEEP} s each; medians over {args.runs} runs",
        "",
        "| what | median s |",
        "|---|---|",
        f"| GPU stage: start to first finished block (sbatch + worker start) | {medians['gpu_first_block_s']:.2f} |",
        f"| GPU stage wall time | {medians['gpu_stage_s']:.2f} |",
        f"| GPU jobs given back after the GPU stage ended | {medians['gpu_given_back_s']:.2f} |",
        f"| CPU stage: start to first finished block | {medians['cpu_first_block_s']:.2f} |",
        f"| CPU stage wall time | {medians['cpu_stage_s']:.2f} |",
        "",
        f"Scaler cost: one `pool_demand` check with {args.pending:,} tasks waiting for a GPU worker: "
        f"{cost:.2f} ms (checks run every 0.5 s on the scheduler's event loop).",
        "",
        f"A GPU job leaves after idle_seconds={IDLE:g} (default 60) with all its workers idle, plus the time to retire",
        "its workers and scancel it; the figure above counts from the runner's return, and a job that ran",
        "out of blocks before the stage's last one started counting earlier.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Scheduler cost of the block runner: throughput and scheduler memory for 100,000 tiny blocks, and
the runner's overhead per block for 10,000 empty blocks against plain `client.map` of no-op tasks.

With --huge N (e.g. 1000000), also one pass over N empty blocks: the blocks are walked by tasks of
consecutive blocks (super-blocks), and the scheduler's task count is sampled with its memory.

Run: .venv/bin/python benchmarks/scheduler.py [--runs 3] [--big 100000] [--small 10000] [--huge 1000000]
Records benchmarks/results/scheduler.md. The LocalCluster's scheduler lives in this process, so
its memory is this process's RSS (sampled every 50 ms; the increase over the idle client is shown).
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
import threading
import time
from pathlib import Path

import psutil
from distributed import Client, LocalCluster, wait

from connectome.core.geometry import BlockGrid, Box
from connectome.engine.runner import run_stage
from connectome.engine.stage import StageParams

RESULTS = Path(__file__).resolve().parent / "results" / "scheduler.md"
TESTS = str(Path(__file__).resolve().parents[1] / "tests")  # NoopStage lives with the tests
sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))  # and in workers
from stages_for_tests import NoopStage  # noqa: E402


def noop(i):
    return i


class RssPeak:
    """Peak RSS of the scheduler's process while the block runs (sampled every 50 ms)."""

    def __init__(self, client: Client, scheduler=None):
        self.client = client
        self.scheduler = scheduler  # the in-process Scheduler, whose task count is sampled too
        self.peak = 0
        self.peak_tasks = 0
        self._stop = threading.Event()

    def _sample(self):
        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            if self.scheduler is not None:
                self.peak_tasks = max(self.peak_tasks, len(self.scheduler.tasks))
            time.sleep(0.05)

    def __enter__(self):
        self.pid = self.client.run_on_scheduler(os.getpid)
        self.start = psutil.Process(self.pid).memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_blocks(client: Client, n: int, work: str, scheduler=None, rss_out: list | None = None
               ) -> tuple[float, int, int, int]:
    """Seconds, tasks, start RSS and peak RSS of one runner pass over n fresh empty blocks."""
    shutil.rmtree(work, ignore_errors=True)
    grid = BlockGrid.for_chunks(Box.from_shape((n, 1, 1)), (1, 1, 1), (1, 1, 1))
    with RssPeak(client, scheduler) as rss:
        if rss_out is not None:
            rss_out.append(rss)
        t = time.perf_counter()
        report = run_stage(NoopStage(StageParams(), {}, {}), grid, client, work, progress=False)
        seconds = time.perf_counter() - t
    assert report.ran == n
    return seconds, report.tasks, rss.start, rss.peak


def plain_map(client: Client, n: int) -> float:
    t = time.perf_counter()
    futures = client.map(noop, range(n), pure=False)
    wait(futures)
    seconds = time.perf_counter() - t
    del futures
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--huge", type=int, default=0, help="also one pass over this many blocks (e.g. 1000000)")
    args = parser.parse_args()
    huge = None
    tmp = tempfile.mkdtemp(prefix="bench-scheduler-")
    rows = {"big": [], "small": [], "map": []}
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as cluster, \
                Client(cluster) as client:
            client.run(lambda: None)
            for r in range(args.runs):
                rows["small"].append(run_blocks(client, args.small, os.path.join(tmp, f"small{r}")))
                rows["map"].append(plain_map(client, args.small))
                print(f"run {r + 1}: runner {args.small} blocks {rows['small'][-1][0]:.2f} s "
                      f"({rows['small'][-1][1]} tasks), client.map {rows['map'][-1]:.2f} s", flush=True)
            for r in range(args.runs):
                rows["big"].append(run_blocks(client, args.big, os.path.join(tmp, f"big{r}")))
                s, tasks, start, peak = rows["big"][-1]
                print(f"run {r + 1}: runner {args.big} blocks {s:.2f} s ({tasks} tasks), "
                      f"scheduler RSS {start / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB", flush=True)
            if args.huge:
                sampled: list = []
                huge = (*run_blocks(client, args.huge, os.path.join(tmp, "huge"), cluster.scheduler, sampled),
                        sampled[0].peak_tasks)
                print(f"runner {args.huge} blocks {huge[0]:.2f} s ({huge[1]} tasks, at most {huge[4]} held by "
                      f"the scheduler at once), RSS {huge[2] / 2**20:.0f} -> peak {huge[3] / 2**20:.0f} MiB",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    small_s = statistics.median(r[0] for r in rows["small"])
    map_s = statistics.median(rows["map"])
    big_s = statistics.median(r[0] for r in rows["big"])
    big_tasks = statistics.median(r[1] for r in rows["big"])
    small_tasks = statistics.median(r[1] for r in rows["small"])
    growth = statistics.median((r[3] - r[2]) / 2**20 for r in rows["big"])
    peak = max(r[3] for r in rows["big"]) / 2**20
    lines = [
        "# scheduler",
        "",
        "Runner cost with no work in the blocks (a no-op stage without volumes; done-markers written",
        "as for any stage, on local disk) on a LocalCluster of 2 worker processes x 1 thread, against",
        "plain `client.map` of no-op tasks. Median over the runs listed. The scheduler runs inside the",
        "benchmark process, so its memory is that process's RSS (peak sampled every 50 ms).",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.node()}, {platform.machine()}, {psutil.cpu_count()} CPU cores (shared), "
        f"Python {platform.python_version()}",
        f"- load average at the end (other engineers share the machine): "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- command: `.venv/bin/python benchmarks/scheduler.py --runs {args.runs} --big {args.big} --small {args.small}"
        + (f" --huge {args.huge}" if args.huge else "") + "`",
        "",
        "| what | median s | runs (s) | tasks | per block | blocks/s |",
        "|---|---|---|---|---|---|",
        f"| runner, {args.small} empty blocks | {small_s:.2f} | {', '.join(f'{r[0]:.2f}' for r in rows['small'])} "
        f"| {small_tasks:.0f} | {small_s / args.small * 1e3:.3f} ms | {args.small / small_s:,.0f} |",
        f"| client.map, {args.small} no-op tasks | {map_s:.2f} | {', '.join(f'{r:.2f}' for r in rows['map'])} "
        f"| {args.small} | {map_s / args.small * 1e3:.3f} ms | {args.small / map_s:,.0f} |",
        f"| runner, {args.big} empty blocks | {big_s:.2f} | {', '.join(f'{r[0]:.2f}' for r in rows['big'])} "
        f"| {big_tasks:.0f} | {big_s / args.big * 1e3:.3f} ms | {args.big / big_s:,.0f} |",
        "",
        f"Scheduler memory, {args.big} blocks: RSS grew by {growth:.0f} MiB (median) during the stage, "
        f"peak {peak:.0f} MiB (client + scheduler process).",
        "",
        f"Target: runner overhead <= 0.17 ms per block for {args.small} empty blocks: "
        f"{'met' if small_s / args.small * 1e3 <= 0.17 else 'NOT met'} ({small_s / args.small * 1e3:.3f} ms).",
    ]
    if huge is not None:
        s, tasks, start, peak, held = huge
        lines += [
            "",
            f"One pass over {args.huge:,} empty blocks (a layout of {args.huge:,} blocks): {s:.1f} s, "
            f"{s / args.huge * 1e3:.3f} ms per block, {tasks} tasks (super-blocks of consecutive blocks that one "
            f"task walks), at most {held} tasks held by the scheduler at once; client + scheduler RSS "
            f"{start / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB (+{(peak - start) / 2**20:.0f} MiB). "
            f"Command: `.venv/bin/python benchmarks/scheduler.py --runs {args.runs} --big {args.big} "
            f"--small {args.small} --huge {args.huge}`.",
        ]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())

"""Done-markers that scale: cost per no-op block, on disk and in memory, against one file per block.

Measures (median over --runs):
1. marker bookkeeping alone, per block: the engine's markers (`MarkerWriter.add` for every block,
   a file per task every 2 s, then `compact`) against the layout before (one file per block,
   created empty, then `os.listdir` to find them), for --blocks blocks;
2. the runner end to end on no-op blocks (`run_stage` of a stage without volumes on a LocalCluster
   of 2 worker processes), per block, for --blocks blocks;
3. `status` of a stage of --status-blocks finished blocks (compacted marker files: count and
   verification), and of the same number of per-block files where that is affordable;
4. the worker's side of the runner alone (`run_batch` over --blocks blocks in this process);
each in a folder on the disk (/tmp) and in memory (/dev/shm). Anchor (the issue): daisy 2 keeps
one byte per block in a chunked array, 0.17 ms per no-op block on this kind of machine; target
<= 0.1 ms per no-op block on disk and in memory alike.

Run: .venv/bin/python benchmarks/markers.py [--runs 3] [--blocks 100000] [--status-blocks 10000000]
Records benchmarks/results/markers.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from connectome.core.geometry import BlockGrid, Box
from connectome.engine.markers import SUPER, DoneMarkers
from connectome.engine.runner import run_batch, run_stage
from connectome.engine.stage import StageParams

RESULTS = Path(__file__).resolve().parent / "results" / "markers.md"
TESTS = str(Path(__file__).resolve().parents[1] / "tests")  # NoopStage lives with the tests
sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
from stages_for_tests import NoopStage  # noqa: E402


def engine_markers(root: str, n: int) -> tuple[float, float]:
    """(seconds to mark n blocks as one task would, in batches of SUPER, and compact; seconds to count them)."""
    markers = DoneMarkers(root, "bench")
    markers.claim({"blocks": n})
    t = time.perf_counter()
    for first in range(0, n, SUPER):
        w = markers.writer(f"t{first}")
        for i in range(first, min(first + SUPER, n)):
            w.add(i, None)
        w.flush()
    markers.compact()
    write = time.perf_counter() - t
    t = time.perf_counter()
    assert markers.count() == n
    return write, time.perf_counter() - t


def file_per_block(root: str, n: int) -> tuple[float, float]:
    """The layout before: one empty file per finished block, then a directory listing to count them."""
    directory = os.path.join(root, "per-block")
    os.makedirs(directory)
    t = time.perf_counter()
    for i in range(n):
        os.close(os.open(os.path.join(directory, str(i)), os.O_CREAT | os.O_WRONLY, 0o644))
    write = time.perf_counter() - t
    t = time.perf_counter()
    assert len({int(name) for name in os.listdir(directory) if name.isdigit()}) == n
    return write, time.perf_counter() - t


def runner(client, root: str, n: int) -> tuple[float, int]:
    grid = BlockGrid.for_chunks(Box.from_shape((n, 1, 1)), (1, 1, 1), (1, 1, 1))
    t = time.perf_counter()
    report = run_stage(NoopStage(StageParams(), {}, {}), grid, client, root, progress=False)
    seconds = time.perf_counter() - t
    assert report.ran == n
    return seconds, report.tasks


def in_process(root: str, n: int) -> float:
    """Seconds for one worker's side of the runner (`run_batch`: block geometry, markers) in this process."""
    grid = BlockGrid.for_chunks(Box.from_shape((n, 1, 1)), (1, 1, 1), (1, 1, 1))
    DoneMarkers(root, "noop").claim({"blocks": n})
    t = time.perf_counter()
    run_batch(NoopStage(StageParams(), {}, {}), grid, list(range(n)), root, "one")
    return time.perf_counter() - t


def status_of(root: str, n: int) -> tuple[float, float, int, float]:
    """(seconds to write n finished blocks' markers, seconds for count + lost_blocks, marker files,
    seconds of the `connectome status` command end to end)."""
    markers = DoneMarkers(root, "status")
    markers.claim({"blocks": n})
    t = time.perf_counter()
    for first in range(0, n, SUPER):  # as compaction leaves them: one file per super-block
        w = markers.writer(f"t{first}")
        w.indices = list(range(first, min(first + SUPER, n)))
        w.flush()
    markers.compact()
    write = time.perf_counter() - t
    t = time.perf_counter()
    assert markers.count() == n and not markers.lost_blocks()
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "connectome.cli", "status", root], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    return write, seconds, len(os.listdir(markers.directory)) - 1, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--status-blocks", type=int, default=10_000_000)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    places = {"disk (/tmp)": "/tmp", "memory (/dev/shm)": "/dev/shm"}
    rows: dict[str, dict[str, list]] = {p: {"engine": [], "perfile": [], "runner": [], "batch": [],
                                                     "status": []} for p in places}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as cluster, \
            Client(cluster) as client:
        client.run(lambda: None)
        for place, base in places.items():
            for r in range(args.runs):
                root = tempfile.mkdtemp(prefix="bench-markers-", dir=base)
                try:
                    rows[place]["engine"].append(engine_markers(os.path.join(root, "e"), args.blocks))
                    rows[place]["perfile"].append(file_per_block(root, args.blocks))
                    rows[place]["runner"].append(runner(client, os.path.join(root, "r"), args.blocks))
                    rows[place]["batch"].append(in_process(os.path.join(root, "b"), args.blocks))
                    if r == 0:
                        rows[place]["status"].append(status_of(os.path.join(root, "s"), args.status_blocks))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                e, f, run = rows[place]["engine"][-1], rows[place]["perfile"][-1], rows[place]["runner"][-1]
                print(f"{place} run {r + 1}: engine markers {e[0]:.3f} s + count {e[1]:.3f} s; per-block files "
                      f"{f[0]:.3f} s + count {f[1]:.3f} s; runner {run[0]:.2f} s ({run[1]} tasks)", flush=True)

    n = args.blocks
    ms = lambda s: f"{s / n * 1e3:.4f}"  # noqa: E731
    lines = [
        "# markers",
        "",
        "Done-markers per no-op block: the engine's markers (a few files per task, compacted into one file",
        f"per super-block of {SUPER} blocks) against one file per block (the layout before), and the block",
        "runner end to end on blocks that do nothing (LocalCluster, 2 worker processes x 1 thread).",
        "Medians over the runs listed. Anchor: daisy 2, 0.17 ms per no-op block (issue 15, this kind of",
        "machine); target <= 0.1 ms per no-op block on disk and in memory.",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.node()}, {platform.machine()}, {psutil.cpu_count()} CPU cores (shared), "
        f"Python {platform.python_version()}",
        f"- load average at the end (other engineers share the machine): "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- command: `.venv/bin/python benchmarks/markers.py --runs {args.runs} --blocks {n} "
        f"--status-blocks {args.status_blocks}`",
        "",
        f"| where | what ({n:,} blocks) | median s | runs (s) | ms per block |",
        "|---|---|---|---|---|",
    ]
    for place in places:
        r = rows[place]
        for label, values in (
            ("engine markers: mark + compact", [e[0] for e in r["engine"]]),
            ("engine markers: count", [e[1] for e in r["engine"]]),
            ("one file per block: mark", [f[0] for f in r["perfile"]]),
            ("one file per block: count (listdir)", [f[1] for f in r["perfile"]]),
            ("worker side alone (`run_batch` in one process)", r["batch"]),
            ("runner end to end, no-op blocks", [x[0] for x in r["runner"]]),
        ):
            med = statistics.median(values)
            lines.append(f"| {place} | {label} | {med:.3f} | {', '.join(f'{v:.3f}' for v in values)} | {ms(med)} |")
    lines += ["", f"`status` of one stage with {args.status_blocks:,} finished blocks (count and verification "
              "of the compacted marker files, no output chunks to check):", "",
              "| where | marker files | write + compact s | count + verify s | `connectome status` s |",
              "|---|---|---|---|---|"]
    for place in places:
        w, s, files, cli = rows[place]["status"][0]
        lines.append(f"| {place} | {files:,} | {w:.2f} | {s:.2f} | {cli:.2f} |")
    runner_ms = {p: statistics.median(x[0] for x in rows[p]["runner"]) / n * 1e3 for p in places}
    met = all(v <= 0.1 for v in runner_ms.values())
    lines += ["", f"Target <= 0.1 ms per no-op block end to end: {'met' if met else 'NOT met'} "
              f"({', '.join(f'{p}: {v:.4f} ms' for p, v in runner_ms.items())})."]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

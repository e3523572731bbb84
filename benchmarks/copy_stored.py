"""`connectome ingest` of a zarr whose chunks and codec already match the destination's: the
chunk files copied as stored, against `cp -r` of the same store and against the copy stage
(decode and encode every chunk, what ingest did before).

Data: the real FlyEM medulla raw (125 x 250 x 250, shared/data) tiled to --size^3 uint8, zarr v3
zstd level 1 (the destination's codec), chunks 64 x 128 x 128. Every run copies into a fresh
destination; the source stays in the page cache (all three read it the same way).

Run: .venv/bin/python benchmarks/copy_stored.py [--runs 3] [--size 512]
Records benchmarks/results/copy_stored.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "copy_stored.md"
CHUNK = (64, 128, 128)


def make_source(path: str, size: int) -> int:
    from connectome.io import create_volume

    raw = np.load(REPO.parent / "shared" / "data" / "flyem_medulla_fib_train" / "medulla_train.npz")["raw"]
    reps = [-(-size // s) for s in raw.shape]
    data = np.tile(raw, reps)[:size, :size, :size]
    vol = create_volume(path, data.shape, np.uint8, CHUNK, (10.0, 10.0, 10.0))
    vol.write(vol.box, data)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(command: list[str], inner: list | None = None) -> float:
    t = time.perf_counter()
    done = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if inner is not None:  # the copy alone, as the command's --json reports it
        inner.append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-copy-stored-", dir="/tmp")
    cli = [sys.executable, "-m", "connectome.cli"]
    copy_alone: list[float] = []
    rows: dict[str, list[float]] = {"cp -r": [], "ingest, chunks copied as stored": [],
                                    "ingest through the copy stage (decode + encode), 2 workers": []}
    try:
        src = os.path.join(tmp, "src")
        stored = make_source(src, args.size)
        subprocess.run(["cat", *map(str, Path(src).rglob("c/**/*"))], stdout=subprocess.DEVNULL)  # warm the cache
        for r in range(args.runs):
            rows["cp -r"].append(timed(["cp", "-r", src, os.path.join(tmp, f"cp{r}")]))
            rows["ingest, chunks copied as stored"].append(
                timed([*cli, "ingest", src, os.path.join(tmp, f"stored{r}"), "--chunk-shape", *map(str, CHUNK),
                       "--json"], copy_alone))
            rows["ingest through the copy stage (decode + encode), 2 workers"].append(
                timed([*cli, "run", _stage_config(tmp, src, r), "--no-progress", "--workers", "2"]))
            for name in (f"cp{r}", f"stored{r}", f"stage{r}"):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cp = statistics.median(rows["cp -r"])
    lines = [
        "# copy as stored",
        "",
        "`connectome ingest` of a zarr whose chunks and codec match the destination's copies the chunk",
        "files unchanged; against `cp -r` of the same store and against the copy stage that decodes and",
        "encodes every chunk (what ingest did before for this case). Wall time of the whole command",
        "(Python start and imports included); medians over the runs listed; source in the page cache.",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.node()}, {platform.machine()}, {psutil.cpu_count()} CPU cores (shared), "
        f"Python {platform.python_version()}",
        f"- data: FlyEM medulla raw tiled to {args.size}^3 uint8 ({args.size ** 3 / 1e6:.0f} MB), stored "
        f"{stored / 1e6:.0f} MB (zstd 1), chunks {list(CHUNK)}",
        f"- load average at the end (shared machine): {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- command: `.venv/bin/python benchmarks/copy_stored.py --runs {args.runs} --size {args.size}`",
        "",
        "| method | median s | runs (s) | vs cp -r |",
        "|---|---|---|---|",
    ]
    for name, values in rows.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {med / cp:.2f}x |")
    alone = statistics.median(copy_alone)
    lines += ["", f"Of the command copying as stored, the copy itself (lock, create, {len(copy_alone)} runs: "
              f"{', '.join(f'{v:.2f}' for v in copy_alone)} s) takes {alone:.2f} s, {alone / cp:.2f}x `cp -r`; the "
              "rest is Python's start and imports (zarr)."]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print(text)
    return 0


def _stage_config(tmp: str, src: str, r: int) -> str:
    import yaml

    path = os.path.join(tmp, f"stage{r}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"input": src, "output": os.path.join(tmp, f"stage{r}"),
                        "blocks": {"shape": [64, 256, 256], "chunk_shape": list(CHUNK)},
                        "cluster": {"dashboard_address": ":0"},
                        "stages": [{"stage": "copy", "outputs": {"copy": "copy"}}]}, f)
    return path


if __name__ == "__main__":
    sys.exit(main())

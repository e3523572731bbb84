"""Time of the `reorder_sections` stage (serial sections copied into a new order) on a zarr volume of
128 x 1024 x 1024 uint8 in chunks of 64 x 256 x 256 (random values: zstd cannot shrink them, so decompression
counts fully), blocks of 64 x 512 x 512, 2 single-threaded workers: a random permutation and a stack in order but
for two swapped pairs. Writes benchmarks/results/reorder_stage.md.

    .venv/bin/python benchmarks/reorder_stage.py [--tmp DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from connectome.cluster.client import ClusterConfig
from connectome.core.geometry import Box
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume

ROOT = Path(__file__).resolve().parents[1]
SHAPE, CHUNK, BLOCK = (128, 1024, 1024), (64, 256, 256), (64, 512, 512)


def main() -> None:
    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reorder_stage.md"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="reorder-", dir=args.tmp)
    rng = np.random.default_rng(0)
    raw = create_volume(os.path.join(root, "raw"), SHAPE, np.uint8, CHUNK, (40, 4, 4))
    raw.write(Box((0, 0, 0), SHAPE), rng.integers(0, 255, SHAPE, dtype=np.uint8))
    swaps = list(range(SHAPE[0]))
    swaps[10], swaps[11], swaps[70], swaps[71] = 11, 10, 71, 70
    orders = {"random permutation": rng.permutation(SHAPE[0]).tolist(), "two swapped pairs": swaps}
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for name, order in orders.items():
            config = RunConfig(input=os.path.join(root, "raw"), output=os.path.join(root, name.replace(" ", "-")),
                               cluster=ClusterConfig(), blocks=BlocksConfig(shape=BLOCK, chunk_shape=CHUNK),
                               stages=[StageConfig(stage="reorder_sections", params={"order": order})])
            t = time.perf_counter()
            execute(plan_run(config), client, progress=False)
            seconds = time.perf_counter() - t
            rows.append(f"| {name} | {seconds:.1f} | {np.prod(SHAPE) / seconds / 1e6:.1f} |")
            print(rows[-1], flush=True)
    shutil.rmtree(root, ignore_errors=True)
    lines = ["# `reorder_sections`: time", "",
             f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; command: "
             "`.venv/bin/python benchmarks/reorder_stage.py`",
             f"- a zarr of {' x '.join(map(str, SHAPE))} uint8 (random values), chunks {' x '.join(map(str, CHUNK))}, "
             f"blocks {' x '.join(map(str, BLOCK))}, 2 workers of one thread; seconds of the stage's run "
             "(`execute`, the cluster already up)", "",
             "| order | seconds | Mvx/s |", "|---|---|---|", *rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()

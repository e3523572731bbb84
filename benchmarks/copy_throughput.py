"""Blockwise zarr-to-zarr copy (the ingest stage on `--cluster local`, 1 and 2 worker processes) vs a
single-process numpy copy.

The source is ~1 GB of uint8 EM (the FlyEM medulla crop tiled to 1000^3 when ../shared/data is
there, else smooth noise), stored as zstd-compressed zarr v3 chunks of 64 x 128 x 128.
Usage: .venv/bin/python benchmarks/copy_throughput.py [--size 1000] [--runs 3] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from connectome.core.geometry import BlockGrid, Box
from connectome.engine.runner import run_stage
from connectome.image.stages import CopyParams, CopyStage
from connectome.io import create_volume, open_volume

CHUNK = (64, 128, 128)
BLOCK = (64, 256, 256)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flyem_medulla_fib_train" / "medulla_train.npz"


def make_source(path: str, size: int) -> str:
    if DATA.exists():
        tile = np.load(DATA)["raw"]
    else:
        from scipy.ndimage import gaussian_filter

        tile = (gaussian_filter(np.random.default_rng(0).random((125, 250, 250)), 2) * 255).astype(np.uint8)
    vol = create_volume(path, (size,) * 3, np.uint8, CHUNK, (10, 10, 10), overwrite=True)
    for block in BlockGrid.for_chunks(vol.box, BLOCK, CHUNK):
        reps = [-(-s // t) + 1 for s, t in zip(block.write_box.shape, tile.shape)]
        big = np.tile(tile, reps)
        o = [off % t for off, t in zip(block.write_box.offset, tile.shape)]
        vol.write(block.write_box, big[tuple(slice(a, a + s) for a, s in zip(o, block.write_box.shape))])
    return path


def numpy_copy(src: str, dst: str) -> float:
    start = time.perf_counter()
    s = open_volume(src)
    data = s.read(s.box)
    d = create_volume(dst, s.shape, s.dtype, CHUNK, s.meta.voxel_size, overwrite=True)
    d.write(d.box, data)
    return time.perf_counter() - start


def blockwise_copy(client, src: str, dst: str, work: str) -> float:
    start = time.perf_counter()
    s = open_volume(src)
    create_volume(dst, s.shape, s.dtype, CHUNK, s.meta.voxel_size, overwrite=True)
    shutil.rmtree(os.path.join(work, ".connectome"), ignore_errors=True)
    stage = CopyStage(CopyParams(), {"raw": src}, {"copy": dst})
    run_stage(stage, BlockGrid.for_chunks(Box.from_shape(s.shape), BLOCK, CHUNK), client, work, progress=False)
    return time.perf_counter() - start


def main() -> None:
    from distributed import Client

    from connectome.cluster.client import ClusterConfig, make_local_cluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the volumes go (default: the system's temp dir); "
                        "/dev/shm takes the disk out of the measurement")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="copybench-", dir=args.dir)
    src = make_source(os.path.join(tmp, "src"), args.size)
    mb = args.size ** 3 / 1e6
    single = [numpy_copy(src, os.path.join(tmp, "np")) for _ in range(args.runs)]
    blockwise = {}
    for workers in (1, 2):  # the cluster `connectome ingest --cluster local --workers N` starts
        config = ClusterConfig(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
        with make_local_cluster(config) as cluster, Client(cluster) as client:
            blockwise[workers] = [blockwise_copy(client, src, os.path.join(tmp, "bw"), os.path.join(tmp, "work"))
                                  for _ in range(args.runs)]
    np.testing.assert_array_equal(open_volume(os.path.join(tmp, "bw")).read(Box((0, 0, 0), (64, 256, 256))),
                                  open_volume(src).read(Box((0, 0, 0), (64, 256, 256))))
    shutil.rmtree(tmp)
    t1, t2 = statistics.median(single), statistics.median(blockwise[2])
    lines = [
        "# Blockwise zarr-to-zarr copy vs single-process numpy copy",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; command: `.venv/bin/python benchmarks/copy_throughput.py --size {args.size} --runs {args.runs}"
        f"{f' --dir {args.dir}' if args.dir else ''}`; volumes in {os.path.dirname(tmp)}",
        f"- data: {args.size}^3 uint8 = {mb:.0f} MB, zarr v3 zstd, chunks {list(CHUNK)}, blocks {list(BLOCK)}",
        "",
        "| method | median s | MB/s | runs (s) |",
        "|---|---|---|---|",
        f"| numpy, 1 process (read all, write all) | {t1:.2f} | {mb / t1:.0f} | {', '.join(f'{t:.2f}' for t in single)} |",
        *(f"| connectome copy stage, {n} worker{'s' if n > 1 else ''} | {statistics.median(runs):.2f} | "
          f"{mb / statistics.median(runs):.0f} | {', '.join(f'{t:.2f}' for t in runs)} |" for n, runs in blockwise.items()),
        "",
        f"speed-up with 2 workers: {t1 / t2:.2f}x (target >= 1.5x); 1 -> 2 workers: "
        f"{statistics.median(blockwise[1]) / t2:.2f}x",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    name = "copy_throughput_shm.md" if args.dir == "/dev/shm" else "copy_throughput.md"
    Path(__file__).with_name("results").joinpath(name).write_text(text)


if __name__ == "__main__":
    main()

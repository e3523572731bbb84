"""What recording the input files a stage's blocks read costs (engine.markers input tables, 2026-12-06): the worker
side per block (`runner._read_files`: the files of the read box and one stat each), the marker files (one table per
task file, folded into one per super-block of 4096 blocks), and the check of a re-run
(`staleness.changed_input_blocks`: one stat per recorded file) with nothing changed and with one file changed.

    .venv/bin/python benchmarks/input_records.py [--grid 4 32 32] [--chunk 16 64 64] [--where /dev/shm] [--out FILE]

A zarr raw of grid x block shape voxels (blocks 16 x 128 x 128, chunks `--chunk`, 16 voxels of context in y and x)
is written once (a constant: its chunks compress to almost nothing); every block of the grid is then recorded as a
stage's run would record it, without computing anything.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from connectome.core.geometry import BlockGrid, Box, Context
from connectome.engine.markers import DoneMarkers, input_record
from connectome.engine.staleness import changed_input_blocks
from connectome.io import create_volume, open_volume

BLOCK = (16, 128, 128)


def _size(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs=3, type=int, default=[4, 32, 32], metavar=("Z", "Y", "X"))
    parser.add_argument("--chunk", nargs=3, type=int, default=[16, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--where", default="/dev/shm", help="folder for the scratch volume and markers")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "input_records.md"))
    args = parser.parse_args()
    shape = tuple(g * b for g, b in zip(args.grid, BLOCK))
    root = tempfile.mkdtemp(dir=args.where, prefix="input-records-")
    try:
        raw = create_volume(os.path.join(root, "raw"), shape, np.uint8, tuple(args.chunk), (8.0, 8.0, 8.0))
        for z in range(0, shape[0], args.chunk[0]):  # every chunk file written, slab by slab
            slab = Box.of((z, 0, 0), (args.chunk[0], *shape[1:]))
            raw.write(slab, np.ones(slab.shape, np.uint8))
        volume = open_volume(raw.address)
        grid = BlockGrid(Box.from_shape(shape), BLOCK, Context((0, 16, 16), (0, 16, 16)))
        n = len(grid)

        start = time.perf_counter()
        tables = []
        for i in range(n):
            base, keys = volume.source_files(grid.block(i).read_box)
            tables.append({key: input_record(os.path.join(base, key)) for key in keys})
        worker = time.perf_counter() - start
        files_per_block = sum(len(t) for t in tables) / n

        markers = DoneMarkers(os.path.join(root, "out"), "stage")
        markers.claim({"stage": "normalize", "inputs": {"raw": raw.address}, "layout": grid.layout(), "blocks": n})
        start = time.perf_counter()
        for first in range(0, n, 256):  # tasks of 256 blocks, each one marker file
            writer = markers.writer(f"t{first}")
            for i in range(first, min(n, first + 256)):
                writer.add(i, None, None, None, {"raw": tables[i]}, {"raw": base})
            writer.flush()
        markers.compact()
        mark = time.perf_counter() - start
        size = _size(markers.directory)

        start = time.perf_counter()
        unchanged, _ = changed_input_blocks(markers)
        check = time.perf_counter() - start
        assert unchanged == {}, len(unchanged)
        os.utime(os.path.join(base, keys[0]))  # the last block's first file touched: its readers are found
        start = time.perf_counter()
        changed, _ = changed_input_blocks(markers)
        check_changed = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("worker side: files of the read box + one stat each (`_read_files`)", worker, n),
        ("marker files: 256-block tasks written, then compacted", mark, n),
        ("re-run check, nothing changed (`changed_input_blocks`)", check, n),
        ("re-run check, one file touched (its readers found from the layout)", check_changed, n),
    ]
    lines = [
        "# Recording the input files blocks read",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores "
        f"(shared); scratch in {args.where}",
        f"- command: `.venv/bin/python benchmarks/input_records.py --grid {' '.join(map(str, args.grid))} --chunk "
        f"{' '.join(map(str, args.chunk))} --where {args.where}`",
        f"- {n} blocks of {' x '.join(map(str, BLOCK))} (context 16 in y and x), raw chunks "
        f"{' x '.join(map(str, args.chunk))}: {files_per_block:.1f} input files per block, "
        f"{len(changed)} block(s) read the touched file; marker files {size / 1e6:.1f} MB "
        f"({size / n:.0f} bytes per block)",
        "",
        "| what | seconds | ms per block |",
        "|---|---|---|",
        *(f"| {what} | {s:.3f} | {1000 * s / count:.4f} |" for what, s, count in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

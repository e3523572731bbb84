"""The synapse annotation layer (connectome.export.annotations.write_annotations): write time and peak memory
against the number of synapses, the vectorised writer against the per-synapse one it replaced.

    .venv/bin/python benchmarks/annotations.py [--quick] [--sizes N ...] [--old-sizes N ...]

Synapses: random positions in a 1000 x 10000 x 10000 voxel volume, pre and post among segment ids
100000..999999, score and partner_score, ids 1..n (seed 0). Each case runs in its own process; its peak
memory is the rise of the process's RSS (sampled every 2 ms) over the table already in memory. The old writer
is `connectome/export/annotations.py` and `sharding.py` of --old-rev (read with `git show`), run only for
--old-sizes (it spends about 43 us per synapse); where both ran, their layers are compared byte for byte.
Prints a table and writes benchmarks/results/annotations.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "158c1b39594e43df86f2d0ac3d067b1d801546e3"  # the last commit with the per-synapse writer
SIZES = [10**5, 10**6, 10**7]
QUICK = SIZES[:2]
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def table(n: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"z": rng.integers(0, 1000, n), "y": rng.integers(0, 10000, n), "x": rng.integers(0, 10000, n),
            "pre": rng.integers(100000, 1000000, n).astype(np.uint64),
            "post": rng.integers(100000, 1000000, n).astype(np.uint64),
            "score": rng.random(n), "partner_score": rng.random(n)}


def old_writer(rev: str):
    """write_annotations of `rev`, with the sharding module of `rev` (both read with git show)."""
    import types

    modules = {}
    for name in ("sharding", "annotations"):
        source = subprocess.run(["git", "show", f"{rev}:connectome/export/{name}.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        module = types.ModuleType(f"old_{name}")
        exec(compile(source, f"{rev[:7]}:connectome/export/{name}.py", "exec"), module.__dict__)
        modules[name] = module
    modules["annotations"].sharding = modules["sharding"]  # not today's
    return modules["annotations"].write_annotations


def layer_digest(directory: str) -> tuple[str, int, int]:
    """sha256 over every file's relative path and bytes, the file count and total bytes."""
    import hashlib

    digest, files, size = hashlib.sha256(), 0, 0
    for base, dirs, names in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            data = Path(path).read_bytes()
            digest.update(os.path.relpath(path, directory).encode() + b"\0" + data)
            files, size = files + 1, size + len(data)
    return digest.hexdigest(), files, size


def one_case(n: int, version: str, rev: str, tmp: str) -> dict:
    """Inside a child process: make the table, then time one write of the layer."""
    import shutil
    import time

    from connectome.export.annotations import write_annotations

    from peak_memory import peak_rise_mb

    write = old_writer(rev) if version == "old" else write_annotations
    rows = table(n)
    directory = os.path.join(tmp, f"{version}_{n}")
    with peak_rise_mb() as rise:
        start = time.perf_counter()
        write(directory, rows, (40.0, 4.0, 4.0))
        seconds = time.perf_counter() - start
    digest, files, size = layer_digest(directory)
    info = json.loads(Path(directory, "info").read_text())
    shards = {key: 2 ** spec["shard_bits"] for key, spec in
              [("by_id", info["by_id"]["sharding"])] + [(r["key"], r["sharding"]) for r in info["relationships"]]}
    shutil.rmtree(directory)
    return {"n": n, "version": version, "seconds": seconds, "peak_rise_mb": rise[0],
            "table_mb": sum(v.nbytes for v in rows.values()) / 2**20, "files": files, "layer_mb": size / 2**20,
            "shards": shards, "digest": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 and 1e6 synapses only")
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of synapses (default 1e5 1e6 1e7)")
    parser.add_argument("--old-sizes", type=int, nargs="*", default=[10**5],
                        help="sizes the old writer also writes (default 1e5)")
    parser.add_argument("--old-rev", default=OLD_REV, help="the commit whose writer is 'old'")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        n, version, rev, tmp = json.loads(args.case)
        print(json.dumps(one_case(n, version, rev, tmp)))
        return
    import shutil
    import tempfile

    sizes = args.sizes or (QUICK if args.quick else SIZES)
    rows = []
    load = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="annotations-bench-")
    try:
        for n in sizes:
            for version in (("old", "new") if n in args.old_sizes else ("new",)):
                out = subprocess.run([sys.executable, __file__, "--case", json.dumps([n, version, args.old_rev, tmp])],
                                     check=True, capture_output=True, text=True, cwd=ROOT,
                                     env={**os.environ, **SINGLE_THREAD})
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{n:>10} {version:<4} {row['seconds']:8.2f} s {row['seconds'] / n * 1e6:7.2f} us/synapse "
                      f"+{row['peak_rise_mb']:.0f} MB  layer {row['layer_mb']:.0f} MB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    digests: dict[int, set[str]] = {}
    for r in rows:
        digests.setdefault(r["n"], set()).add(r["digest"])
    command = " ".join(["benchmarks/annotations.py", *sys.argv[1:]])
    lines = [
        "# annotations: the synapse annotation layer's write time and memory against the number of synapses", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load:.1f} before / {os.getloadavg()[0]:.1f} after (shared)",
        f"- command: `.venv/bin/python {command}` (one thread; each case in its own process)",
        "- synapses: random positions in 1000 x 10000 x 10000 voxels, pre and post among ids 100000..999999, "
        "score and partner_score, seed 0; written to local disk",
        f"- old: the per-synapse writer of {args.old_rev[:10]} (its annotations.py and sharding.py); new: this tree",
        "- peak MB: rise of the process's RSS (sampled every 2 ms) over the table already in memory",
        "- same bytes: where old and new both ran, whether every file of their layers is identical (sha256)",
        "", "| synapses | writer | seconds | us per synapse | peak MB over table | table MB | layer MB | files "
        "| shards (by_id, rel_pre, rel_post) | same bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = ("yes" if len(digests[r["n"]]) == 1 else "NO") if args.old_sizes and r["n"] in args.old_sizes else "-"
        lines.append(f"| {r['n']:.0e} | {r['version']} | {r['seconds']:.2f} | {r['seconds'] / r['n'] * 1e6:.2f} | "
                     f"{r['peak_rise_mb']:.0f} | {r['table_mb']:.0f} | {r['layer_mb']:.0f} | {r['files']} | "
                     f"{', '.join(str(r['shards'][k]) for k in ('by_id', 'rel_pre', 'rel_post'))} | {same} |")
    lines += ["", "The old writer built each synapse's by_id entry in a Python loop, hashed every key in pure "
              "Python (cloud-volume's murmurhash, tens of us a key) and scanned all values once per shard; the new "
              "one hashes all keys at once (numpy murmurhash3_x86_128), sorts once (shard, minishard, key) and "
              "assembles each shard's values and minishard indices as arrays, so its time is O(n log n) and its "
              "memory a few times the table plus one shard (at most about 64 MB of values)."]
    out = Path(__file__).parent / "results" / "annotations.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

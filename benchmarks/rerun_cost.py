"""What a re-run of a finished output costs (`connectome run CONFIG` where every block is done), and how it grows
with the number of blocks: wall time, the client's peak RSS, and where the time goes (plan, the resumability
checks, `engine.staleness.forget_stale`, `plan.stage_complete`, `runner.run_stage`, cluster start-up), with the
done-marker loads and the stat calls counted.

    .venv/bin/python benchmarks/rerun_cost.py [--shape 64 1024 1024] [--block 8 64 64 --block 4 32 32]
        [--stages copy normalize] [--workers 2] [--runs 3] [--where /tmp] [--profile 25] [--out FILE]

For each `--block` shape: a random uint8 raw of `--shape` (zarr, chunks = the block shape) is written once, a run
config with `--stages` (each reading the raw: `copy` and `normalize` with sigma 1, so every block records its raw
files, 1 for copy and 9 for normalize) is run once on a local cluster of `--workers` workers, and then the same
config is run again `--runs` times with nothing to do: as `connectome run CONFIG` in a fresh process (the end to end
time a user sees, Python start and imports included), and once more in a process that times each phase (wrapped
functions, inclusive times: a phase called inside another is counted in both). `--profile N` adds the N functions
with the most own time (cProfile) of one more no-op re-run. Prints a markdown table; `--out` writes it to a file.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PYTHON = sys.executable
SCRIPT = os.path.abspath(__file__)

# (module, attribute) timed in the instrumented re-run; inclusive seconds and calls
PHASES = [
    ("connectome.engine.plan", "plan_run"),
    ("connectome.engine.plan", "check_plan_resumable"),
    ("connectome.engine.plan", "check_input_chunks"),
    ("connectome.engine.plan", "output_lock"),
    ("connectome.engine.plan", "remove_litter"),
    ("connectome.engine.plan", "check_outputs"),
    ("connectome.engine.plan", "changed_outputs"),
    ("connectome.engine.plan", "forget_stale"),
    ("connectome.engine.plan", "stage_complete"),
    ("connectome.engine.plan", "connect"),
    ("connectome.engine.plan", "create_outputs"),
    ("connectome.engine.plan", "run_stage"),
    ("connectome.engine.plan", "_record_config"),
]
METHODS = [  # DoneMarkers methods: calls and inclusive seconds
    "load", "lost_blocks", "changed_inputs", "_input_tables", "compact", "fingerprint", "count", "done_mask",
]
COUNTED = [("connectome.engine.markers", "_chunk_matches"), ("connectome.engine.markers", "input_record")]


def _instrument() -> dict:
    """Wrap the phases, the DoneMarkers methods and the per-file checks; returns the tally they fill."""
    import importlib

    from connectome.engine import markers as markers_module

    tally: dict[str, list] = {}

    def timed(name, fn):
        entry = tally.setdefault(name, [0, 0.0])

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                entry[0] += 1
                entry[1] += time.perf_counter() - t
        return wrapper

    def counted(name, fn):
        entry = tally.setdefault(name, [0, 0.0])

        def wrapper(*a, **k):
            entry[0] += 1
            return fn(*a, **k)
        return wrapper

    for module, attr in PHASES:
        m = importlib.import_module(module)
        setattr(m, attr, timed(attr, getattr(m, attr)))
    for attr in METHODS:
        setattr(markers_module.DoneMarkers, attr, timed(f"DoneMarkers.{attr}", getattr(markers_module.DoneMarkers, attr)))
    for module, attr in COUNTED:
        m = importlib.import_module(module)
        setattr(m, attr, counted(attr, getattr(m, attr)))
    return tally


def child(config: str, profile: int) -> None:
    """One no-op re-run in this process; prints a JSON line with the phases, the wall time and the peak RSS."""
    start = time.perf_counter()
    from connectome.cli.main import main

    imported = time.perf_counter() - start
    tally = _instrument() if not profile else {}
    profiler = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    rc = main(["run", config, "--no-progress", "--json"])
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t
    result = {"rc": rc, "imports": imported, "main": wall, "tally": tally,
              "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile)
        result["profile"] = text.getvalue()
    print("RERUN-RESULT " + json.dumps(result))


def _run(cmd: list[str], env=None) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def _child_result(config: str, profile: int = 0) -> dict:
    _, out = _run([PYTHON, SCRIPT, "--child", config, "--profile", str(profile)])
    line = next(x for x in out.splitlines() if x.startswith("RERUN-RESULT "))
    return json.loads(line[len("RERUN-RESULT "):])


def build(root: str, shape, block, stages, workers: int) -> tuple[str, int, float, str]:
    """Write the raw and the config, run it once; (config path, blocks per stage, seconds, the run's output)."""
    import numpy as np

    from connectome.core.geometry import Box
    from connectome.io import create_volume

    raw = create_volume(os.path.join(root, "raw.zarr"), shape, np.uint8, block, (8.0, 8.0, 8.0))
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], block[0]):  # every chunk file written, slab by slab
        slab = Box.of((z, 0, 0), (min(block[0], shape[0] - z), *shape[1:]))
        raw.write(slab, rng.integers(1, 255, slab.shape, dtype=np.uint8))
    params = {"copy": {}, "normalize": {"sigma": 1.0}}
    lines = [f"input: {raw.address}", f"output: {os.path.join(root, 'out')}", "voxel_size: [8, 8, 8]",
             "blocks:", f"  shape: {list(block)}", f"cluster: {{kind: local, n_workers: {workers}, threads_per_worker: 1}}",
             "stages:"]
    for s in stages:
        lines += [f"  - stage: {s}", f"    params: {json.dumps(params.get(s, {}))}"]
    config = os.path.join(root, "run.yaml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    seconds, out = _run([PYTHON, "-m", "connectome.cli", "run", config, "--no-progress", "--json"])
    blocks = 1
    for s, b in zip(shape, block):
        blocks *= -(-s // b)
    return config, blocks, seconds, out


def _marker_bytes(out_dir: str) -> int:
    total = 0
    for base, _, files in os.walk(os.path.join(out_dir, ".connectome", "done")):
        total += sum(os.path.getsize(os.path.join(base, f)) for f in files)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=3, type=int, default=[64, 1024, 1024], metavar=("Z", "Y", "X"))
    parser.add_argument("--block", nargs=3, type=int, action="append", metavar=("Z", "Y", "X"),
                        help="block shape (repeat for several; default 8 64 64 and 4 32 32)")
    parser.add_argument("--stages", nargs="+", default=["copy", "normalize"], choices=["copy", "normalize"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="no-op re-runs timed end to end (median)")
    parser.add_argument("--where", default="/tmp", help="folder for the scratch raw and outputs")
    parser.add_argument("--profile", type=int, default=0, help="show the N functions with the most own time")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.profile)
        return
    blocks_shapes = args.block or [[8, 64, 64], [4, 32, 32]]
    rows, profiles, notes = [], [], []
    for block in blocks_shapes:
        root = tempfile.mkdtemp(dir=args.where, prefix="rerun-cost-")
        try:
            config, n, first, _ = build(root, tuple(args.shape), tuple(block), args.stages, args.workers)
            ends = [_run([PYTHON, "-m", "connectome.cli", "run", config, "--no-progress", "--json"])[0]
                    for _ in range(args.runs)]
            inst = _child_result(config)
            if args.profile:
                profiles.append((block, n, _child_result(config, args.profile)["profile"]))
            size = _marker_bytes(os.path.join(root, "out"))
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            else:
                notes.append(f"kept {root}")
        rows.append((block, n, first, statistics.median(ends), min(ends), inst, size))

    stages = len(args.stages)
    lines = [
        "# Cost of a no-op re-run",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores; "
        f"load average {os.getloadavg()[0]:.1f}; scratch in {args.where}",
        f"- command: `.venv/bin/python benchmarks/rerun_cost.py --shape {' '.join(map(str, args.shape))} "
        + " ".join(f"--block {' '.join(map(str, b))}" for b in blocks_shapes)
        + f" --stages {' '.join(args.stages)} --workers {args.workers} --runs {args.runs} --where {args.where}`",
        f"- {stages} stage(s) ({', '.join(args.stages)}), each reading the raw; raw chunks = block shape; "
        f"'per block' is per block of one stage x {stages} stages",
        "",
        "| block | blocks/stage | first run s | no-op re-run s, end to end (median, min) | ms per block (how) | "
        "extrapolated to 10^6 blocks/stage | client peak RSS MiB | marker files MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    previous = None
    for block, n, first, median, low, inst, size in rows:
        if previous is None:  # per block of the smallest grid: everything, the fixed start-up cost included
            per, fixed, how = median / (n * stages), 0.0, "all"
        else:  # the slope from the previous row: what grows with the blocks
            per = (median - previous[1]) / ((n - previous[0]) * stages)
            fixed, how = median - per * n * stages, "slope"
        previous = (n, median)
        lines.append(f"| {'x'.join(map(str, block))} | {n} | {first:.1f} | {median:.2f} ({low:.2f}) | "
                     f"{1000 * per:.4f} ({how}) | {(fixed + per * stages * 1e6) / 60:.1f} min | "
                     f"{inst['maxrss_mib']:.0f} | {size / 1e6:.1f} |")
    lines += ["", "Phases of one instrumented no-op re-run (inclusive: nested phases are counted twice):", ""]
    names = [a for _, a in PHASES] + [f"DoneMarkers.{m}" for m in METHODS]
    header = "| phase | " + " | ".join(f"{'x'.join(map(str, b))}: calls, s, ms/block" for b, *_ in rows) + " |"
    lines += [header, "|---|" + "---|" * len(rows)]
    lines.append("| `main` (the whole command but Python start) | "
                 + " | ".join(f"1, {r[5]['main']:.2f}, {1000 * r[5]['main'] / (r[1] * stages):.4f}" for r in rows)
                 + " |")
    for name in names:
        cells = []
        for _, n, _, _, _, inst, _ in rows:
            calls, seconds = inst["tally"].get(name, [0, 0.0])
            cells.append(f"{calls}, {seconds:.2f}, {1000 * seconds / (n * stages):.4f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for _, attr in COUNTED:
        lines.append(f"| `{attr}` (stat calls, counted only) | "
                     + " | ".join(f"{r[5]['tally'].get(attr, [0])[0]}, -, -" for r in rows) + " |")
    for block, n, text in profiles:
        lines += ["", f"cProfile of one no-op re-run, block {'x'.join(map(str, block))} ({n} blocks/stage), "
                      "top by own time:", "", "```", text.strip(), "```"]
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

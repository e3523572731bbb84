"""What a local cluster costs before its first block: workers spawned against forked from the preloaded server.

Runs `connectome segment` on a small synthetic volume several times in one Python process (as a notebook or a
script does), with `fork_workers` true and false, and as separate `connectome` commands (what a shell user
pays). Writes a markdown table to benchmarks/results/cluster_start.md.

    .venv/bin/python benchmarks/cluster_start.py --runs 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

import yaml

REPO = Path(__file__).resolve().parents[1]


def _segment_in_process(raw: str, out: str, config: str) -> float:
    from connectome.cli.main import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["segment", raw, out, "--model", "synthetic", "--block-shape", "16", "64", "64",
                     "--profile", config, "--no-progress", "--json"])
    assert code == 0, code
    return time.perf_counter() - start


def _segment_command(raw: str, out: str, config: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "connectome"), "segment", raw, out, "--model", "synthetic",
                    "--block-shape", "16", "64", "64", "--profile", config, "--no-progress", "--json"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def _config(where: Path, fork: bool) -> str:
    path = where / f"fork_{fork}.yaml"
    path.write_text(yaml.safe_dump({"cluster": {"n_workers": 2, "dashboard_address": ":0", "fork_workers": fork}}))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cluster_start.md"))
    args = parser.parse_args()
    from connectome.synth import generate

    where = Path(tempfile.mkdtemp(prefix="cluster_start_"))
    try:
        generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=11).save(str(where / "syn"), chunk_shape=(16, 64, 64))
        raw = str(where / "syn" / "raw")
        rows = []
        for label, fork, run in (("in one process, workers spawned", False, _segment_in_process),
                                 ("in one process, workers forked (default)", True, _segment_in_process),
                                 ("separate commands, workers spawned", False, _segment_command),
                                 ("separate commands, workers forked (default)", True, _segment_command)):
            config = _config(where, fork)
            seconds = []
            for i in range(args.runs):
                out = where / f"out_{fork}_{run.__name__}_{i}"
                seconds.append(run(raw, str(out), config))
                shutil.rmtree(out)
            rows.append((label, seconds))
            print(label, [round(s, 2) for s in seconds], flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    voxels = int(args.shape[0] * args.shape[1] * args.shape[2])
    lines = [
        "# Local cluster start: workers spawned against forked from the preloaded server",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; "
        f"command: `.venv/bin/python benchmarks/cluster_start.py --runs {args.runs}`",
        f"- `connectome segment` of a synthetic {args.shape[0]}x{args.shape[1]}x{args.shape[2]} volume "
        f"({voxels / 1e6:.2f} Mvx, 8 blocks, model `synthetic`), a LocalCluster of 2 worker processes; "
        "each run a new output, seconds of the whole command (Python start included for separate commands)",
        "",
        "| how | first run s | later runs s (median) | all runs s |",
        "|---|---|---|---|",
    ]
    for label, seconds in rows:
        later = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
        lines.append(f"| {label} | {seconds[0]:.2f} | {later:.2f} | {', '.join(f'{s:.2f}' for s in seconds)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(json.dumps({"out": args.out}))


if __name__ == "__main__":
    main()

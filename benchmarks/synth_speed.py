"""How long connectome.synth.generate takes, single-threaded: 256^3 isotropic and anisotropic, and the
demo sizes. Median of several runs per case, each case in its own process (for its peak memory).

    .venv/bin/python benchmarks/synth_speed.py [--runs 3] [--quick]

Prints a table and writes benchmarks/results/synth_speed.md.
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

SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

CASES = {
    "256^3 isotropic 8 nm": ((256, 256, 256), (8.0, 8.0, 8.0)),
    "256^3 anisotropic 40x4x4 nm": ((256, 256, 256), (40.0, 4.0, 4.0)),
    "demo 64x256x256 at 8 nm": ((64, 256, 256), (8.0, 8.0, 8.0)),
    "demo 32x256x256 at 40x8x8 nm": ((32, 256, 256), (40.0, 8.0, 8.0)),
}
QUICK = ("demo 64x256x256 at 8 nm", "demo 32x256x256 at 40x8x8 nm")


def one_case(name: str, runs: int) -> dict:
    """Run inside a child process: time `runs` generations with seeds 0..runs-1."""
    import resource
    import statistics
    import time

    import numpy as np

    from connectome.synth import generate

    shape, vs = CASES[name]
    totals, stages, facts = [], [], []
    for seed in range(runs):
        t = time.perf_counter()
        v = generate(shape, vs, seed=seed)
        totals.append(time.perf_counter() - t)
        stages.append(v.timings)
        facts.append({"ids": len(v.classes), "synapses": int(len(v.synapses)),
                      "zero_fraction": float(np.mean(v.labels == 0))})
    keys = [k for k in stages[0] if k != "total_s"]
    return {
        "name": name, "shape": shape, "voxel_size": vs, "runs": runs,
        "median_s": statistics.median(totals), "min_s": min(totals), "max_s": max(totals),
        "stages_median_s": {k: statistics.median(s[k] for s in stages) for k in keys},
        "mvox_per_s": float(np.prod(shape)) / 1e6 / statistics.median(totals),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ids": [f["ids"] for f in facts], "synapses": [f["synapses"] for f in facts],
    }


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the demo sizes")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case and print JSON
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.runs)))
        return 0

    env = {**os.environ, **SINGLE_THREAD}
    load_before = os.getloadavg()
    results = []
    for name in (QUICK if args.quick else CASES):
        out = subprocess.run([sys.executable, __file__, "--case", name, "--runs", str(args.runs)],
                             env=env, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        st = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in r["stages_median_s"].items())
        print(f"{name:32s} median {r['median_s']:6.2f} s  ({r['mvox_per_s']:.2f} Mvx/s, "
              f"peak {r['peak_rss_mb']:.0f} MB)  [{st}]", flush=True)
    load_after = os.getloadavg()

    lines = [
        "# synth_speed: connectome.synth.generate, single-threaded",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (shared machine)",
        f"- command: `.venv/bin/python benchmarks/synth_speed.py --runs {args.runs}"
        f"{' --quick' if args.quick else ''}` (OMP/OpenBLAS/MKL threads = 1; seeds 0..{args.runs - 1})",
        "- each case runs in its own process; peak memory is that process's max RSS",
        "",
        "| case | shape | voxel nm | median s | min-max s | Mvx/s | peak MB | stages (median s) | ids | synapses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        st = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in r["stages_median_s"].items())
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {'x'.join(f'{v:g}' for v in r['voxel_size'])} "
            f"| {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {r['mvox_per_s']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {st} | {r['ids']} | {r['synapses']} |")
    lines += ["", "Target: 256^3 well under a minute on one core; demo sizes in a few seconds.", ""]
    path = Path(__file__).resolve().parent / "results" / "synth_speed.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

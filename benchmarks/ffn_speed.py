"""FFN inference speed on CPU: voxels/s of one canvas pass, one FOV at a time vs batched.

Usage: nice -n 10 .venv/bin/python benchmarks/ffn_speed.py [--model ffn-synthetic] [--threads 2]
Writes benchmarks/results/ffn_speed.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from connectome.ffn.canvas import Canvas, CanvasSettings
from connectome.ffn.registry import load_model
from connectome.synth import generate


def run(model: str, batch: int, raw: np.ndarray) -> tuple[float, dict, np.ndarray]:
    net, info = load_model(model)
    settings = CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size, batch=batch)
    start = time.perf_counter()
    canvas = Canvas(net, info, raw, settings)
    seg = canvas.segment()
    return time.perf_counter() - start, canvas.stats, seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ffn-synthetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 96, 96))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=7).raw
    rows = []
    for batch in (1, 8):
        seconds, stats, _ = run(args.model, batch, raw)
        rows.append((batch, seconds, raw.size / seconds, stats["steps"], stats["objects"]))
        print(rows[-1], flush=True)
    lines = ["# FFN inference speed (CPU)", "",
             f"`nice -n 10 .venv/bin/python benchmarks/ffn_speed.py --model {args.model} --threads {args.threads} "
             f"--shape {' '.join(map(str, args.shape))}` on {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} threads.", "",
             "| batch | seconds | voxels/s | FOV evaluations | objects |", "|---|---|---|---|---|"]
    lines += [f"| {b} | {s:.1f} | {v:,.0f} | {n} | {o} |" for b, s, v, n, o in rows]
    out = Path(__file__).resolve().parent / "results" / "ffn_speed.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()

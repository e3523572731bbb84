"""FFN inference speed on CPU: the network alone (ms per FOV by batch size), one canvas pass (one
object at a time vs batched), and `connectome segment --method ffn` end to end.

Usage: nice -n 10 .venv/bin/python benchmarks/ffn_speed.py [--model ffn-synthetic] [--threads 1]
       [--shape 32 64 64] [--e2e-shape 32 128 128] [--workers 2] [--bf16]
Writes benchmarks/results/ffn_speed.md. Each canvas row also gives the FOV evaluations, which do
not depend on the machine's load (the seconds do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from connectome.ffn import model as ffn_model
from connectome.ffn.canvas import Canvas, CanvasSettings
from connectome.ffn.registry import load_model
from connectome.models.inference import native_bfloat16
from connectome.synth import generate

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the machine differs between sessions), else the platform's."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def forward_ms(net, fov, batch: int, bf16: bool, channels_last: bool = True, onednn_single: bool = True,
               repeats: int = 10) -> float:
    """Best-of-`repeats` milliseconds per FOV of one forward batch, the CPU input channels-last or not, a batch
    of one sent to oneDNN directly or by PyTorch's own dispatch."""
    before = ffn_model.CPU_CHANNELS_LAST, ffn_model.CPU_ONEDNN_SINGLE
    ffn_model.CPU_CHANNELS_LAST, ffn_model.CPU_ONEDNN_SINGLE = channels_last, onednn_single
    x = torch.randn(batch, 2, *fov)
    best = float("inf")
    dtype = torch.bfloat16 if bf16 else None  # as the canvas asks for it (not autocast, which takes another path)
    with torch.inference_mode():
        for k in range(repeats + 2):
            start = time.perf_counter()
            net.forward_stacked(x, dtype)
            if k >= 2:
                best = min(best, time.perf_counter() - start)
    ffn_model.CPU_CHANNELS_LAST, ffn_model.CPU_ONEDNN_SINGLE = before
    return 1e3 * best / batch


def canvas_run(model: str, batch: int, raw: np.ndarray) -> tuple[float, dict]:
    net, info = load_model(model)
    settings = CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size, batch=batch)
    start = time.perf_counter()
    canvas = Canvas(net, info, raw, settings)
    canvas.segment()
    return time.perf_counter() - start, canvas.stats


def end_to_end(model: str, shape, workers: int, block, precision: str = "float32") -> dict:
    """`connectome segment --method ffn --precision P` on a fresh synthetic volume; its --json summary."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(tuple(shape), (8.0, 8.0, 8.0), seed=7).save(tmp, chunk_shape=tuple(block))
        cmd = [sys.executable, "-m", "connectome.cli.main", "segment", f"{tmp}/raw", f"{tmp}/out", "--method", "ffn",
               "--model", model, "--block-shape", *map(str, block), "--workers", str(workers), "--no-progress",
               "--json", "--precision", precision]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
        return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ffn-synthetic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--e2e-shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--e2e-block", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bf16", action="store_true",
                        help="also time the network in bfloat16 (as the canvas runs it), and end to end with --precision bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, info = load_model(args.model)
    load = os.getloadavg()[0]
    lines = ["# FFN inference speed (CPU)", "",
             f"`nice -n 10 .venv/bin/python benchmarks/ffn_speed.py --model {args.model} --threads {args.threads} "
             f"--shape {' '.join(map(str, args.shape))} --e2e-shape {' '.join(map(str, args.e2e_shape))} "
             f"--e2e-block {' '.join(map(str, args.e2e_block))} --workers {args.workers}"
             f"{' --bf16' if args.bf16 else ''}` on {cpu_name()} (native bfloat16: "
             f"{'yes' if native_bfloat16() else 'no'}), "
             f"torch {torch.__version__}, {args.threads} torch thread(s); load average at start {load:.1f}.", "",
             f"## The network alone (FOV {info.config.fov}, depth {info.config.depth}, "
             f"{info.config.features} features; timed one after the other: the input in the default layout, "
             "then channels-last as `FFN.forward_stacked` lays it out on CPU, each by PyTorch's own dispatch; "
             "then channels-last with a batch of one sent to oneDNN directly, `model.conv`)", "",
             "| batch | precision | ms per FOV, default layout | channels-last | channels-last, oneDNN for one "
             "(used) |", "|---|---|---|---|---|"]
    for bf16 in ([False, True] if args.bf16 else [False]):
        for batch in (1, 2, 4, 8):
            ms = [forward_ms(net, info.config.fov, batch, bf16, channels_last, onednn_single)
                  for channels_last, onednn_single in ((False, False), (True, False), (True, True))]
            lines.append(f"| {batch} | {'bfloat16' if bf16 else 'float32'} | {ms[0]:.2f} | {ms[1]:.2f} | "
                         f"{ms[2]:.2f} |")
            print(lines[-1], flush=True)
    raw = generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=7).raw
    lines += ["", f"## One canvas pass over a synthetic {'x'.join(map(str, args.shape))} volume (seed 7)", "",
              "| objects per batch | seconds | voxels/s | FOV evaluations (kept + dropped) | dropped objects | "
              "forward batches | objects |", "|---|---|---|---|---|---|---|"]
    for batch in (1, 8):
        seconds, stats = canvas_run(args.model, batch, raw)
        lines.append(f"| {batch} | {seconds:.1f} | {raw.size / seconds:,.0f} | {stats['fovs']} ({stats['steps']} + "
                     f"{stats['fovs'] - stats['steps']}) | {stats['restarts']} | {stats['batches']} | "
                     f"{stats['objects']} |")
        print(lines[-1], flush=True)
    lines += ["", f"## End to end: `connectome segment --method ffn` on a synthetic "
              f"{'x'.join(map(str, args.e2e_shape))} volume, blocks {'x'.join(map(str, args.e2e_block))}, "
              f"{args.workers} workers of 1 thread", "", "| precision | voxels | seconds | voxels/s |", "|---|---|---|---|"]
    for precision in (["float32", "bfloat16"] if args.bf16 else ["float32"]):
        summary = end_to_end(args.model, args.e2e_shape, args.workers, args.e2e_block, precision)
        lines.append(f"| {precision} | {summary['voxels']:,} | {summary['seconds']:.1f} | "
                     f"{summary['voxels'] / summary['seconds']:,.0f} |")
        print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "ffn_speed.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()

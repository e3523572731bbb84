"""FFN canvas throughput on one device (a GPU when lent, or the CPU): one canvas pass over a synthetic volume
at several object batch sizes, voxels per second and FOV evaluations per second.

    .venv/bin/python benchmarks/ffn_canvas_speed.py --device cuda --batches 1 8 32 --precision bfloat16 \
        [--model ffn-synthetic] [--shape 64 128 128] [--out FILE.md]

Issue 11 asks for at least 2 Mvoxels/s batched on an H100/H200. The canvas itself (seeds, moves, POM
updates) runs in numpy on the host; only the network's forward batch runs on the device. In bfloat16 the
network casts its weights at every forward (`ffn.model`, as `segment` runs it), which these figures include.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectome.core.machine import cpu_name  # noqa: E402
from connectome.ffn.canvas import Canvas, CanvasSettings  # noqa: E402
from connectome.ffn.registry import load_model  # noqa: E402
from connectome.synth import generate  # noqa: E402


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def canvas_pass(net, info, raw, batch: int, device: torch.device, precision: str) -> dict:
    """One canvas pass of `net` (on `device`): seconds, voxels/s, FOV evaluations and objects."""
    settings = CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size, batch=batch,
                              precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    canvas = Canvas(net, info, raw, settings, device)
    canvas.segment()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"batch": batch, "seconds": seconds, "voxels_per_s": raw.size / seconds, "fovs": canvas.stats["fovs"],
            "fovs_per_s": canvas.stats["fovs"] / seconds, "objects": canvas.stats["objects"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="ffn-synthetic")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    ap.add_argument("--batches", type=int, nargs="+", default=(1, 8, 32))
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    raw = generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=7).raw
    net, info = load_model(args.model)
    net = net.to(device).eval()
    canvas_pass(net, info, raw[:, :32, :32], 1, device, args.precision)  # warm-up (kernels, allocator)
    rows = [canvas_pass(net, info, raw, b, device, args.precision) for b in args.batches]
    lines = [f"# FFN canvas throughput: {device_name(device)}",
             "",
             f"`{' '.join(sys.argv)}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"model {args.model}, synthetic volume {'x'.join(map(str, args.shape))} (seed 7), {args.precision}.",
             "",
             "| objects per batch | seconds | voxels/s | FOV evaluations | FOVs/s | objects |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['seconds']:.1f} | {r['voxels_per_s']:,.0f} | {r['fovs']:,} | "
              f"{r['fovs_per_s']:,.0f} | {r['objects']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

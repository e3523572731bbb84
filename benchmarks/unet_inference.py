"""U-Net inference throughput for each shipped model: CPU (2 torch threads) and, where CUDA is
available, bf16 on the GPU with the fraction of the GPU's bf16 peak.

    .venv/bin/python benchmarks/unet_inference.py [--runs 5] [--shape 64 256 256] [--models ...] [--no-cpu]

Prints a table and writes benchmarks/results/unet_inference.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectome.core.machine import cpu_name  # noqa: E402
from connectome.models import available_models, load_model, predict_affinities  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s, by device-name fragment (vendor data sheets)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.0}


def fit_shape(shape, divisor):
    return tuple(max(d, s // d * d) for s, d in zip(shape, divisor))


def time_runs(fn, runs: int, sync=lambda: None) -> list[float]:
    fn()  # warm-up (oneDNN / cuDNN choose their kernels)
    sync()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def bench_cpu(name: str, shape, runs: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = load_model(name, device="cpu")
    shape = fit_shape(shape, model.info.divisor)
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    times = time_runs(lambda: predict_affinities(model, raw), runs)
    voxels = math.prod(shape)
    med = statistics.median(times)
    return {"model": name, "device": f"cpu x{threads} threads", "shape": shape, "median_s": med,
            "mvx_s": voxels / med / 1e6, "kflop_vx": model.info.flops_per_voxel / 1e3,
            "gflop_s": model.info.flops_per_voxel * voxels / med / 1e9, "runs": runs,
            "context": model.info.context, "divisor": model.info.divisor}


def bf16_peak(device_name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def bench_cuda(name: str, shape, runs: int, batch: int) -> dict:
    torch.backends.cudnn.benchmark = True
    model = load_model(name, device="cuda")
    shape = fit_shape(shape, model.info.divisor)
    rng = np.random.default_rng(0)
    raws = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    # time the network on device-resident input: host<->device copies are the stage's business
    x = torch.from_numpy(raws).cuda()[:, None].float().contiguous(memory_format=torch.channels_last_3d)

    def step():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            torch.sigmoid(model.net((x / 255 - model.info.mean) / model.info.std))

    times = time_runs(step, runs, torch.cuda.synchronize)
    end_to_end = time_runs(lambda: predict_affinities(model, raws), max(2, runs // 2), torch.cuda.synchronize)
    voxels = batch * math.prod(shape)
    med = statistics.median(times)
    dev = torch.cuda.get_device_name()
    peak = bf16_peak(dev)
    achieved = model.info.flops_per_voxel * voxels / med
    return {"model": name, "device": f"{dev} bf16, batch {batch}", "shape": shape, "median_s": med,
            "mvx_s": voxels / med / 1e6, "kflop_vx": model.info.flops_per_voxel / 1e3,
            "gflop_s": achieved / 1e9, "peak_fraction": achieved / peak if peak else None, "runs": runs,
            "with_copies_mvx_s": voxels / statistics.median(end_to_end) / 1e6,
            "context": model.info.context, "divisor": model.info.divisor}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="GPU batch")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_inference.md"))
    ap.add_argument("--no-cpu", dest="cpu", action="store_false",
                    help="GPU rows only (a lent GPU's minutes are short; the CPU rows are measured at home)")
    args = ap.parse_args()
    names = args.models or available_models()
    if not names:
        print("no shipped models in connectome/models/weights", file=sys.stderr)
        return 1
    rows = [bench_cpu(n, args.shape, args.runs, args.threads) for n in names] if args.cpu else []
    for r in rows:
        print(f"{r['model']:10s} {r['device']:22s} {r['mvx_s']:6.2f} Mvx/s  {r['kflop_vx']:5.1f} kFLOP/vx  "
              f"{r['gflop_s']:6.1f} GFLOP/s  shape {r['shape']}", flush=True)
    if torch.cuda.is_available():
        for n in names:
            r = bench_cuda(n, args.shape, args.runs, args.batch)
            rows.append(r)
            frac = f"{100 * r['peak_fraction']:.1f}% of bf16 peak" if r["peak_fraction"] else "peak unknown"
            print(f"{r['model']:10s} {r['device']:22s} {r['mvx_s']:8.1f} Mvx/s  {frac}", flush=True)
    else:
        print("CUDA not available: GPU bf16 measurement skipped")
    write_md(Path(args.out), rows, args)
    print(f"wrote {args.out}")
    return 0


def write_md(path: Path, rows: list[dict], args) -> None:
    cmd = "python benchmarks/unet_inference.py " + " ".join(sys.argv[1:])
    lines = [
        "# U-Net inference throughput",
        "",
        f"- date: {datetime.now(UTC).date().isoformat()}",
        f"- machine: {cpu_name()}, {torch.get_num_threads()} torch threads used for CPU rows "
        f"(machine shared with other jobs), torch {torch.__version__}",
        f"- GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none available in this run'}",
        f"- command: `{cmd.strip()}`",
        f"- median of {args.runs} runs after one warm-up; input uint8 -> float32 affinities (3 channels) via "
        "`predict_affinities` on CPU; GPU rows time the network alone on device-resident input "
        "(and `with copies` through `predict_affinities`)",
        "- FLOP/voxel: 2 x multiply-adds of every convolution per input voxel, from the architecture",
        "",
        "| model | device | input (z, y, x) | context | median s | Mvx/s | kFLOP/voxel | GFLOP/s | % bf16 peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frac = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") else "-"
        mvx = f"{r['mvx_s']:.2f}" + (f" ({r['with_copies_mvx_s']:.1f} with copies)" if "with_copies_mvx_s" in r else "")
        lines.append(f"| {r['model']} | {r['device']} | {' x '.join(map(str, r['shape']))} | "
                     f"{tuple(r['context'])} | {r['median_s']:.3f} | {mvx} | {r['kflop_vx']:.1f} | "
                     f"{r['gflop_s']:.1f} | {frac} |")
    lines += ["", "Target (shared/notes/targets.md): >= ~1.5 Mvx/s on 2 CPU cores so that `connectome segment` "
              "reaches 0.5 Mvx/s end to end; on an H100 >= 100 Mvx/s and >= 25% of bf16 peak.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

"""How long one training batch takes to make, and where the time goes: the loader's share of a GPU step.

    .venv/bin/python benchmarks/training_batches.py [--recipe fib-10nm sstem] [--batch 8] [--runs 10]

Makes batches the way `connectome train affinities` does (`connectome.affinity.training._batch`: augmented patches
cut from the real training volumes, affinity targets, masks) on one core, for the shipped recipes, and profiles
them. Writes benchmarks/results/training_batches.md.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from connectome.affinity import training  # noqa: E402
from connectome.core.machine import cpu_name  # noqa: E402
from connectome.models.unet import preset  # noqa: E402
from connectome.training.augment import Augmenter  # noqa: E402
from connectome.training.data import load_pair  # noqa: E402

MEDULLA = DATA / "flyem_medulla_fib_train" / "medulla_train.npz"
GALA = DATA / "gala_fib_crops" / "gala_fib.npz"
ISBI = DATA / "isbi2012" / "isbi2012.npz"
CREMI = DATA / "cremi_sstem_crop" / "cremi_train.npz"

# recipe: arch, patch, voxel size, (raw, labels, per-section labels) of its shipped training command
RECIPES = {
    "fib-10nm": ("iso", (48, 48, 48), (10.0, 10.0, 10.0),
                 [(f"{MEDULLA}#raw[0:100]", f"{MEDULLA}#neuron_ids[0:100]", False),
                  (f"{GALA}#train_raw", f"{GALA}#train_gt", False)]),
    "sstem": ("aniso", (12, 160, 160), (40.0, 4.0, 4.0),
              [(f"{CREMI}#raw", f"{CREMI}#neuron_ids", False),
               (f"{ISBI}#train_raw[0:25]", f"{ISBI}#derived_train_cells2d[0:25]", True)]),
}


def _name(key: tuple) -> str:
    """`file:function`, or the builtin's own name (`geometric_transform` is scipy's `map_coordinates`)."""
    filename, _, function = key
    if filename == "~":
        return function.removeprefix("<built-in method ").removesuffix(">").split(".")[-1]
    return f"{Path(filename).name}:{function}"


def profile(recipe: str, batch: int, runs: int) -> tuple[float, list[tuple[str, float]]]:
    """Milliseconds per batch, and the functions that took most of it (name, share)."""
    arch, patch, voxel_size, sources = RECIPES[recipe]
    two_d = np.array([flat for _, _, flat in sources])
    settings = training.TrainSettings(raw=[], labels=[], name=recipe, out="", batch_size=batch, patch=patch,
                                      arch=arch)
    # 3-D labels in the section order recovered from the images, as `train affinities` does by default
    pairs = [load_pair(raw, labels) if flat else
             training.ordered_pair(load_pair(raw, labels), settings, voxel_size, {})
             for raw, labels, flat in sources]
    weights = training.sampling_weights(np.array([p.size for p in pairs], np.float64), two_d)
    augmenter = Augmenter(training.augment_config(arch), 0)
    rng = np.random.default_rng(0)

    def make():
        return training._batch(pairs, weights, augmenter, settings, preset(arch).offsets,
                               training.default_margin(arch), rng, two_d, voxel_size)

    make()  # warm-up
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(runs):
        make()
    profiler.disable()
    ms = (time.perf_counter() - t0) / runs * 1000
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    top = sorted(((_name(k), v[2] / total) for k, v in stats.items()), key=lambda t: -t[1])
    return ms, top[:6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_batches.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker's share
    lines = ["# Training batches: time to make one, and where it goes", "",
             f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu_name()}, one thread (a loader worker's share); "
             f"command: `.venv/bin/python benchmarks/training_batches.py --batch {args.batch} --runs {args.runs}`",
             "- the shipped recipes' training volumes (`sstem`: the whole CREMI crop in the section order training "
             "recovers from its images, with ISBI z 0-24); "
             "cProfile of `connectome.affinity.training._batch`, share of the profiled time per function (own time)",
             "", "| recipe | batch | ms per batch | ms per patch | most of the time |", "|---|---|---|---|---|"]
    for recipe in args.recipe:
        ms, top = profile(recipe, args.batch, args.runs)
        where = "; ".join(f"{name} {share:.0%}" for name, share in top)
        lines.append(f"| {recipe} | {args.batch} | {ms:.0f} | {ms / args.batch:.1f} | {where} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

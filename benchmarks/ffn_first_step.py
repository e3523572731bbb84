"""FFN first step: how well one forward pass from a seed marks the seed's object inside the FOV.

A flood-filling network that marks voxels of other objects as its own in the first step floods in the
canvas, whatever the thresholds. This scores that step alone: for FOVs centred on object voxels of a
held-out synthetic volume (drawn evenly over the share of the FOV the object fills, as `train ffn
--balance` draws its examples; fixed seed), the seed voxel at logit(0.95), everything else at
logit(0.05), one forward pass, voxels at or above the model's segment threshold against the object's
true mask: precision, recall, and the false-positive rate among non-object voxels by Chebyshev distance
from the FOV centre.

Usage: .venv/bin/python benchmarks/ffn_first_step.py --models ffn-synthetic PATH.pt ... [--seed 1020]
       [--shape 48 160 160] [--fovs 256] [--out benchmarks/results/ffn_first_step.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def first_step(model: str, raw: np.ndarray, labels: np.ndarray, fovs: int) -> dict:
    """Precision, recall and false-positive rate by distance band of `model`'s first step."""
    from connectome.ffn.examples import ExampleSource, cut
    from connectome.ffn.inputs import affinity_image, affinity_model
    from connectome.ffn.model import LOGIT_INIT, LOGIT_SEED
    from connectome.ffn.registry import load_model

    net, info = load_model(model)
    reads = affinity_model(info.input)
    if reads:  # a network that reads an affinity model's mean affinity instead of the EM image
        raw = affinity_image(raw, reads)
    fov = info.config.fov
    source = ExampleSource([(raw, labels)], fov, info.voxel_size, seed=0, balance_fov=fov)
    picks = [source.draw(0) for _ in range(fovs)]
    crops = [cut(raw, labels, np.unravel_index(f, labels.shape), fov) for f in picks]
    image = torch.from_numpy(info.normalise(np.stack([c[0] for c in crops])))[:, None]
    mask = np.stack([c[1] for c in crops])
    pom = torch.full(image.shape, LOGIT_INIT)
    centre = tuple(f // 2 for f in fov)
    pom[(slice(None), 0, *centre)] = LOGIT_SEED
    with torch.inference_mode():
        prob = torch.cat([torch.sigmoid(net(image[i:i + 32], pom[i:i + 32])) for i in range(0, fovs, 32)])
    pred = prob[:, 0].numpy() >= info.segment_threshold
    tp, fp, fn = (pred & mask).sum(), (pred & ~mask).sum(), (~pred & mask).sum()
    distance = np.abs(np.indices(fov) - np.reshape(centre, (3, 1, 1, 1))).max(axis=0)
    bands = {}
    for lo in range(1, max(centre) + 1, 2):
        band = (distance >= lo) & (distance < lo + 2)
        bands[f"{lo}-{lo + 1}"] = float((pred & ~mask)[:, band].sum() / max((~mask[:, band]).sum(), 1))
    return {"model": model, "precision": float(tp / max(tp + fp, 1)), "recall": float(tp / max(tp + fn, 1)),
            "object_share": float(mask.mean()), "fp_by_distance": bands}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ffn-synthetic"])
    ap.add_argument("--seed", type=int, default=1020, help="synthetic volume seed (not a training seed)")
    ap.add_argument("--shape", nargs=3, type=int, default=[48, 160, 160])
    ap.add_argument("--fovs", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ffn_first_step.md"))
    args = ap.parse_args()
    from connectome.synth import generate

    torch.set_num_threads(1)
    v = generate(tuple(args.shape), (8.0, 8.0, 8.0), seed=args.seed)
    rows = [first_step(m, v.raw, v.labels, args.fovs) for m in args.models]
    bands = list(rows[0]["fp_by_distance"])
    lines = ["# FFN first step: the seed's object in one forward pass", "",
             f"`.venv/bin/python benchmarks/ffn_first_step.py --models {' '.join(args.models)} --seed {args.seed} "
             f"--shape {' '.join(map(str, args.shape))} --fovs {args.fovs}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {args.fovs} FOVs centred on object voxels of "
             "a held-out synthetic volume, drawn evenly over the share of the FOV their object fills; the model's "
             "segment threshold; a network trained on `--input affinities:M` reads M's mean affinity. False-positive rate: the share of non-object voxels marked as the object, by "
             "Chebyshev distance (voxels) from the FOV centre.", "",
             "| model | object share of the FOVs | precision | recall | "
             + " | ".join(f"false positives at {b}" for b in bands) + " |",
             "|---|---|---|---|" + "---|" * len(bands)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['object_share']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     + " | ".join(f"{r['fp_by_distance'][b]:.2f}" for b in bands) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

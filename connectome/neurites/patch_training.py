"""Training the patch network of the neurite types on synthetic volumes: patches around voxels of the
ground-truth cells (whole, and with spines cut off as their own segments), each labelled with the class
of the compartment at its centre; flips and axis transposes as augmentation; classes evened out.
Reports per-class recall on patches of held-out volumes.

    python -m connectome.neurites.patch_training --name patches-synthetic [--minutes 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import numpy as np
import torch

from connectome.neurites import patch_net as P
from connectome.neurites.classifier import CLASSES

VOXEL_SIZE = (8.0, 8.0, 8.0)
SHAPE = (64, 192, 192)


def volume_examples(raw, seg, compartments, rng, per_volume: int):
    """(padded raw, padded seg, centres in padded coordinates, class per centre) of one volume: centres
    drawn at random among the voxels that lie in a segment and have a class."""
    from connectome.neurites.training import class_lut

    cls = class_lut()[compartments]
    ok = np.flatnonzero((seg != 0) & (cls >= 0))
    pick = rng.choice(ok, size=min(per_volume, len(ok)), replace=False)
    centres = np.stack(np.unravel_index(pick, seg.shape), 1)
    pad = [(P.HALF, P.HALF)] * 3
    return (np.pad(raw, pad, mode="reflect"), np.pad(seg, pad, mode="reflect"), centres + P.HALF,
            cls.ravel()[pick])


def synthetic_examples(seeds, per_volume: int, rng, shape=SHAPE):
    from connectome.neurites.training import split_spines
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions

    out = []
    for seed in seeds:
        v = generate(shape, VOXEL_SIZE, seed=int(seed), tissue=TissueOptions(synapses_per_um3=8.0))
        for seg in (v.labels.astype(np.uint64), split_spines(v.labels, v.compartments)):
            out.append(volume_examples(v.raw, seg, v.compartments, rng, per_volume))
    return out


def batch_of(examples, n: int, rng, mean: float, std: float, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`n` patches drawn with class weights, each flipped and transposed at random."""
    xs, ys = [], []
    for _ in range(n):
        raw, seg, centres, cls = examples[rng.integers(len(examples))]
        w = weights[cls]
        i = rng.choice(len(cls), p=w / w.sum())
        x = P.patches(raw, seg, centres[i:i + 1], mean, std)[0]
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                x = np.flip(x, axis)
        x = np.transpose(x, (0, *(1 + rng.permutation(3))))
        xs.append(np.ascontiguousarray(x))
        ys.append(cls[i])
    return np.stack(xs), np.array(ys)


def evaluate(net: P.PatchNet, examples, mean: float, std: float) -> dict:
    net.eval()
    m = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    with torch.inference_mode():
        for raw, seg, centres, cls in examples:
            x = P.patches(raw, seg, centres, mean, std)
            for i in range(0, len(x), P.BATCH):
                pred = net(torch.from_numpy(x[i:i + P.BATCH])).argmax(1).numpy()
                np.add.at(m, (cls[i:i + P.BATCH], pred), 1)
    net.train()
    recall = {c: (float(m[i, i] / m[i].sum()) if m[i].sum() else None) for i, c in enumerate(CLASSES)}
    known = [r for r in recall.values() if r is not None]
    return {"accuracy": float(np.trace(m) / max(m.sum(), 1)), "mean_class_recall": float(np.mean(known)),
            "per_class_recall": recall, "confusion_rows_truth_cols_predicted": m.tolist()}


def train(name: str, minutes: float, train_seeds=range(300, 312), val_seeds=range(400, 404), threads: int = 2,
          seed: int = 0, batch: int = 32, lr: float = 2e-3, per_volume: int = 4000, shape=SHAPE,
          out: str | None = None, log=print) -> dict:
    """Train for `minutes`, keep the step with the best mean class recall on the validation patches, save
    as `out` (default: the shipped weights' folder, `name`.pt)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(name, minutes, train_seeds, val_seeds, seed, batch, lr, per_volume, shape, out, log, t0)
    finally:
        torch.set_num_threads(threads_before)


def _train(name, minutes, train_seeds, val_seeds, seed, batch, lr, per_volume, shape, out, log, t0) -> dict:
    threads = torch.get_num_threads()
    rng = np.random.default_rng(seed)
    train_ex = synthetic_examples(train_seeds, per_volume, rng, shape)
    val_ex = synthetic_examples(val_seeds, 1000, np.random.default_rng(seed + 1), shape)
    mean = float(np.mean([r.mean() for r, *_ in train_ex]) / 255.0)
    std = float(np.mean([r.std() for r, *_ in train_ex]) / 255.0)
    counts = np.bincount(np.concatenate([c for *_, c in train_ex]), minlength=len(CLASSES)).astype(float)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    net = P.PatchNet(len(CLASSES)).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    step, losses, best, history = 0, [], None, []
    log(f"{len(train_ex)} training volumes, class counts {counts.astype(int).tolist()}; "
        f"data {time.perf_counter() - t0:.0f} s")
    deadline = time.perf_counter() + minutes * 60
    while time.perf_counter() < deadline:
        x, y = batch_of(train_ex, batch, rng, mean, std, weights)
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 250 == 0:
            v = evaluate(net, val_ex, mean, std)
            history.append({"step": step, "loss": float(np.mean(losses[-250:])), **{k: v[k] for k in
                            ("accuracy", "mean_class_recall")}})
            log(json.dumps(history[-1]))
            if best is None or v["mean_class_recall"] > best[0]["mean_class_recall"]:
                best = (v, {k: t.clone() for k, t in net.state_dict().items()}, step)
    if best is None:
        best = (evaluate(net, val_ex, mean, std), net.state_dict(), step)
    net.load_state_dict(best[1])
    report = {"validation": best[0], "best_step": best[2], "steps": step, "history": history,
              "train_seeds": list(train_seeds), "val_seeds": list(val_seeds), "batch": batch, "lr": lr,
              "data": f"synthetic {tuple(shape)} at 8 nm: ground-truth cells, and the same with spines cut off; "
                      f"{per_volume} patch centres per volume, classes evened out",
              "command": f"python -m connectome.neurites.patch_training --name {name} --minutes {minutes} "
                         f"--threads {threads} --seed {seed}",
              "torch": torch.__version__, "threads": threads, "date": datetime.now(UTC).isoformat(),
              "seconds": round(time.perf_counter() - t0, 1)}
    P.save(out or P.WEIGHTS_DIR / f"{name}.pt", net, CLASSES, mean, std, VOXEL_SIZE, {"provenance": report})
    log(f"saved {name}: validation accuracy {best[0]['accuracy']:.3f}, mean class recall "
        f"{best[0]['mean_class_recall']:.3f} at step {best[2]}")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="patches-synthetic")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train(a.name, a.minutes, threads=a.threads, seed=a.seed)


if __name__ == "__main__":
    main()

"""Recover the physical section order of the shared CREMI crop and write it reordered.

`../shared/data/cremi_sstem_crop/cremi_train.npz` stores its 50 sections out of order (neighbouring
sections share a neuron id on 19 % of their voxels; see benchmarks/results/training.md). Neurons continue
through consecutive sections, so the order is recovered from the labels: distance between two sections
= 1 - the fraction of voxels with the same neuron id, a greedy path from every start, improved by 2-opt.
The serial-section model is trained on the file this writes.

    .venv/bin/python benchmarks/cremi_section_order.py --out /tmp/cremi/cremi_reordered.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_IN = Path(__file__).resolve().parents[1].parent / "shared/data/cremi_sstem_crop/cremi_train.npz"


def overlap_matrix(labels: np.ndarray) -> np.ndarray:
    """Fraction of voxels (both labelled) where sections i and j carry the same id."""
    n = labels.shape[0]
    flat = labels.reshape(n, -1)
    out = np.zeros((n, n))
    for i in range(n):
        same = (flat[i][None, :] == flat) & (flat[i][None, :] != 0)
        out[i] = same.mean(axis=1)
    return out


def path_length(order: list[int], dist: np.ndarray) -> float:
    return float(sum(dist[a, b] for a, b in zip(order[:-1], order[1:])))


def greedy_path(start: int, dist: np.ndarray) -> list[int]:
    left = set(range(dist.shape[0])) - {start}
    order = [start]
    while left:
        nxt = min(left, key=lambda j: dist[order[-1], j])
        order.append(nxt)
        left.remove(nxt)
    return order


def two_opt(order: list[int], dist: np.ndarray) -> list[int]:
    """Reverse sub-paths while that shortens the open path."""
    best = list(order)
    improved = True
    while improved:
        improved = False
        for i in range(0, len(best) - 1):
            for j in range(i + 1, len(best)):
                cand = best[:i] + best[i:j + 1][::-1] + best[j + 1:]
                if path_length(cand, dist) < path_length(best, dist) - 1e-12:
                    best, improved = cand, True
    return best


def recover_order(labels: np.ndarray) -> list[int]:
    dist = 1.0 - overlap_matrix(labels)
    paths = [two_opt(greedy_path(s, dist), dist) for s in range(labels.shape[0])]
    best = min(paths, key=lambda p: path_length(p, dist))
    return best if best[0] > best[-1] else best[::-1]  # one fixed direction: larger stored index first


def neighbour_stats(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean same-id fraction and mean raw correlation of consecutive sections."""
    ov = overlap_matrix(labels)
    same = float(np.mean([ov[z, z + 1] for z in range(labels.shape[0] - 1)]))
    r = raw.reshape(raw.shape[0], -1).astype(np.float64)
    corr = float(np.mean([np.corrcoef(r[z], r[z + 1])[0, 1] for z in range(raw.shape[0] - 1)]))
    return same, corr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_IN)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    d = np.load(args.input)
    raw, labels = d["raw"], d["neuron_ids"]
    order = recover_order(labels)
    for name, r, lab in (("stored order", raw, labels), ("recovered", raw[order], labels[order])):
        same, corr = neighbour_stats(r, lab)
        print(f"{name:13s}: same id {same:.3f}, raw correlation {corr:.3f}")
    print("order (stored z indices):", order)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, raw=raw[order], neuron_ids=labels[order], resolution_zyx_nm=d["resolution_zyx_nm"],
             stored_z=np.asarray(order))
    print("wrote", args.out)


if __name__ == "__main__":
    main()

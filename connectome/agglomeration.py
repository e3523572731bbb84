"""One global merge of the region graph into a fragment -> segment lookup table.

Hierarchical agglomeration with waterz's mean-affinity scoring (score = 1 - mean affinity over
the contact between two regions): the lowest-scoring edge merges first and merged edges pool
their affinity sums and counts, until no edge scores below the threshold. Memory and time grow
with the number of fragments and edges, not voxels.
"""

from __future__ import annotations

import glob
import heapq
import os

import numpy as np


def load_tables(directory: str) -> dict[str, np.ndarray]:
    """Concatenate every block's region-graph table in `directory`."""
    parts: dict[str, list[np.ndarray]] = {"nodes": [], "u": [], "v": [], "sums": [], "counts": []}
    for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
        with np.load(path) as t:
            for key in parts:
                parts[key].append(t[key])
    out = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    out["nodes"] = np.unique(out["nodes"].astype(np.uint64))
    return out


def merge_regions(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                  threshold: float) -> np.ndarray:
    """Segment index (0..k-1) for each of the sorted `nodes`, merging while 1 - mean affinity < threshold."""
    n = len(nodes)
    parent = np.arange(n)
    if len(u) == 0 or n == 0:
        return parent
    a = np.searchsorted(nodes, u)
    b = np.searchsorted(nodes, v)
    # duplicate (u, v) rows from different tables pool their statistics
    key = a.astype(np.int64) * n + b
    uniq, inv = np.unique(key, return_inverse=True)
    s = np.bincount(inv, weights=sums)
    c = np.bincount(inv, weights=counts)
    a, b = (uniq // n).tolist(), (uniq % n).tolist()
    adjacency: list[dict[int, list[float]]] = [dict() for _ in range(n)]
    heap = []
    for i, j, si, ci in zip(a, b, s.tolist(), c.tolist()):
        stats = [si, ci]
        adjacency[i][j] = stats
        adjacency[j][i] = stats
        score = 1.0 - si / ci
        if score < threshold:
            heap.append((score, i, j))
    heapq.heapify(heap)
    alive = np.ones(n, dtype=bool)
    while heap:
        score, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        stats = adjacency[i].get(j)
        if stats is None or 1.0 - stats[0] / stats[1] != score:
            continue  # a stale entry; the edge was updated by an earlier merge
        if len(adjacency[i]) < len(adjacency[j]):
            i, j = j, i  # merge the smaller neighbourhood into the larger
        alive[j] = False
        parent[j] = i
        del adjacency[i][j]
        for k, st in adjacency[j].items():
            if k == i:
                continue
            del adjacency[k][j]
            existing = adjacency[i].get(k)
            if existing is None:
                adjacency[i][k] = st
                adjacency[k][i] = st
                merged = st
            else:
                existing[0] += st[0]
                existing[1] += st[1]
                merged = existing
            new_score = 1.0 - merged[0] / merged[1]
            if new_score < threshold:
                heapq.heappush(heap, (new_score, i, k) if i < k else (new_score, k, i))
        adjacency[j] = {}
    # path compression: follow parents to the roots
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return parent


def lookup_table(tables: dict[str, np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids sorted, final segment ids 1..k) after the global merge."""
    nodes = tables["nodes"]
    roots = merge_regions(nodes, tables["u"].astype(np.uint64), tables["v"].astype(np.uint64),
                          tables["sums"], tables["counts"], threshold)
    _, final = np.unique(roots, return_inverse=True)
    return nodes, final.astype(np.uint64).ravel() + np.uint64(1)

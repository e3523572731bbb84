"""One global merge of the region graph into a fragment -> segment lookup table.

Hierarchical agglomeration with waterz's scoring (score = 1 - mean affinity, or 1 - a quantile
of the affinities, over the whole contact between two regions): the lowest-scoring edge merges
first and merged edges pool their statistics, until no edge scores below the threshold. Memory and time grow
with the number of fragments and edges, not voxels.
"""

from __future__ import annotations

import glob
import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from connectome.affinity.merge_kernel import MEAN, QUANTILE, merge_edges, pool_rows


def load_tables(directory: str, histograms: bool = False) -> dict[str, np.ndarray]:
    """Concatenate every block's region-graph table in `directory`; dense `hist` only if `histograms`."""
    keys = ["nodes", "u", "v", "sums", "counts", "link_u", "link_v"]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys + ["hist_edge", "hist_bin", "hist_count"]}
    edges = 0
    for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
        with np.load(path) as t:
            for key in keys:
                parts[key].append(t[key])
            if histograms:
                parts["hist_edge"].append(t["hist_edge"].astype(np.int64) + edges)
                parts["hist_bin"].append(t["hist_bin"])
                parts["hist_count"].append(t["hist_count"])
        edges += len(parts["u"][-1])
    out = {k: (np.concatenate(parts[k]) if parts[k] else np.zeros(0)) for k in keys}
    out["nodes"] = np.unique(out["nodes"].astype(np.uint64))
    if histograms:
        out["hist"] = np.zeros((edges, HIST_BINS), np.uint32)
        if parts["hist_edge"]:
            out["hist"][np.concatenate(parts["hist_edge"]), np.concatenate(parts["hist_bin"])] = \
                np.concatenate(parts["hist_count"])
    return out


HIST_BINS = 64  # affinity histogram bins per edge, for quantile scoring


def affinity_bins(affinities: np.ndarray) -> np.ndarray:
    """Histogram bin of each affinity in [0, 1]."""
    return np.minimum((affinities * HIST_BINS).astype(np.int64), HIST_BINS - 1)


def mean_score(stats: np.ndarray) -> np.ndarray:
    """waterz OneMinus<MeanAffinity>: stats rows are (affinity sum, voxel pairs)."""
    return 1.0 - stats[..., 0] / stats[..., 1]


@dataclass(frozen=True)
class QuantileScore:
    """waterz OneMinus<HistogramQuantileAffinity>: stats rows are affinity histograms.

    `quantile` lets merge_regions run it compiled.
    """

    quantile: float

    def __call__(self, hist: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(hist, axis=-1)
        index = (cumulative < self.quantile * cumulative[..., -1:]).sum(axis=-1)
        return 1.0 - (index + 0.5) / HIST_BINS


def quantile_score(q: float) -> QuantileScore:
    """waterz OneMinus<HistogramQuantileAffinity>: stats rows are affinity histograms."""
    return QuantileScore(q)


def pooled_edges(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray):
    """(i, j, pooled stats) of the unique node-index pairs i < j; duplicate rows add their statistics."""
    n = len(nodes)
    a = np.searchsorted(nodes, u).astype(np.int64)
    b = np.searchsorted(nodes, v).astype(np.int64)
    if np.any(a == b):
        raise ValueError("an edge joins a node to itself")
    a, b = np.minimum(a, b), np.maximum(a, b)
    uniq, inv = np.unique(a * n + b, return_inverse=True)
    pooled = pool_rows(inv.ravel(), np.ascontiguousarray(stats), len(uniq))
    return uniq // n, uniq % n, pooled


def merge_regions(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray, threshold: float,
                  score=mean_score) -> np.ndarray:
    """Segment index (0..k-1) for each of the sorted `nodes`, merging while score(edge) < threshold.

    `stats` has one row per edge (u, v); merged edges add their rows, so `score` sees the pooled
    statistics of the whole contact between two regions, as waterz does. Mean and quantile
    scoring run compiled (`connectome.merge_kernel`); any other `score` runs the Python reference.
    """
    mode = MEAN if score is mean_score else QUANTILE if hasattr(score, "quantile") else None
    if mode is None or len(u) == 0 or len(nodes) == 0 or len(nodes) >= 2**31:
        return merge_regions_reference(nodes, u, v, stats, threshold, score)
    i, j, pooled = pooled_edges(nodes, u, v, stats)
    q = float(getattr(score, "quantile", 0.0))
    return merge_edges(len(nodes), i, j, pooled, float(threshold), mode, q, float(HIST_BINS))


def merge_regions_reference(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray,
                            threshold: float, score=mean_score) -> np.ndarray:
    """`merge_regions` as a Python heap over dicts: the reference the compiled merge must equal."""
    n = len(nodes)
    parent = np.arange(n)
    if len(u) == 0 or n == 0:
        return parent
    first, second, pooled = pooled_edges(nodes, u, v, stats)
    scores = score(pooled)
    if score is mean_score:  # plain floats: the same merge, without numpy overhead per edge
        rows = [[s_, c_] for s_, c_ in pooled.tolist()]

        def score(st) -> float:  # noqa: F811 - the scalar twin of mean_score
            return 1.0 - st[0] / st[1]

        def pool(into, st) -> None:
            into[0] += st[0]
            into[1] += st[1]
    else:
        rows = list(pooled)

        def pool(into, st) -> None:
            into += st
    adjacency: list[dict[int, object]] = [dict() for _ in range(n)]
    heap = []
    for row, i, j, sc in zip(rows, first.tolist(), second.tolist(), scores.tolist()):
        adjacency[i][j] = adjacency[j][i] = row
        if sc < threshold:
            heap.append((sc, i, j))
    heapq.heapify(heap)
    alive = np.ones(n, dtype=bool)
    while heap:
        sc, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        st = adjacency[i].get(j)
        if st is None or float(score(st)) != sc:
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
                adjacency[i][k] = adjacency[k][i] = st
                merged = st
            else:
                pool(existing, st)
                merged = existing
            new_score = float(score(merged))
            if new_score < threshold:
                heapq.heappush(heap, (new_score, min(i, k), max(i, k)))
        adjacency[j] = {}
    while True:  # follow parents to the roots
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return parent




def join_links(nodes: np.ndarray, link_u: np.ndarray, link_v: np.ndarray) -> np.ndarray:
    """Component index of each sorted node after joining the linked pairs (pieces of one basin)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(nodes)
    a, b = np.searchsorted(nodes, link_u), np.searchsorted(nodes, link_v)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def lookup_table(tables: dict[str, np.ndarray], threshold: float, scoring: str = "mean",
                 quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids sorted, final segment ids 1..k) after joining linked pieces and the global merge."""
    score: Callable[[np.ndarray], np.ndarray]
    if scoring == "mean":
        stats, score = np.stack([tables["sums"], tables["counts"]], axis=1), mean_score
    else:
        stats, score = tables["hist"], quantile_score(quantile)
    nodes = tables["nodes"]
    basin = join_links(nodes, tables["link_u"].astype(np.uint64), tables["link_v"].astype(np.uint64))
    bu = basin[np.searchsorted(nodes, tables["u"].astype(np.uint64))]
    bv = basin[np.searchsorted(nodes, tables["v"].astype(np.uint64))]
    keep = bu != bv  # pairs inside one basin are not edges, as in a single block
    lo, hi = np.minimum(bu, bv)[keep], np.maximum(bu, bv)[keep]
    basin_ids = np.arange(basin.max() + 1 if len(basin) else 0)
    roots = merge_regions(basin_ids, lo, hi, stats[keep], threshold, score)
    _, final = np.unique(roots[basin], return_inverse=True)
    return nodes, final.astype(np.uint64).ravel() + np.uint64(1)

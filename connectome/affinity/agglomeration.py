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

from connectome.affinity.encoding import SCALE
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


STRICT, WATERZ = "strict", "waterz"  # the orders of equal scores (`merge_regions`)


def merge_regions(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray, threshold: float,
                  score=mean_score, frozen: np.ndarray | None = None, order: str | None = None) -> np.ndarray:
    """Segment of each of the sorted `nodes`, named by its least node index, merging while score(edge) < threshold.

    `stats` has one row per edge (u, v); merged edges add their rows, so `score` sees the pooled
    statistics of the whole contact between two regions, as waterz does. Edges merge one at a time,
    the least first in `order` (default: strict for mean scoring, waterz for any other):

    - strict: by (score, contact count, -hi, -lo), where lo < hi are the least node indices of the
      edge's two segments. A strict total order (two edges never share both segments) that no
      merge can lower: a pooled edge scores at least the least of its parts (a weighted mean; a
      quantile of the union lies between its parts'), with more voxel pairs than each, and a merge
      only lowers a segment's least index. So an edge that is the least of all edges at its two
      segments is merged whatever merges elsewhere come first, which lets the merge tree
      (`merge_tree`) decide it inside a super-block and equal this merge;
    - waterz: waterz's heap order (score, i, j) of the two segments' internal indices, which depend
      on the order of earlier merges.

    `frozen` (int8, one flag per node, updated in place) marks nodes that must not merge: the least
    edge of a frozen segment freezes its other segment instead (the merge tree's rule). Mean and
    quantile scoring run compiled (`connectome.merge_kernel`); any other `score` runs the Python
    reference.
    """
    order = _order(order, score)
    mode = MEAN if score is mean_score else QUANTILE if hasattr(score, "quantile") else None
    if mode is None or len(u) == 0 or len(nodes) == 0 or len(nodes) >= 2**31:
        return merge_regions_reference(nodes, u, v, stats, threshold, score, frozen, order)
    i, j, pooled = pooled_edges(nodes, u, v, stats)
    q = float(getattr(score, "quantile", 0.0))
    flags = np.zeros(0, np.int8) if frozen is None else frozen
    return merge_edges(len(nodes), i, j, pooled, float(threshold), mode, q, float(HIST_BINS), flags, order == STRICT)


def _order(order: str | None, score) -> str:
    if order is None:
        return STRICT if score is mean_score else WATERZ
    if order not in (STRICT, WATERZ):
        raise ValueError(f"order {order!r}: expected {STRICT!r} or {WATERZ!r}")
    return order


def merge_regions_reference(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray,
                            threshold: float, score=mean_score, frozen: np.ndarray | None = None,
                            order: str | None = None) -> np.ndarray:
    """`merge_regions` as a Python heap over dicts: the reference the compiled merge must equal."""
    strict = _order(order, score) == STRICT
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

        def contact(st) -> float:  # voxel pairs (x 255)
            return st[1]

        def pool(into, st) -> None:
            into[0] += st[0]
            into[1] += st[1]
    else:
        rows = list(pooled)

        def contact(st) -> float:  # noqa: F811 - voxel pairs of a histogram
            return float(st.sum())

        def pool(into, st) -> None:
            into += st
    adjacency: list[dict[int, object]] = [dict() for _ in range(n)]
    least = list(range(n))  # of each segment (by its root): its least node index
    heap = []  # strict: (score, count, -hi, -lo) of least indices; waterz: (score, 0, i, j) of roots

    def entry(sc: float, i: int, j: int, st) -> tuple[float, float, int, int]:
        if strict:
            lo, hi = sorted((least[i], least[j]))
            return sc, contact(st), -hi, -lo
        return sc, 0.0, min(i, j), max(i, j)

    for row, i, j, sc in zip(rows, first.tolist(), second.tolist(), scores.tolist()):
        adjacency[i][j] = adjacency[j][i] = row
        if sc < threshold:
            heap.append(entry(sc, i, j, row))
    heapq.heapify(heap)

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    while heap:
        top = heapq.heappop(heap)
        i, j = (root(-top[3]), root(-top[2])) if strict else (top[2], top[3])
        if i == j or parent[i] != i or parent[j] != j:
            continue  # waterz: an endpoint died; strict: the two segments merged
        st = adjacency[i].get(j)
        if st is None or float(score(st)) != top[0]:
            continue  # stale: a merge pooled the edge, and pushed its entry of now
        now = entry(top[0], i, j, st)
        if now[1] != top[1]:
            continue  # the same, with a score that did not change
        if now != top:
            # a merge lowered a least index since (a pooling pushes anew), so the edge's key
            # grew: it waits again with the key it has now
            heapq.heappush(heap, now)
            continue
        if frozen is not None and (frozen[i] or frozen[j]):
            frozen[i] = frozen[j] = 1  # the least edge of a frozen segment: the other cannot merge here
            continue
        if len(adjacency[i]) < len(adjacency[j]):
            i, j = j, i  # merge the smaller neighbourhood into the larger
        parent[j] = i
        least[i] = min(least[i], least[j])
        del adjacency[i][j]
        for k, st in adjacency[j].items():
            if k == i:
                continue
            del adjacency[k][j]
            existing = adjacency[i].get(k)
            if existing is None:
                adjacency[i][k] = adjacency[k][i] = st
                merged = st
                if strict:
                    continue  # the same score: its entry waits, its key only grew (see above)
            else:
                pool(existing, st)
                merged = existing
            new_score = float(score(merged))
            if new_score < threshold:
                heapq.heappush(heap, entry(new_score, i, k, merged))
        adjacency[j] = {}
    roots = np.array([root(x) for x in range(n)])
    if frozen is not None:
        frozen[:] = frozen[roots]
    return np.array(least)[roots]


def join_links(nodes: np.ndarray, link_u: np.ndarray, link_v: np.ndarray) -> np.ndarray:
    """Component of each sorted node after joining the linked pairs (pieces of one basin), named by
    its least node index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(nodes)
    a, b = np.searchsorted(nodes, link_u), np.searchsorted(nodes, link_v)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    label = connected_components(graph, directed=False)[1]
    least = np.full(label.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(least, label, np.arange(n))
    return least[label]


def edge_stats(tables: dict[str, np.ndarray], scoring: str) -> np.ndarray:
    """One row of additive statistics per edge, exact in float64 so that pooling in any order gives
    the same sums (the merge tree pools in another order than the serial merge).

    Mean: (sum of the stored uint8 affinities, 255 x voxel pairs), so the score 1 - row0 / row1 is
    1 - mean affinity; quantile: the histogram counts.
    """
    if scoring == "mean":
        sums = np.rint(np.asarray(tables["sums"], np.float64) * SCALE)  # stored affinities are k / 255
        return np.stack([sums, np.asarray(tables["counts"], np.float64) * SCALE], axis=1)
    return np.asarray(tables["hist"], np.float64)


def score_function(scoring: str, quantile: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
    return mean_score if scoring == "mean" else quantile_score(quantile)


def lookup_table(tables: dict[str, np.ndarray], threshold: float, scoring: str = "mean",
                 quantile: float = 0.5, order: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids sorted, segment ids) after joining linked pieces and the global merge; a
    segment's id is the id of its least fragment (the same in the merge tree, which has no global
    numbering). `order`: of equal scores (`merge_regions`; default: strict for mean scoring)."""
    stats = edge_stats(tables, scoring)
    nodes = tables["nodes"]
    basin = join_links(nodes, tables["link_u"].astype(np.uint64), tables["link_v"].astype(np.uint64))
    bu = basin[np.searchsorted(nodes, tables["u"].astype(np.uint64))]
    bv = basin[np.searchsorted(nodes, tables["v"].astype(np.uint64))]
    keep = bu != bv  # pairs inside one basin are not edges, as in a single block
    lo, hi = np.minimum(bu, bv)[keep], np.maximum(bu, bv)[keep]
    basin_ids = np.unique(basin)
    roots = merge_regions(basin_ids, lo, hi, stats[keep], threshold, score_function(scoring, quantile),
                          order=order)
    least = basin_ids[roots]  # the least node index of each basin's segment
    return nodes, nodes[least[np.searchsorted(basin_ids, basin)]].astype(np.uint64)

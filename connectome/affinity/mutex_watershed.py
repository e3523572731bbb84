"""Mutex-watershed agglomeration of the region graph (GASP, Bailoni et al. 2022), compiled with numba.

Every edge between two basins is attractive when its mean affinity is above `bias` and repulsive
otherwise, with strength |mean affinity - bias|. Edges are taken strongest first: an attractive edge
joins its two clusters unless a mutex lies between them; a repulsive edge puts a mutex between its two
clusters (merged clusters keep the mutexes of both). Nothing stops it early: two clusters stay apart
where a repulsive edge between them came before every attractive path that would join them. Linkages:

- `mutex` (the mutex watershed): each edge keeps the mean affinity of its own contact;
- `average` (GASP average linkage with mutex constraints): after a merge the edges of both clusters
  to a third pool their contacts, so an edge's weight is the mean affinity over the whole contact
  between two clusters, as in the serial merge (`agglomeration`: the same linkage without mutexes,
  stopped at the threshold 1 - bias);
- `sum` (GASP sum linkage with mutex constraints): pooled as `average`, but an edge's strength is
  the sum of (affinity - bias) over its contact, so a large contact outweighs a small one.

Equal strengths: the larger contact first, then the lesser (lo, hi) node indices (for `average` and `sum`, the
least nodes of the clusters when the edge's weight last changed). `mutex_lookup_table` takes the
tables `agglomeration.lookup_table` takes and returns what it returns.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit, types
from numba.typed import Dict

from connectome.affinity.agglomeration import edge_stats, join_links, pooled_edges

STATIC, AVERAGE, SUM = "mutex", "average", "sum"
LINKAGES = (STATIC, AVERAGE, SUM)


@njit(cache=True, inline="always")
def _find(parent, v):
    """The root of node `v` (halving the path there)."""
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


@njit(cache=True, inline="always")
def _pair(a, b, n):
    return min(a, b) * n + max(a, b)


@njit(cache=True, inline="always")
def _append(head, tail, size, nxt, x, slot):
    """Append `slot` to node x's linked list."""
    nxt[slot] = -1
    if size[x] == 0:
        head[x] = slot
    else:
        nxt[tail[x]] = slot
    tail[x] = slot
    size[x] += 1


@njit(cache=True, inline="always")
def _concatenate(head, tail, size, nxt, y, x):
    """Move node x's list to the end of node y's."""
    if size[x] == 0:
        return
    if size[y] == 0:
        head[y] = head[x]
    else:
        nxt[tail[y]] = head[x]
    tail[y] = tail[x]
    size[y] += size[x]
    size[x] = 0


@njit(cache=True)
def _new_mutexes(n):
    """Mutexes: a set of root pairs (`_pair`) and, per root, a list of nodes of the clusters it has a mutex with."""
    pairs = Dict.empty(key_type=types.int64, value_type=types.int64)
    return pairs, np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int64)


@njit(cache=True, inline="always")
def _add_mutex(pairs, head, tail, size, nxt, val, used, a, b, n):
    """A mutex between roots a and b; returns the list slots now used."""
    pairs[_pair(a, b, n)] = 1
    val[used], val[used + 1] = b, a
    _append(head, tail, size, nxt, a, used)
    _append(head, tail, size, nxt, b, used + 1)
    return used + 2


@njit(cache=True, inline="always")
def _merge_mutexes(pairs, head, tail, size, nxt, val, parent, y, x, n):
    """Root y takes over root x's mutexes (x already points to y): a dead root is never a root again,
    so its stale pairs never match."""
    slot = head[x] if size[x] > 0 else -1
    while slot >= 0:
        pairs[_pair(y, _find(parent, val[slot]), n)] = 1
        slot = nxt[slot]
    _concatenate(head, tail, size, nxt, y, x)


@njit(cache=True)
def _static(n, ea, eb, signed, order):
    """The mutex watershed: edges in `order`, attractive where `signed` > 0. Least node of each node's cluster."""
    parent, least = np.arange(n), np.arange(n)
    pairs, head, tail, size = _new_mutexes(n)
    nxt, val = np.empty(2 * len(ea), np.int64), np.empty(2 * len(ea), np.int64)
    used = 0
    for e in order:
        a, b = _find(parent, ea[e]), _find(parent, eb[e])
        if a == b or _pair(a, b, n) in pairs:
            continue
        if signed[e] > 0:
            if size[a] < size[b]:
                a, b = b, a  # the cluster with fewer mutexes is taken over
            parent[b] = a
            least[a] = min(least[a], least[b])
            _merge_mutexes(pairs, head, tail, size, nxt, val, parent, a, b, n)
        else:
            used = _add_mutex(pairs, head, tail, size, nxt, val, used, a, b, n)
    out = np.empty(n, np.int64)
    for v in range(n):
        out[v] = least[_find(parent, v)]
    return out


@njit(cache=True, inline="always")
def _entry(stats, e, bias, weighted, least, a, b, version):
    """Heap entry of edge e between roots a and b: strongest first (|mean - bias|, times the contact if
    `weighted`), then the larger contact, then (lo, hi)."""
    strength = abs(stats[e, 0] / stats[e, 1] - bias)
    if weighted:
        strength *= stats[e, 1]
    lo, hi = min(least[a], least[b]), max(least[a], least[b])
    return (-strength, -stats[e, 1], lo, hi, e, version)


@njit(cache=True)
def _pooling(n, ea, eb, stats, bias, weighted):
    """GASP average (or, `weighted`, sum) linkage with mutex constraints; `stats` rows (affinity sum, pairs)
    are pooled in place. Least node of each node's cluster."""
    m = len(ea)
    parent, least = np.arange(n), np.arange(n)
    ends = np.empty((m, 2), np.int64)  # an edge's two roots, kept current while it lives
    alive = np.ones(m, np.bool_)
    version = np.zeros(m, np.int64)
    edge_of = Dict.empty(key_type=types.int64, value_type=types.int64)  # live root pair -> edge
    a_head, a_tail, a_size = np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int64)
    a_next = np.empty(2 * m, np.int64)  # adjacency: slot 2 e + side is edge e's end at ends[e, side]
    for e in range(m):
        ends[e, 0], ends[e, 1] = ea[e], eb[e]
        edge_of[_pair(ea[e], eb[e], n)] = e
        _append(a_head, a_tail, a_size, a_next, ea[e], 2 * e)
        _append(a_head, a_tail, a_size, a_next, eb[e], 2 * e + 1)
    pairs, m_head, m_tail, m_size = _new_mutexes(n)
    m_next, m_val = np.empty(2 * m, np.int64), np.empty(2 * m, np.int64)
    used = 0
    heap = [_entry(stats, e, bias, weighted, least, ea[e], eb[e], 0) for e in range(m)]
    heapq.heapify(heap)
    while len(heap) > 0:
        top = heapq.heappop(heap)
        e = top[4]
        if not alive[e] or version[e] != top[5]:
            continue  # stale: the edge died or pooled since
        a, b = ends[e, 0], ends[e, 1]
        alive[e] = False
        del edge_of[_pair(a, b, n)]
        if _pair(a, b, n) in pairs:
            continue
        if stats[e, 0] / stats[e, 1] <= bias:
            used = _add_mutex(pairs, m_head, m_tail, m_size, m_next, m_val, used, a, b, n)
            continue
        if a_size[a] + m_size[a] < a_size[b] + m_size[b]:
            a, b = b, a  # b is taken over by a
        parent[b] = a
        least[a] = min(least[a], least[b])
        slot = a_head[b] if a_size[b] > 0 else -1
        while slot >= 0:
            f, side = slot >> 1, slot & 1
            slot = a_next[slot]
            if not alive[f]:
                continue
            k = ends[f, 1 - side]
            del edge_of[_pair(b, k, n)]
            key = _pair(a, k, n)
            if key in edge_of:  # a and k already meet: pool the contacts
                g = edge_of[key]
                stats[g, 0] += stats[f, 0]
                stats[g, 1] += stats[f, 1]
                alive[f] = False
                version[g] += 1
                heapq.heappush(heap, _entry(stats, g, bias, weighted, least, a, k, version[g]))
            else:  # the edge now joins a and k, its weight unchanged
                ends[f, side] = a
                edge_of[key] = f
        _concatenate(a_head, a_tail, a_size, a_next, a, b)
        _merge_mutexes(pairs, m_head, m_tail, m_size, m_next, m_val, parent, a, b, n)
    out = np.empty(n, np.int64)
    for v in range(n):
        out[v] = least[_find(parent, v)]
    return out


def _check(linkage: str) -> None:
    if linkage not in LINKAGES:
        raise ValueError(f"linkage {linkage!r}: expected one of {', '.join(map(repr, LINKAGES))}")


def mutex_regions(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray, bias: float,
                  linkage: str = STATIC) -> np.ndarray:
    """Least node index of the cluster of each of the sorted `nodes`; `stats` rows (affinity sum, voxel
    pairs) per edge (u, v), duplicate pairs pooled (`agglomeration.pooled_edges`)."""
    _check(linkage)
    n = len(nodes)
    if len(u) == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    i, j, pooled = pooled_edges(nodes, u, v, stats)
    i, j = i.astype(np.int64), j.astype(np.int64)
    if linkage != STATIC:
        return _pooling(n, i, j, np.ascontiguousarray(pooled, np.float64), float(bias), linkage == SUM)
    signed = pooled[:, 0] / pooled[:, 1] - float(bias)
    order = np.lexsort((j, i, -pooled[:, 1], -np.abs(signed)))
    return _static(n, i, j, signed, order.astype(np.int64))


def mutex_regions_reference(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray, bias: float,
                            linkage: str = STATIC) -> np.ndarray:
    """`mutex_regions` by its definition, in plain Python (clusters relabelled, candidates recomputed
    every step): the reference the compiled one must equal."""
    _check(linkage)
    n = len(nodes)
    label = list(range(n))  # each node's cluster, named by its least node
    if len(u) == 0 or n == 0:
        return np.array(label, np.int64)
    i, j, pooled = pooled_edges(nodes, u, v, stats)
    edges = [(a, b, s, c) for a, b, (s, c) in zip(i.tolist(), j.tolist(), pooled.tolist())]
    mutex: set[tuple[int, int]] = set()

    def join(a: int, b: int) -> None:
        keep, gone = min(a, b), max(a, b)
        for x in range(n):
            if label[x] == gone:
                label[x] = keep
        for pq in [pq for pq in mutex if gone in pq]:  # the merged cluster keeps both mutexes
            mutex.discard(pq)
            p, q = (keep if x == gone else x for x in pq)
            mutex.add((min(p, q), max(p, q)))

    def step(a: int, b: int, w: float) -> None:
        a, b = sorted((label[a], label[b]))
        if a == b or (a, b) in mutex:
            return
        if w > bias:
            join(a, b)
        else:
            mutex.add((a, b))

    if linkage == STATIC:
        for a, b, s, c in sorted(edges, key=lambda t: (-abs(t[2] / t[3] - bias), -t[3], t[0], t[1])):
            step(a, b, s / c)
        return np.array(label, np.int64)
    def strength(s: float, c: float) -> float:
        return abs(s / c - bias) * (c if linkage == SUM else 1.0)

    while True:
        contact: dict[tuple[int, int], list[float]] = {}
        for a, b, s, c in edges:
            key = (min(label[a], label[b]), max(label[a], label[b]))
            if key[0] != key[1] and key not in mutex:
                total = contact.setdefault(key, [0.0, 0.0])
                total[0] += s
                total[1] += c
        if not contact:
            return np.array(label, np.int64)
        (a, b), (s, c) = min(contact.items(), key=lambda t: (-strength(*t[1]), -t[1][1], t[0]))
        step(a, b, s / c)


def mutex_lookup_table(tables: dict[str, np.ndarray], bias: float = 0.5,
                       linkage: str = STATIC) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids sorted, segment ids) as `agglomeration.lookup_table` gives them (linked pieces joined
    first, a segment named by its least fragment), merged by the mutex watershed with `bias`."""
    stats = edge_stats(tables, "mean")
    nodes = tables["nodes"]
    basin = join_links(nodes, tables["link_u"].astype(np.uint64), tables["link_v"].astype(np.uint64))
    bu = basin[np.searchsorted(nodes, tables["u"].astype(np.uint64))]
    bv = basin[np.searchsorted(nodes, tables["v"].astype(np.uint64))]
    keep = bu != bv  # pairs inside one basin are not edges
    lo, hi = np.minimum(bu, bv)[keep], np.maximum(bu, bv)[keep]
    basin_ids = np.unique(basin)
    roots = mutex_regions(basin_ids, lo, hi, stats[keep], bias, linkage)
    least = basin_ids[roots]
    return nodes, nodes[least[np.searchsorted(basin_ids, basin)]].astype(np.uint64)

"""The global merge compiled with numba: the same merges, in the same order, as the Python heap.

`merge_edges` replays `agglomeration.merge_regions_reference` exactly: entries (score, i, j)
taken in Python's tuple order (the first ones sorted once, later ones from a 4-ary heap), stale
entries skipped when an endpoint died or the edge's score changed, the smaller neighbourhood
merged into the larger (ties keep the popped `i`), statistics pooled by addition. Adjacency is an
edge table, a (lo, hi) -> edge hash table and one linked list of edge ends per node, so a merge
costs the smaller neighbourhood, not the larger. Node indices must be below 2**31.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MEAN, QUANTILE = 0, 1


@njit(cache=True)
def pool_rows(group, stats, groups):
    """Float64 sums of the rows of `stats` per group, added in row order (as np.add.at does)."""
    out = np.zeros((groups, stats.shape[1]))
    for r in range(len(group)):
        for c in range(stats.shape[1]):
            out[group[r], c] += stats[r, c]
    return out


@njit(cache=True)
def _score(stats, e, mode, q, bins):
    """waterz OneMinus<MeanAffinity> or OneMinus<HistogramQuantileAffinity> of edge `e`."""
    if mode == MEAN:
        return 1.0 - stats[e, 0] / stats[e, 1]
    total = 0.0
    for b in range(stats.shape[1]):
        total += stats[e, b]
    limit = q * total
    cumulative = 0.0
    index = 0
    for b in range(stats.shape[1]):
        cumulative += stats[e, b]
        if cumulative < limit:
            index += 1
    return 1.0 - (index + 0.5) / bins


EMPTY, GONE = -1, -2  # slots of the open-addressing table of (pair -> edge)


@njit(cache=True)
def _slot(keys, pair):
    """Slot holding `pair`, or the first free slot on its probe path (as -2 - slot)."""
    mask = len(keys) - 1
    pos = (np.uint64(pair) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - _bits(len(keys)))
    pos = np.int64(pos)
    free = -1
    while True:
        k = keys[pos]
        if k == pair:
            return pos
        if k == EMPTY:
            return -2 - (pos if free < 0 else free)
        if k == GONE and free < 0:
            free = pos
        pos = (pos + 1) & mask


@njit(cache=True)
def _bits(size):
    b = 0
    while (1 << b) < size:
        b += 1
    return b


@njit(cache=True)
def _find(keys, values, pair):
    """The edge stored under `pair`, or -1."""
    pos = _slot(keys, pair)
    return values[pos] if pos >= 0 else -1


@njit(cache=True)
def _insert(keys, values, pair, edge):
    """Store `pair` -> `edge`; the pair is absent and the table has room."""
    pos = -2 - _slot(keys, pair)
    keys[pos] = pair
    values[pos] = edge


@njit(cache=True)
def _remove(keys, pair):
    keys[_slot(keys, pair)] = GONE


@njit(cache=True)
def _rebuilt(keys, values, live):
    """A fresh table with the live entries, at most a quarter full."""
    size = 16
    while size < 4 * live:
        size *= 2
    new_keys = np.full(size, EMPTY, np.int64)
    new_values = np.empty(size, np.int64)
    for p in range(len(keys)):
        if keys[p] >= 0:
            _insert(new_keys, new_values, keys[p], values[p])
    return new_keys, new_values


@njit(cache=True)
def _before(s1, k1, s2, k2):
    """Heap entry (s1, k1) before (s2, k2); k = i << 32 | j, so this is Python's (score, i, j) order."""
    return s1 < s2 or (s1 == s2 and k1 < k2)


@njit(cache=True)
def _sift_down(hs, hk, pos, size):
    """A 4-ary heap: the four children of `pos` are 4 pos + 1 ... 4 pos + 4, one cache line."""
    s, k = hs[pos], hk[pos]
    while True:
        first = 4 * pos + 1
        if first >= size:
            break
        c = first
        for other in range(first + 1, min(first + 4, size)):
            if _before(hs[other], hk[other], hs[c], hk[c]):
                c = other
        if not _before(hs[c], hk[c], s, k):
            break
        hs[pos], hk[pos] = hs[c], hk[c]
        pos = c
    hs[pos], hk[pos] = s, k


@njit(cache=True)
def _sift_up(hs, hk, pos):
    s, k = hs[pos], hk[pos]
    while pos > 0:
        p = (pos - 1) // 4
        if not _before(s, k, hs[p], hk[p]):
            break
        hs[pos], hk[pos] = hs[p], hk[p]
        pos = p
    hs[pos], hk[pos] = s, k


@njit(cache=True)
def merge_edges(n, ea, eb, stats, threshold, mode, q, bins):
    """Root index of each of `n` nodes after merging unique edges (ea, eb) while score < threshold.

    `stats` (one row per edge, float64) is pooled in place.
    """
    m = len(ea)
    parent = np.arange(n)
    eu = ea.copy()
    ev = eb.copy()
    alive_edge = np.ones(m, np.bool_)
    alive = np.ones(n, np.bool_)
    degree = np.zeros(n, np.int64)
    head = np.full(n, -1, np.int64)  # edge ends: end h belongs to edge h // 2
    tail = np.full(n, -1, np.int64)
    nxt = np.full(2 * m, -1, np.int64)
    keys, values = _rebuilt(np.zeros(0, np.int64), np.zeros(0, np.int64), m)
    used = 0  # occupied or GONE slots
    init_s = np.empty(m)  # the first entries, sorted once; later ones go to the heap
    init_k = np.empty(m, np.int64)
    count = 0
    for e in range(m):
        a, b = ea[e], eb[e]
        _insert(keys, values, min(a, b) * n + max(a, b), e)
        used += 1
        degree[a] += 1
        degree[b] += 1
        for h, node in ((2 * e, a), (2 * e + 1, b)):
            if head[node] < 0:
                head[node] = h
            else:
                nxt[tail[node]] = h
            tail[node] = h
        sc = _score(stats, e, mode, q, bins)
        if sc < threshold:
            init_s[count], init_k[count] = sc, (a << 32) | b
            count += 1
    init_s, init_k = init_s[:count], init_k[:count]
    order = np.argsort(init_k)
    order = order[np.argsort(init_s[order], kind="mergesort")]  # by score, then by (i, j)
    init_s, init_k = init_s[order], init_k[order]
    first = 0
    hs = np.empty(max(16, m // 4))
    hk = np.empty(len(hs), np.int64)
    size = 0
    while first < count or size > 0:
        if size == 0 or (first < count and _before(init_s[first], init_k[first], hs[0], hk[0])):
            sc, i, j = init_s[first], init_k[first] >> 32, init_k[first] & 0xFFFFFFFF
            first += 1
        else:
            sc, i, j = hs[0], hk[0] >> 32, hk[0] & 0xFFFFFFFF
            size -= 1
            if size > 0:
                hs[0], hk[0] = hs[size], hk[size]
                _sift_down(hs, hk, 0, size)
        if not (alive[i] and alive[j]):
            continue
        e = _find(keys, values, min(i, j) * n + max(i, j))
        if e < 0 or _score(stats, e, mode, q, bins) != sc:
            continue  # a stale entry; the edge was updated by an earlier merge
        if degree[i] < degree[j]:
            i, j = j, i  # merge the smaller neighbourhood into the larger
        alive[j] = False
        parent[j] = i
        h = head[j]
        while h >= 0:
            following = nxt[h]
            f = h // 2
            if alive_edge[f]:
                k = ev[f] if eu[f] == j else eu[f]
                _remove(keys, min(j, k) * n + max(j, k))
                if k == i:
                    alive_edge[f] = False
                    degree[i] -= 1
                else:
                    target = _find(keys, values, min(i, k) * n + max(i, k))
                    if target >= 0:
                        for c in range(stats.shape[1]):
                            stats[target, c] += stats[f, c]
                        alive_edge[f] = False
                        degree[k] -= 1
                    else:
                        target = f
                        if eu[f] == j:
                            eu[f] = i
                        else:
                            ev[f] = i
                        if 2 * (used + 1) > len(keys):
                            keys, values = _rebuilt(keys, values, m)
                            used = 0
                            for p in range(len(keys)):
                                used += keys[p] >= 0
                        _insert(keys, values, min(i, k) * n + max(i, k), f)
                        used += 1
                        degree[i] += 1
                        nxt[h] = -1
                        nxt[tail[i]] = h
                        tail[i] = h
                    new_score = _score(stats, target, mode, q, bins)
                    if new_score < threshold:
                        if size == len(hs):
                            hs = np.concatenate((hs, np.empty(size)))
                            hk = np.concatenate((hk, np.empty(size, np.int64)))
                        hs[size], hk[size] = new_score, (min(i, k) << 32) | max(i, k)
                        _sift_up(hs, hk, size)
                        size += 1
            h = following
        head[j] = -1
        degree[j] = 0
    for v in range(n):  # follow parents to the roots
        r = v
        while parent[r] != r:
            r = parent[r]
        parent[v] = r
    return parent

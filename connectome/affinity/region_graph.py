"""Region-graph edges of one write box: one compiled pass over face-adjacent voxel pairs.

For every face-adjacent voxel pair (x - e_d, x) with x in the write box and two different non-zero
fragments, the pair's affinity is added to the edge between the two fragments (a hash of fragment
pairs, filled in the order d = z, y, x, then C order, so the float sums do not depend on the
hashing); histograms stay sparse, as most contacts are a few voxel pairs. The pair is counted in
the block holding x only, so across all blocks every edge's affinity sum, contact count and
histogram are exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy.sparse import csr_array

from connectome.affinity.agglomeration import HIST_BINS


@njit(cache=True)
def _slot(table, eu, ev, u, v):
    """Slot of the pair (u, v) in `table`, or the empty slot where it would go."""
    mask = len(table) - 1
    h = (u * np.uint64(0x9E3779B97F4A7C15)) ^ (v * np.uint64(0xC2B2AE3D27D4EB4F))
    pos = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
    while True:
        e = table[pos]
        if e < 0 or (eu[e] == u and ev[e] == v):
            return pos
        pos = (pos + 1) & mask


@njit(cache=True)
def _grown(a, n, fill):
    """`a` (first `n` rows kept) with twice the rows, the new ones set to `fill`."""
    out = np.full((2 * len(a),) + a.shape[1:], fill, a.dtype)
    out[:n] = a[:n]
    return out


@njit(cache=True)
def _contacts(fragments, affs, start, bins, keep):
    """Edges (u < v) in order of first contact, with affinity sums and pair counts, and each
    edge's histogram as a list of (bin, count) nodes in increasing bin order; with `keep` (one flag per
    label, or empty for all), only edges whose two labels are kept."""
    filtered = len(keep) > 0
    cap = 1 << 12
    while cap < affs.size // 16:  # about the edges of fine fragments: few regrowths
        cap *= 2
    table = np.full(2 * cap, -1, np.int64)
    eu = np.empty(cap, np.uint64)
    ev = np.empty(cap, np.uint64)
    sums = np.zeros(cap)
    counts = np.zeros(cap, np.int64)
    head = np.full(cap, -1, np.int64)  # first histogram node of each edge
    node_bin = np.empty(2 * cap, np.uint8)
    node_count = np.empty(2 * cap, np.uint32)
    node_next = np.empty(2 * cap, np.int64)
    n = 0
    nodes = 0
    last = 0
    sz, sy, sx = start[0], start[1], start[2]
    nz, ny, nx = affs.shape[1], affs.shape[2], affs.shape[3]
    for d in range(3):
        dz, dy, dx = int(d == 0), int(d == 1), int(d == 2)
        for z in range(1 - sz if dz else 0, nz):
            for y in range(1 - sy if dy else 0, ny):
                for x in range(1 - sx if dx else 0, nx):
                    a = fragments[z + sz, y + sy, x + sx]
                    b = fragments[z + sz - dz, y + sy - dy, x + sx - dx]
                    if a == b or a == 0 or b == 0:
                        continue
                    if filtered and not (keep[a] and keep[b]):
                        continue
                    u, v = min(a, b), max(a, b)
                    if n > 0 and eu[last] == u and ev[last] == v:  # runs of one contact are common
                        e = last
                    else:
                        pos = _slot(table, eu, ev, u, v)
                        e = table[pos]
                    if e < 0:
                        if n == len(eu):  # grow the edge arrays and rehash
                            eu, ev = _grown(eu, n, 0), _grown(ev, n, 0)
                            sums, counts, head = _grown(sums, n, 0.0), _grown(counts, n, 0), _grown(head, n, -1)
                            table = np.full(2 * len(eu), -1, np.int64)
                            for f in range(n):
                                table[_slot(table, eu, ev, eu[f], ev[f])] = f
                            pos = _slot(table, eu, ev, u, v)
                        e = n
                        n += 1
                        table[pos] = e
                        eu[e], ev[e] = u, v
                    last = e
                    w = affs[d, z, y, x]
                    sums[e] += w
                    counts[e] += 1
                    k = min(np.int64(w * bins), bins - 1)
                    prev, cur = -1, head[e]
                    while cur >= 0 and node_bin[cur] < k:
                        prev, cur = cur, node_next[cur]
                    if cur >= 0 and node_bin[cur] == k:
                        node_count[cur] += 1
                        continue
                    if nodes == len(node_bin):
                        node_bin = _grown(node_bin, nodes, 0)
                        node_count = _grown(node_count, nodes, 0)
                        node_next = _grown(node_next, nodes, -1)
                    node_bin[nodes], node_count[nodes], node_next[nodes] = k, 1, cur
                    if prev < 0:
                        head[e] = nodes
                    else:
                        node_next[prev] = nodes
                    nodes += 1
    return eu[:n], ev[:n], sums[:n], counts[:n], head[:n], node_bin, node_count, node_next, nodes


@njit(cache=True)
def _csr(order, head, node_bin, node_count, node_next, nodes):
    """CSR arrays (indptr, bins, counts) of the histograms of the edges taken in `order`."""
    indptr = np.zeros(len(order) + 1, np.int64)
    bins = np.empty(nodes, np.int32)
    counts = np.empty(nodes, np.uint32)
    k = 0
    for row in range(len(order)):
        cur = head[order[row]]
        while cur >= 0:
            bins[k], counts[k] = node_bin[cur], node_count[cur]
            k += 1
            cur = node_next[cur]
        indptr[row + 1] = k
    return indptr, bins, counts


def region_graph(fragments: np.ndarray, affs: np.ndarray, has_lower: tuple[bool, bool, bool],
                 keep: np.ndarray | None = None):
    """Edges of a write box (with `keep`, a flag per label id, only those whose two labels are kept:
    each kept edge's figures are those it has without `keep`).

    `fragments` covers the write box plus one voxel layer below each face where `has_lower`;
    `affs` (3, z, y, x) covers the write box. Returns sorted unique (u, v) with u < v, the sum of
    their affinities, the number of voxel pairs and the histogram of the affinities per edge
    (a scipy CSR array, edges x HIST_BINS, uint32).
    """
    start = np.array([int(h) for h in has_lower], np.int64)
    u, v, sums, counts, *lists = _contacts(np.ascontiguousarray(fragments, np.uint64),
                                           np.ascontiguousarray(affs, np.float64), start, HIST_BINS,
                                           np.zeros(0, np.bool_) if keep is None else np.asarray(keep, np.bool_))
    order = np.lexsort((v, u))
    indptr, bins, hist_counts = _csr(order, *lists)
    hist = csr_array((hist_counts, bins, indptr), shape=(len(order), HIST_BINS))
    return u[order], v[order], sums[order], counts[order], hist

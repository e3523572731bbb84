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
from connectome.affinity.encoding import affinities_as_float


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
def _contacts(fragments, affs, values, start, bins, keep, index_type):
    """Edges (u < v) in order of first contact, with affinity sums and pair counts, and each voxel
    pair's edge (of `index_type`'s dtype) and histogram bin in scan order (none where `bins` is 0); with
    `keep` (one flag per label, or empty for all), only edges whose two labels are kept. `affs` are
    float64, or stored codes where `values` (each code's float64 value) is given."""
    filtered = len(keep) > 0
    cap = 1 << 12
    while cap < affs.size // 16:  # about the edges of fine fragments: few regrowths
        cap *= 2
    table = np.full(2 * cap, -1, np.int64)
    eu = np.empty(cap, np.uint64)
    ev = np.empty(cap, np.uint64)
    sums = np.zeros(cap)
    counts = np.zeros(cap, np.int64)
    pair_edge = np.empty(max(affs.size // 4, 16) if bins else 0, index_type.dtype)  # grouped by `_csr`
    pair_bin = np.empty(len(pair_edge), np.uint8)
    n = 0
    pairs = 0
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
                            sums, counts = _grown(sums, n, 0.0), _grown(counts, n, 0)
                            table = np.full(2 * len(eu), -1, np.int64)
                            for f in range(n):
                                table[_slot(table, eu, ev, eu[f], ev[f])] = f
                            pos = _slot(table, eu, ev, u, v)
                        e = n
                        n += 1
                        table[pos] = e
                        eu[e], ev[e] = u, v
                    last = e
                    if values is None:
                        w = affs[d, z, y, x]
                    else:
                        w = values[affs[d, z, y, x]]
                    sums[e] += w
                    counts[e] += 1
                    if bins == 0:
                        continue
                    if pairs == len(pair_edge):
                        pair_edge, pair_bin = _grown(pair_edge, pairs, 0), _grown(pair_bin, pairs, 0)
                    pair_edge[pairs] = e
                    pair_bin[pairs] = min(np.int64(w * bins), bins - 1)
                    pairs += 1
    return eu[:n], ev[:n], sums[:n], counts[:n], pair_edge[:pairs], pair_bin[:pairs]


@njit(cache=True)
def _csr(order, counts, pair_edge, pair_bin, bins):
    """CSR arrays (indptr, bins, counts) of the histograms of the edges taken in `order`, each row's bins
    in increasing order: every voxel pair's bin grouped by its edge's row (`counts` pairs each), then
    tallied row by row (cheaper than keeping a sorted list of bins per edge while scanning)."""
    n = len(order)
    rank = np.empty(n, np.int64)
    first = np.empty(n + 1, np.int64)
    first[0] = 0
    for row in range(n):
        rank[order[row]] = row
        first[row + 1] = first[row] + counts[order[row]]
    fill = first[:n].copy()
    grouped = np.empty(len(pair_bin), np.uint8)
    for j in range(len(pair_bin)):
        r = rank[pair_edge[j]]
        grouped[fill[r]] = pair_bin[j]
        fill[r] += 1
    indptr = np.zeros(n + 1, np.int64)
    out_bins = np.empty(len(pair_bin), np.int32)
    out_counts = np.empty(len(pair_bin), np.uint32)
    tally = np.zeros(bins, np.int64)
    k = 0
    for row in range(n):
        lo, hi = bins, -1
        for j in range(first[row], first[row + 1]):
            b = np.int64(grouped[j])
            tally[b] += 1
            lo, hi = min(lo, b), max(hi, b)
        for b in range(lo, hi + 1):
            if tally[b]:
                out_bins[k], out_counts[k] = b, tally[b]
                tally[b] = 0
                k += 1
        indptr[row + 1] = k
    return indptr, out_bins[:k].copy(), out_counts[:k].copy()


def region_graph(fragments: np.ndarray, affs: np.ndarray, has_lower: tuple[bool, bool, bool],
                 keep: np.ndarray | None = None, histograms: bool = True):
    """Edges of a write box (with `keep`, a flag per label id, only those whose two labels are kept:
    each kept edge's figures are those it has without `keep`).

    `fragments` covers the write box plus one voxel layer below each face where `has_lower`;
    `affs` (3, z, y, x) covers the write box: float, or the stored uint8 affinities (read as
    `affinities_as_float` gives them in float64, without making that array). Returns sorted unique
    (u, v) with u < v, the sum of their affinities, the number of voxel pairs and the histogram of
    the affinities per edge (a scipy CSR array, edges x HIST_BINS, uint32; None without
    `histograms`, which saves about a third of the time where only the sums and counts are needed).
    """
    start = np.array([int(h) for h in has_lower], np.int64)
    values = None
    if affs.dtype == np.uint8:
        values = affinities_as_float(np.arange(256, dtype=np.uint8), np.float64)
    affs = np.ascontiguousarray(affs, np.uint8 if values is not None else np.float64)
    index_type = np.zeros(0, np.int32 if affs.size < 2**31 else np.int64)  # edges <= voxel pairs
    u, v, sums, counts, pair_edge, pair_bin = _contacts(
        np.ascontiguousarray(fragments, np.uint64), affs, values, start, HIST_BINS if histograms else 0,
        np.zeros(0, np.bool_) if keep is None else np.asarray(keep, np.bool_), index_type)
    order = np.lexsort((v, u))
    if not histograms:
        return u[order], v[order], sums[order], counts[order], None
    indptr, bins, hist_counts = _csr(order, counts, pair_edge, pair_bin, HIST_BINS)
    hist = csr_array((hist_counts, bins, indptr), shape=(len(order), HIST_BINS))
    return u[order], v[order], sums[order], counts[order], hist

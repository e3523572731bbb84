"""The global merge compiled with numba: the same merges, in the same order, as the Python heap.

`merge_edges` replays `agglomeration.merge_regions_reference` exactly: entries taken in Python's
(score, i, j) tuple order, or a tie at a time (all live entries of the least score merged
together, so the result does not depend on the order of equal scores), stale entries skipped
when an endpoint died or the edge's score changed, the smaller neighbourhood merged into the
larger, statistics pooled by addition.
Adjacency is an edge table, a (lo, hi) -> edge hash table and a list of edge
ends per node, so a merge costs the smaller neighbourhood, not the larger.

On large inputs the time goes to cache misses, so the layout keeps what is read together in one
cache line: a node's parent, degree and list; an edge's two nodes; a hash slot's pair and edge;
an entry's score and key. The lists hold edge ends in chunks of seven, whose edges and hash slots
are fetched together before they are used. Entries wait unsorted in buckets of equal score width
until the merge reaches their bucket; only that bucket is a heap, small enough to stay in cache.
Node indices must be below 2**31, edges fewer than 2**30.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

MEAN, QUANTILE = 0, 1
PARENT, DEGREE, HEAD, FILL = range(4)  # a node's columns: its ends are in chunks from HEAD, the first holding FILL
SLOTS = 7  # a chunk: 7 edge ends (end h is on edge h // 2), then the next chunk; 32 bytes
EMPTY = -1  # a free slot of the (pair -> edge) table
BUCKET_LOAD = 8  # initial entries per bucket, on average
BLOCK = 4  # entries per block of a bucket: 4 x 16 bytes, one cache line
NEWEST, COUNT = 0, 1  # a bucket's columns: its newest block (the only one not full), its entries in blocks
# the merge's state, kept between calls of _merge (PENDING, AT: the pairs of the current tie, the next to merge)
CURRENT, SIZE, FREE_BLOCK, SPARE, FREE_CHUNK, USED, PENDING, AT = range(8)


@njit(cache=True)
def pool_rows(group, stats, groups):
    """Float64 sums of the rows of `stats` per group, added in row order (as np.add.at does)."""
    out = np.zeros((groups, stats.shape[1]))
    for r in range(len(group)):
        for c in range(stats.shape[1]):
            out[group[r], c] += stats[r, c]
    return out


# The appends to chunks and blocks in _merge are written out, not called: as calls, even inlined,
# numba kept reference counting around them, which cost more than the appends. For the same reason
# _merge never rebinds an array: growing one happens between its calls.


@njit(cache=True, inline="always")
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


@intrinsic
def _prefetch(typingctx, array, index):
    """Start loading the cache line of element `index` of the C-contiguous `array`, flattened: a
    hint (LLVM's prefetch) that changes no result."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p],
                                              ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        address = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        builder.call(fn, [address, i32(0), i32(3), i32(1)])  # a read, kept in all caches, of data
        return context.get_dummy_value()

    return types.void(array, types.intp), codegen


@njit(cache=True, inline="always")
def _home(pair, mask):
    """The first slot probed for `pair` in a table of mask + 1 slots."""
    return np.int64((np.uint64(pair) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)) & mask


@njit(cache=True, inline="always")
def _probe(table, pair):
    """Slot of `pair` in `table` (pairs at even, edges at odd indices), else the free slot for it."""
    mask = (len(table) >> 1) - 1
    pos = _home(pair, mask)
    while table[2 * pos] != pair and table[2 * pos] != EMPTY:
        pos = (pos + 1) & mask
    return pos


@njit(cache=True)
def _fill_table(table, ends, n):
    """Empty `table`, then store the pair of each live edge (ends[e, 0] >= 0); returns their number."""
    table[:] = EMPTY
    live = 0
    for e in range(len(ends)):
        if ends[e, 0] >= 0:
            pair = min(ends[e, 0], ends[e, 1]) * np.int64(n) + max(ends[e, 0], ends[e, 1])
            pos = _probe(table, pair)
            table[2 * pos], table[2 * pos + 1] = pair, e
            live += 1
    return live


@njit(cache=True, inline="always")
def _before(s1, k1, s2, k2):
    """Entry (s1, k1) before (s2, k2); k = i << 32 | j, so this is Python's (score, i, j) order."""
    return s1 < s2 or (s1 == s2 and k1 < k2)


@njit(cache=True, inline="always")
def _sift_down(hs, hk, pos, size):
    """A 4-ary heap of entries (hs[2 p], hk[2 p + 1]), where hk views the memory of hs as int64."""
    s, k = hs[2 * pos], hk[2 * pos + 1]
    while True:
        first = 4 * pos + 1
        if first >= size:
            break
        c = first
        for other in range(first + 1, min(first + 4, size)):
            if _before(hs[2 * other], hk[2 * other + 1], hs[2 * c], hk[2 * c + 1]):
                c = other
        if not _before(hs[2 * c], hk[2 * c + 1], s, k):
            break
        hs[2 * pos], hk[2 * pos + 1] = hs[2 * c], hk[2 * c + 1]
        pos = c
    hs[2 * pos], hk[2 * pos + 1] = s, k


@njit(cache=True, inline="always")
def _sift_up(hs, hk, pos):
    s, k = hs[2 * pos], hk[2 * pos + 1]
    while pos > 0:
        p = (pos - 1) // 4
        if not _before(s, k, hs[2 * p], hk[2 * p + 1]):
            break
        hs[2 * pos], hk[2 * pos + 1] = hs[2 * p], hk[2 * p + 1]
        pos = p
    hs[2 * pos], hk[2 * pos + 1] = s, k


@njit(cache=True)
def _entries(capacity, keys, used):
    """Room for `capacity` entries (score, key), holding the first `used` of the int64 view `keys`:
    the float64 view and the int64 view of one buffer."""
    scores = np.empty(2 * capacity)
    grown = scores.view(np.int64)
    grown[:2 * used] = keys[:2 * used]
    return scores, grown


@njit(cache=True)
def _blocks(capacity, block_k, offset, used):
    """Room for `capacity` blocks, holding the first `used` blocks of `block_k` (from entry `offset`):
    the float64 and int64 views, and the entry where blocks start, at a multiple of 64 bytes."""
    scores = np.empty(2 * BLOCK * (capacity + 1))
    start = (-scores.ctypes.data & 63) // 16
    grown = scores.view(np.int64)
    grown[2 * start:2 * (start + BLOCK * used)] = block_k[2 * offset:2 * (offset + BLOCK * used)]
    return scores, grown, start


@njit(cache=True, inline="always")
def _bucket(score, low, scale, last):
    """The bucket of `score`: floor((score - low) * scale) clipped to 0 ... last, never decreasing."""
    x = (score - low) * scale
    if not x > 0.0:
        return 0
    if x >= last:
        return last
    return int(x)


@njit(cache=True, inline="always")
def _root(nodes, v):
    """The live node that node `v` was merged into."""
    while nodes[v, PARENT] != v:
        v = nodes[v, PARENT]
    return v


@njit(cache=True, inline="always")
def _find(forest, v):
    """Root of `v` in a union-find forest (-1: a root), halving paths."""
    while forest[v] >= 0:
        if forest[forest[v]] >= 0:
            forest[v] = forest[forest[v]]
        v = forest[v]
    return v


@njit(cache=True)
def _freeze_ties(pending, count, frozen, forest, flag):
    """Of the `count` pairs in `pending` (one tie), keep those whose tie component (pairs joined by
    shared nodes) holds no frozen node; freeze every node of the others. Returns the pairs kept."""
    for p in range(count):
        a, b = _find(forest, pending[2 * p]), _find(forest, pending[2 * p + 1])
        if a != b:
            forest[max(a, b)] = min(a, b)
    for p in range(count):
        a, b = pending[2 * p], pending[2 * p + 1]
        if frozen[a] or frozen[b]:
            flag[_find(forest, a)] = 1
    blocked = np.empty(count, np.bool_)
    for p in range(count):
        blocked[p] = flag[_find(forest, pending[2 * p])] == 1
    for p in range(count):
        for v in (pending[2 * p], pending[2 * p + 1]):
            forest[v], flag[v] = -1, 0
    kept = 0
    for p in range(count):
        a, b = pending[2 * p], pending[2 * p + 1]
        if blocked[p]:
            frozen[a], frozen[b] = 1, 1
        else:
            pending[2 * kept], pending[2 * kept + 1] = a, b
            kept += 1
    return kept


@njit(cache=True)
def _merge(stats, threshold, mode, q, bins, nodes, alive, ends, chunks, table, low, scale, starts, initial,
           buckets, block_s, block_k, block_next, offset, heap_s, heap_k, state, pending, frozen, forest, flag,
           together):
    """Merge until no entry is left, then return (0, 0); or return early, before the heap or the
    spare blocks run out, the (entries, blocks) of room needed to go on.

    With `together`, entries are taken a tie at a time: every live entry of the least score is
    gathered into `pending`, then its pairs are merged (a tie component at once, whatever the
    order); else one at a time. With `frozen` (one flag per node, empty for none), a tie component
    holding a frozen node is not merged: all its nodes are frozen instead."""
    n, mask, last = len(nodes), (len(table) >> 1) - 1, len(buckets) - 1
    batch = np.empty(SLOTS, np.int32)
    current, size = state[CURRENT], state[SIZE]
    while True:
        while state[AT] < state[PENDING]:  # merge the pairs of the current tie
            i, j = _root(nodes, pending[2 * state[AT]]), _root(nodes, pending[2 * state[AT] + 1])
            if i == j:
                state[AT] += 1
                continue
            if nodes[i, DEGREE] < nodes[j, DEGREE]:
                i, j = j, i  # merge the smaller neighbourhood into the larger
            need = np.int64(nodes[j, DEGREE])  # the most entries this merge can push
            if 2 * (size + need) > len(heap_s) or need > state[SPARE]:
                state[CURRENT], state[SIZE] = current, size
                return need, need
            state[AT] += 1
            nodes[j, PARENT] = i
            alive[j >> 6] &= ~(1 << (j & 63))
            chunk, fill = nodes[j, HEAD], nodes[j, FILL]
            while chunk >= 0:  # take each chunk of j's ends, freeing it, and fetch what they will need
                batch[:fill] = chunks[chunk, :fill]
                following = chunks[chunk, SLOTS]
                chunks[chunk, SLOTS], state[FREE_CHUNK] = state[FREE_CHUNK], chunk
                for t in range(fill):
                    _prefetch(ends, 2 * (batch[t] >> 1))
                for t in range(fill):
                    f, side = batch[t] >> 1, batch[t] & 1
                    k = ends[f, 1 - side]
                    if ends[f, 0] >= 0 and k != i:
                        _prefetch(table, 2 * _home(min(i, k) * n + max(i, k), mask))
                        _prefetch(stats, f * stats.shape[1])
                        _prefetch(nodes, k * nodes.shape[1])
                for t in range(fill):
                    end = batch[t]
                    f, side = end >> 1, end & 1
                    k = ends[f, 1 - side]
                    if ends[f, 0] < 0:
                        continue  # the edge died in a merge of its other node
                    if k == i:
                        ends[f, 0] = -1
                        nodes[i, DEGREE] -= 1
                        continue
                    if 4 * (state[USED] + 1) > len(table):  # over half full: drop the stale pairs
                        state[USED] = _fill_table(table, ends, n)
                    pair = min(i, k) * n + max(i, k)
                    pos = _probe(table, pair)
                    if table[2 * pos] == pair:  # i and k already meet: pool the statistics into that edge
                        target = table[2 * pos + 1]
                        for col in range(stats.shape[1]):
                            stats[target, col] += stats[f, col]
                        ends[f, 0] = -1
                        nodes[k, DEGREE] -= 1
                    else:  # the edge now joins i and k; the stale pair (j, k) stays until a purge
                        target = f
                        ends[f, side] = i
                        table[2 * pos], table[2 * pos + 1] = pair, f
                        state[USED] += 1
                        nodes[i, DEGREE] += 1
                        if nodes[i, FILL] == SLOTS:  # i's first chunk is full: put a free one before it
                            chunk = state[FREE_CHUNK]
                            state[FREE_CHUNK] = chunks[chunk, SLOTS]
                            chunks[chunk, SLOTS] = nodes[i, HEAD]
                            nodes[i, HEAD], nodes[i, FILL] = chunk, 0
                        chunks[nodes[i, HEAD], nodes[i, FILL]] = end
                        nodes[i, FILL] += 1
                    new_score = _score(stats, target, mode, q, bins)
                    if new_score < threshold:
                        key = (min(i, k) << 32) | max(i, k)
                        b = _bucket(new_score, low, scale, last)
                        if b <= current:
                            heap_s[2 * size], heap_k[2 * size + 1] = new_score, key
                            _sift_up(heap_s, heap_k, size)
                            size += 1
                            continue
                        if buckets[b, COUNT] % BLOCK == 0:  # the bucket's newest block is full: a free one before it
                            block = state[FREE_BLOCK]
                            state[FREE_BLOCK] = block_next[block]
                            state[SPARE] -= 1
                            block_next[block] = buckets[b, NEWEST]
                            buckets[b, NEWEST] = block
                        at = 2 * (offset + BLOCK * buckets[b, NEWEST] + buckets[b, COUNT] % BLOCK)
                        block_s[at], block_k[at + 1] = new_score, key
                        buckets[b, COUNT] += 1
                chunk, fill = following, SLOTS
            nodes[j, HEAD], nodes[j, FILL], nodes[j, DEGREE] = -1, SLOTS, 0
        state[PENDING], state[AT] = 0, 0
        if size == 0:  # move the next bucket's entries to the heap, freeing its blocks
            following = current + 1
            while following <= last and starts[following + 1] == starts[following] and buckets[following, COUNT] == 0:
                following += 1
            if following > last:
                state[CURRENT], state[SIZE] = following, 0
                return np.int64(0), np.int64(0)
            size = starts[following + 1] - starts[following] + buckets[following, COUNT]
            if 2 * size > len(heap_s):
                state[CURRENT], state[SIZE] = current, 0
                return size, np.int64(0)
            current = following
            at = 2 * (starts[current + 1] - starts[current])
            heap_k[:at] = initial[2 * starts[current]:2 * starts[current + 1]]
            block, fill = buckets[current, NEWEST], (buckets[current, COUNT] - 1) % BLOCK + 1
            while block >= 0:
                start = 2 * (offset + BLOCK * block)
                heap_k[at:at + 2 * fill] = block_k[start:start + 2 * fill]
                at += 2 * fill
                fill = BLOCK
                block_next[block], state[FREE_BLOCK], block = state[FREE_BLOCK], block, block_next[block]
                state[SPARE] += 1
            buckets[current, NEWEST], buckets[current, COUNT] = -1, 0
            for p in range((size - 2) // 4, -1, -1):
                _sift_down(heap_s, heap_k, p, size)
        sc, count = heap_s[0], 0
        while size > 0 and heap_s[0] == sc:  # gather the tie: every live entry of the least score
            i, j = heap_k[1] >> 32, heap_k[1] & 0xFFFFFFFF
            valid = (alive[i >> 6] >> (i & 63)) & (alive[j >> 6] >> (j & 63)) & 1 == 1
            if valid:
                pair = min(i, j) * n + max(i, j)
                pos = _probe(table, pair)
                valid = table[2 * pos] == pair and _score(stats, table[2 * pos + 1], mode, q, bins) == sc
            size -= 1
            if size > 0:
                heap_s[0], heap_k[1] = heap_s[2 * size], heap_k[2 * size + 1]
                _sift_down(heap_s, heap_k, 0, size)
            if valid:  # else a stale entry: an endpoint died, or an earlier merge updated the edge
                pending[2 * count], pending[2 * count + 1] = i, j
                count += 1
                if not together:
                    break  # one entry at a time: equal scores in (score, i, j) order, as waterz's heap
        if len(frozen) > 0 and count > 0:
            count = _freeze_ties(pending, count, frozen, forest, flag)
        state[PENDING] = count


@njit(cache=True)
def merge_edges(n, ea, eb, stats, threshold, mode, q, bins, frozen, together=True):
    """Root index of each of `n` nodes after merging unique edges (ea, eb) while score < threshold;
    a root is the least node of its segment.

    `stats` (one row per edge, float64) is pooled in place. `together`: equal scores merge as one
    tie (see `_merge`), else one at a time in (score, i, j) order. `frozen`: empty, or one flag per node,
    updated in place: a tie component that holds a frozen node freezes all its nodes instead of
    merging (see `merge_tree`); on return, each node's flag says whether its segment is frozen.
    """
    m = len(ea)
    if m >= 2**30:
        raise ValueError("merge_edges takes fewer than 2**30 edges")
    nodes = np.empty((n, 4), np.int32)
    for v in range(n):
        nodes[v, PARENT], nodes[v, DEGREE], nodes[v, HEAD], nodes[v, FILL] = v, 0, -1, SLOTS
    alive = np.full((n + 63) // 64, -1, np.int64)  # a bit per node: small enough to stay in cache
    ends = np.empty((m, 2), np.int32)  # an edge's two nodes; the first is -1 once it died
    # All but a node's first chunk are full, so chunks in use never outnumber 2 m / SLOTS + n + 1.
    chunks = np.empty((2 * m // SLOTS + n + 2, SLOTS + 1), np.int32)
    chunks[:, SLOTS] = np.arange(1, len(chunks) + 1)  # all free, linked
    chunks[-1, SLOTS] = -1
    free_chunk = 0
    first = np.empty(m)  # the initial scores
    count, low = 0, np.inf
    for e in range(m):
        ends[e, 0], ends[e, 1] = ea[e], eb[e]
        for side in range(2):
            v = ends[e, side]
            nodes[v, DEGREE] += 1
            if nodes[v, FILL] == SLOTS:
                chunk = free_chunk
                free_chunk = chunks[chunk, SLOTS]
                chunks[chunk, SLOTS] = nodes[v, HEAD]
                nodes[v, HEAD], nodes[v, FILL] = chunk, 0
            chunks[nodes[v, HEAD], nodes[v, FILL]] = 2 * e + side
            nodes[v, FILL] += 1
        first[e] = _score(stats, e, mode, q, bins)
        if first[e] < threshold:
            count += 1
            low = min(low, first[e])
    slots = 16
    while slots < 4 * m:  # at most a quarter full after each purge of stale pairs
        slots *= 2
    table = np.empty(2 * slots, np.int64)
    used = _fill_table(table, ends, n)

    # Entries wait in buckets of equal score width from `low`: the initial ones sorted by bucket
    # (bucket b's from starts[b]), later ones in chains of blocks. The heap holds the current
    # bucket's and any pushed since to a bucket no later, so its top is the least entry of all.
    buckets = np.zeros((max(1, count // BUCKET_LOAD), 2), np.int32)
    buckets[:, NEWEST] = -1
    scale = len(buckets) / (threshold - low) if count > 0 else 0.0
    starts = np.zeros(len(buckets) + 1, np.int64)
    for e in range(m):
        if first[e] < threshold:
            starts[_bucket(first[e], low, scale, len(buckets) - 1) + 1] += 1
    starts = np.cumsum(starts)
    initial_s, initial = _entries(count, np.empty(0, np.int64), 0)
    at = starts[:-1].copy()
    for e in range(m):
        if first[e] < threshold:
            b = _bucket(first[e], low, scale, len(buckets) - 1)
            initial_s[2 * at[b]], initial[2 * at[b] + 1] = first[e], (ea[e] << 32) | eb[e]
            at[b] += 1
    capacity = 16 + len(buckets) // 16
    block_s, block_k, offset = _blocks(capacity, np.empty(0, np.int64), 0, 0)
    block_next = np.arange(1, capacity + 1).astype(np.int32)  # all free, linked
    block_next[-1] = -1
    heap_s, heap_k = _entries(64, np.empty(0, np.int64), 0)
    state = np.array([-1, 0, 0, capacity, free_chunk, used, 0, 0])
    pending = np.empty(len(heap_k), np.int64)  # the pairs of one tie: never more than the heap holds
    forest = np.full(n if len(frozen) > 0 else 0, -1, np.int64)
    flag = np.zeros(len(forest), np.int8)
    while True:
        entries, blocks = _merge(stats, threshold, mode, q, bins, nodes, alive, ends, chunks, table, low, scale, starts,
                                 initial, buckets, block_s, block_k, block_next, offset, heap_s, heap_k, state,
                                 pending, frozen, forest, flag, together)
        if entries == 0 and blocks == 0:
            break
        if 2 * (state[SIZE] + entries) > len(heap_s):
            heap_s, heap_k = _entries(2 * (state[SIZE] + entries), heap_k, state[SIZE])
            grown = np.empty(len(heap_k), np.int64)
            grown[:2 * state[PENDING]] = pending[:2 * state[PENDING]]
            pending = grown
        if blocks > state[SPARE]:  # add free blocks
            more = max(blocks, len(block_next))
            block_s, block_k, offset = _blocks(len(block_next) + more, block_k, offset, len(block_next))
            links = np.arange(len(block_next) + 1, len(block_next) + more + 1).astype(np.int32)
            links[-1] = state[FREE_BLOCK]
            state[FREE_BLOCK], state[SPARE] = len(block_next), state[SPARE] + more
            block_next = np.concatenate((block_next, links))
    roots = np.empty(n, np.int64)
    for v in range(n):  # follow parents to the roots
        r = v
        while nodes[r, PARENT] != r:
            r = nodes[r, PARENT]
        nodes[v, PARENT] = r
        roots[v] = r
    least = np.full(n, n, np.int64)
    for v in range(n):  # name each segment by its least node
        least[roots[v]] = min(least[roots[v]], v)
    if len(frozen) > 0:
        segment_frozen = np.empty(n, np.int8)
        for v in range(n):
            segment_frozen[v] = frozen[roots[v]]
        frozen[:] = segment_frozen
    for v in range(n):
        roots[v] = least[roots[v]]
    return roots

"""The global merge compiled with numba: the same merges, in the same order, as the Python heap.

`merge_edges` replays `agglomeration.merge_regions_reference` exactly: entries taken one at a
time, the least first, in the strict order (score, contact count, -hi, -lo) of the segments'
least nodes or in waterz's (score, i, j) order; stale entries skipped when the segments merged or the edge's score
changed, and in the strict order an entry whose least nodes fell since re-queued with its key of
now; the smaller neighbourhood merged into the larger, statistics pooled by addition.
Adjacency is an edge table, a (lo, hi) -> edge hash table and a list of edge
ends per node, so a merge costs the smaller neighbourhood, not the larger.

On large inputs the time goes to cache misses, so the layout keeps what is read together in one
cache line: a node's parent, degree and list; an edge's two nodes; a hash slot's pair and edge;
an entry's score, count and key. The lists hold edge ends in chunks of seven, whose edges and hash slots
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
# a node's columns: its ends are in chunks from HEAD, the first holding FILL; PARENT: the node it was merged
# into, or for a live node -1 - the least node of its segment
PARENT, DEGREE, HEAD, FILL = range(4)
SLOTS = 7  # a chunk: 7 edge ends (end h is on edge h // 2), then the next chunk; 32 bytes
EMPTY = -1  # a free slot of the (pair -> edge) table
BUCKET_LOAD = 8  # initial entries per bucket, on average
W = 3  # an entry's words: score, contact count (float64; 0 in waterz's order), key (int64)
BLOCK = 8  # entries per block of a bucket: 8 x 24 bytes, three cache lines
NEWEST, COUNT = 0, 1  # a bucket's columns: its newest block (the only one not full), its entries in blocks
# the merge's state, kept between calls of _merge (PENDING, PARTNER: the pair to merge next, -1 for none)
CURRENT, SIZE, FREE_BLOCK, SPARE, FREE_CHUNK, USED, PENDING, PARTNER = range(8)


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
def _before(s1, c1, k1, s2, c2, k2):
    """Entry (s1, c1, k1) before (s2, c2, k2): by score, contact count, then key (strict: a
    `_strict_key`; waterz: counts 0 and keys i << 32 | j, Python's (score, i, j) order)."""
    return s1 < s2 or (s1 == s2 and (c1 < c2 or (c1 == c2 and k1 < k2)))


@njit(cache=True, inline="always")
def _sift_down(hs, hk, pos, size):
    """A 4-ary heap of entries (hs[3 p], hs[3 p + 1], hk[3 p + 2]), where hk views the memory of hs as int64."""
    s, c, k = hs[W * pos], hs[W * pos + 1], hk[W * pos + 2]
    while True:
        first = 4 * pos + 1
        if first >= size:
            break
        m = first
        for other in range(first + 1, min(first + 4, size)):
            if _before(hs[W * other], hs[W * other + 1], hk[W * other + 2], hs[W * m], hs[W * m + 1], hk[W * m + 2]):
                m = other
        if not _before(hs[W * m], hs[W * m + 1], hk[W * m + 2], s, c, k):
            break
        hs[W * pos], hs[W * pos + 1], hk[W * pos + 2] = hs[W * m], hs[W * m + 1], hk[W * m + 2]
        pos = m
    hs[W * pos], hs[W * pos + 1], hk[W * pos + 2] = s, c, k


@njit(cache=True, inline="always")
def _sift_up(hs, hk, pos):
    s, c, k = hs[W * pos], hs[W * pos + 1], hk[W * pos + 2]
    while pos > 0:
        p = (pos - 1) // 4
        if not _before(s, c, k, hs[W * p], hs[W * p + 1], hk[W * p + 2]):
            break
        hs[W * pos], hs[W * pos + 1], hk[W * pos + 2] = hs[W * p], hs[W * p + 1], hk[W * p + 2]
        pos = p
    hs[W * pos], hs[W * pos + 1], hk[W * pos + 2] = s, c, k


@njit(cache=True, inline="always")
def _push(hs, hk, size, score, count, key):
    """Add an entry to the heap of `size` entries (room checked by the caller)."""
    hs[W * size], hs[W * size + 1], hk[W * size + 2] = score, count, key
    _sift_up(hs, hk, size)


@njit(cache=True)
def _entries(capacity, keys, used):
    """Room for `capacity` entries (score, count, key), holding the first `used` of the int64 view
    `keys`: the float64 view and the int64 view of one buffer."""
    scores = np.empty(W * capacity)
    grown = scores.view(np.int64)
    grown[:W * used] = keys[:W * used]
    return scores, grown


@njit(cache=True)
def _blocks(capacity, block_k, offset, used):
    """Room for `capacity` blocks, holding the first `used` blocks of `block_k` (from word `offset`):
    the float64 and int64 views, and the word where blocks start, at a multiple of 64 bytes."""
    scores = np.empty(W * BLOCK * capacity + 8)
    start = (-scores.ctypes.data & 63) // 8
    grown = scores.view(np.int64)
    grown[start:start + W * BLOCK * used] = block_k[offset:offset + W * BLOCK * used]
    return scores, grown, start


@njit(cache=True, inline="always")
def _count(stats, e, mode):
    """The voxel pairs of edge `e`'s contact (in the units of its statistics)."""
    if mode == MEAN:
        return stats[e, 1]
    total = 0.0
    for b in range(stats.shape[1]):
        total += stats[e, b]
    return total


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
    """The live node that node `v` was merged into (halving the path there)."""
    while nodes[v, PARENT] >= 0:
        up = nodes[v, PARENT]
        if nodes[up, PARENT] >= 0:
            nodes[v, PARENT] = nodes[up, PARENT]
        v = up
    return v


@njit(cache=True, inline="always")
def _least(nodes, v):
    """The least node of live node `v`'s segment (a live node's PARENT holds -1 - it)."""
    return np.int64(-1 - nodes[v, PARENT])


@njit(cache=True, inline="always")
def _strict_key(a, b):
    """The entry key of an edge between segments of least nodes a and b: ~(hi << 32 | lo), so that
    ascending keys are descending (hi, lo)."""
    return ~((max(a, b) << 32) | min(a, b))


@njit(cache=True)
def _merge(stats, threshold, mode, q, bins, nodes, alive, ends, chunks, table, low, scale, starts, initial,
           buckets, block_s, block_k, block_next, offset, heap_s, heap_k, state, frozen, strict):
    """Merge until no entry is left, then return (0, 0); or return early, before the heap or the
    spare blocks run out, the (entries, blocks) of room needed to go on.

    Entries are taken one at a time, the least first; a valid one's pair waits in state (PENDING,
    PARTNER) until it is merged. `strict`: keys are `_strict_key`s of least nodes, and an entry
    whose segments' least nodes fell since it was pushed waits again with its key of now (its score
    unchanged: a pooled edge gets an entry of its own); else keys are (i << 32 | j) of the nodes.
    With `frozen` (one flag per node, empty for none), the least edge of a frozen segment freezes
    its other segment instead of merging."""
    n, mask, last = len(nodes), (len(table) >> 1) - 1, len(buckets) - 1
    batch = np.empty(SLOTS, np.int32)
    current, size = state[CURRENT], state[SIZE]
    while True:
        if state[PENDING] >= 0:  # merge the pair taken last
            i, j = state[PENDING], state[PARTNER]
            if nodes[i, DEGREE] < nodes[j, DEGREE]:
                i, j = j, i  # merge the smaller neighbourhood into the larger
            need = np.int64(nodes[j, DEGREE])  # the most entries this merge can push
            if W * (size + need) > len(heap_s) or need > state[SPARE]:
                state[CURRENT], state[SIZE] = current, size
                return need, need
            state[PENDING] = -1
            nodes[i, PARENT] = max(nodes[i, PARENT], nodes[j, PARENT])  # -1 - the lesser least node
            nodes[j, PARENT] = i
            alive[j >> 6] &= ~(1 << (j & 63))
            least_i = _least(nodes, i)
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
                        target = -1  # its statistics and score are unchanged
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
                        if strict:
                            continue  # its entry waits; its key only grew (see above)
                        target = f
                    new_score = _score(stats, target, mode, q, bins)
                    if new_score < threshold:
                        if strict:
                            key, count = _strict_key(least_i, _least(nodes, k)), _count(stats, target, mode)
                        else:
                            key, count = (min(i, k) << 32) | max(i, k), 0.0
                        b = _bucket(new_score, low, scale, last)
                        if b <= current:
                            _push(heap_s, heap_k, size, new_score, count, key)
                            size += 1
                            continue
                        if buckets[b, COUNT] % BLOCK == 0:  # the bucket's newest block is full: a free one before it
                            block = state[FREE_BLOCK]
                            state[FREE_BLOCK] = block_next[block]
                            state[SPARE] -= 1
                            block_next[block] = buckets[b, NEWEST]
                            buckets[b, NEWEST] = block
                        at = offset + W * (BLOCK * buckets[b, NEWEST] + buckets[b, COUNT] % BLOCK)
                        block_s[at], block_s[at + 1], block_k[at + 2] = new_score, count, key
                        buckets[b, COUNT] += 1
                chunk, fill = following, SLOTS
            nodes[j, HEAD], nodes[j, FILL], nodes[j, DEGREE] = -1, SLOTS, 0
        if size == 0:  # move the next bucket's entries to the heap, freeing its blocks
            following = current + 1
            while following <= last and starts[following + 1] == starts[following] and buckets[following, COUNT] == 0:
                following += 1
            if following > last:
                state[CURRENT], state[SIZE] = following, 0
                return np.int64(0), np.int64(0)
            size = starts[following + 1] - starts[following] + buckets[following, COUNT]
            if W * size > len(heap_s):
                state[CURRENT], state[SIZE] = current, 0
                return size, np.int64(0)
            current = following
            at = W * (starts[current + 1] - starts[current])
            heap_k[:at] = initial[W * starts[current]:W * starts[current + 1]]
            block, fill = buckets[current, NEWEST], (buckets[current, COUNT] - 1) % BLOCK + 1
            while block >= 0:
                start = offset + W * BLOCK * block
                heap_k[at:at + W * fill] = block_k[start:start + W * fill]
                at += W * fill
                fill = BLOCK
                block_next[block], state[FREE_BLOCK], block = state[FREE_BLOCK], block, block_next[block]
                state[SPARE] += 1
            buckets[current, NEWEST], buckets[current, COUNT] = -1, 0
            for p in range((size - 2) // 4, -1, -1):
                _sift_down(heap_s, heap_k, p, size)
        while size > 0:  # take the least entry, until a valid one
            sc, count, key = heap_s[0], heap_s[1], heap_k[2]
            size -= 1
            if size > 0:
                heap_s[0], heap_s[1], heap_k[2] = heap_s[W * size], heap_s[W * size + 1], heap_k[W * size + 2]
                _sift_down(heap_s, heap_k, 0, size)
            if strict:
                i, j = _root(nodes, (~key) & 0xFFFFFFFF), _root(nodes, (~key) >> 32)
                if i == j:
                    continue  # the two segments merged
            else:
                i, j = key >> 32, key & 0xFFFFFFFF
                if (alive[i >> 6] >> (i & 63)) & (alive[j >> 6] >> (j & 63)) & 1 == 0:
                    continue  # an endpoint died
            pair = min(i, j) * n + max(i, j)
            pos = _probe(table, pair)
            if table[2 * pos] != pair:
                continue
            e = table[2 * pos + 1]
            if _score(stats, e, mode, q, bins) != sc or (strict and _count(stats, e, mode) != count):
                continue  # stale: a merge pooled the edge, and pushed its entry of now
            if strict:
                now = _strict_key(_least(nodes, i), _least(nodes, j))
                if now != key:  # the least nodes fell since: the entry waits again with its key of now
                    _push(heap_s, heap_k, size, sc, count, now)
                    size += 1
                    continue
            if len(frozen) > 0 and (frozen[i] or frozen[j]):
                frozen[i], frozen[j] = 1, 1  # the least edge of a frozen segment: the other cannot merge here
                continue
            state[PENDING], state[PARTNER] = i, j
            break


@njit(cache=True)
def merge_edges(n, ea, eb, stats, threshold, mode, q, bins, frozen, strict=True):
    """Least node of the segment of each of `n` nodes after merging unique edges (ea < eb) while
    score < threshold, one at a time, the least first: by (score, contact count, -hi, -lo) of the
    segments' least nodes (`strict`) or by (score, i, j) of the nodes, waterz's order.

    `stats` (one row per edge, float64) is pooled in place. `frozen`: empty, or one flag per node,
    updated in place: the least edge of a frozen segment freezes its other segment instead of
    merging (see `merge_tree`); on return, each node's flag says whether its segment is frozen.
    """
    m = len(ea)
    if m >= 2**30:
        raise ValueError("merge_edges takes fewer than 2**30 edges")
    nodes = np.empty((n, 4), np.int32)
    for v in range(n):
        nodes[v, PARENT], nodes[v, DEGREE], nodes[v, HEAD], nodes[v, FILL] = -1 - v, 0, -1, SLOTS
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
            a, c = np.int64(ea[e]), np.int64(eb[e])
            initial_s[W * at[b]] = first[e]
            initial_s[W * at[b] + 1] = _count(stats, e, mode) if strict else 0.0
            initial[W * at[b] + 2] = _strict_key(a, c) if strict else (a << 32) | c
            at[b] += 1
    capacity = 16 + len(buckets) // 16
    block_s, block_k, offset = _blocks(capacity, np.empty(0, np.int64), 0, 0)
    block_next = np.arange(1, capacity + 1).astype(np.int32)  # all free, linked
    block_next[-1] = -1
    heap_s, heap_k = _entries(64, np.empty(0, np.int64), 0)
    state = np.array([-1, 0, 0, capacity, free_chunk, used, -1, -1])
    while True:
        entries, blocks = _merge(stats, threshold, mode, q, bins, nodes, alive, ends, chunks, table, low, scale, starts,
                                 initial, buckets, block_s, block_k, block_next, offset, heap_s, heap_k, state,
                                 frozen, strict)
        if entries == 0 and blocks == 0:
            break
        if W * (state[SIZE] + entries) > len(heap_s):
            heap_s, heap_k = _entries(2 * (state[SIZE] + entries), heap_k, state[SIZE])
        if blocks > state[SPARE]:  # add free blocks
            more = max(blocks, len(block_next))
            block_s, block_k, offset = _blocks(len(block_next) + more, block_k, offset, len(block_next))
            links = np.arange(len(block_next) + 1, len(block_next) + more + 1).astype(np.int32)
            links[-1] = state[FREE_BLOCK]
            state[FREE_BLOCK], state[SPARE] = len(block_next), state[SPARE] + more
            block_next = np.concatenate((block_next, links))
    roots = np.empty(n, np.int64)
    for v in range(n):  # the least node of each node's segment
        roots[v] = _least(nodes, _root(nodes, v))
    if len(frozen) > 0:
        segment_frozen = np.empty(n, np.int8)
        for v in range(n):
            segment_frozen[v] = frozen[_root(nodes, v)]
        frozen[:] = segment_frozen
    return roots

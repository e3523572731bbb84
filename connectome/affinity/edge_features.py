"""Features of region-graph edges for the learned merge score (`edge_classifier`), all vectorised.

One row per edge of a block's region graph (`region_graph`, edges sorted by (u, v)): the contact's
affinity mean, quantiles, spread and share of low affinities (from its 64-bin histogram), the
contact area and the sizes of both fragments, where a fragment spanning more than `limit` voxels on
some axis counts as `prod(limit)` voxels (its exact size is not known to a block that sees part of
it). With the EM image (`INTENSITY_FEATURES`, since 2026-12-07): the image's mean and spread over the
contact's voxel pairs, the mean over the smaller fragment's voxels and its difference to the contact's
(the larger fragment's mean is left out: a block sees only part of a large fragment). Every feature
depends only on the two fragments and their contact, not on their other neighbours, so `edge_context`
can compute it from whole basins around a block and give every block layout the same score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cc3d
import fastremap
import numpy as np
from numba import njit
from scipy.sparse import csr_array

from connectome.affinity.agglomeration import HIST_BINS

FEATURES = (
    "mean_affinity", "q10", "q25", "q50", "q75", "q90", "affinity_std", "low_fraction",
    "log_contact", "log_size_small", "log_size_large", "contact_per_surface",
)
# the image (uint8 / 255) on the contact's voxel pairs (each pair's two voxels averaged) and in the smaller fragment
INTENSITY_FEATURES = ("contact_intensity", "contact_intensity_std", "small_intensity", "small_minus_contact")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
EXTENT = 16  # voxels on the finest axis: fragments up to this extent are "small"


def extent_limit(voxel_size: Sequence[float], extent: int = EXTENT) -> tuple[int, int, int]:
    """`extent` voxels on the finest axis, the same distance on coarser axes (at least 2 voxels)."""
    finest = min(voxel_size)
    z, y, x = (max(2, math.ceil(extent * finest / s)) for s in voxel_size)
    return z, y, x


def small_fragments(labels: np.ndarray, limit: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ids of `labels`, their voxel counts, and whether each spans at most `limit` on every axis."""
    dense, remap = fastremap.renumber(np.ascontiguousarray(labels), start=1, preserve_zero=False)
    old = np.zeros(len(remap) + 1, labels.dtype)  # the id of each dense label 1..n
    old[np.fromiter(remap.values(), np.int64, len(remap))] = np.fromiter(remap.keys(), labels.dtype, len(remap))
    stats = cc3d.statistics(dense, no_slice_conversion=True)  # boxes as (min, max) per axis, inclusive
    sizes = np.asarray(stats["voxel_counts"], np.int64)[1:len(old)]
    box = np.asarray(stats["bounding_boxes"], np.int64).reshape(-1, 6)[1:len(old)]
    extents = box[:, 1::2] - box[:, 0::2] + 1
    small = np.all(extents <= np.asarray(limit, np.int64), axis=1)
    order = np.argsort(old[1:], kind="stable")
    return old[1:][order], sizes[order], small[order]


def histogram_features(hist) -> np.ndarray:
    """(edges, 7): quantiles, standard deviation and share below 0.5 of each row's affinities; `hist` a
    dense (edges, HIST_BINS) array or a CSR array with each row's bins in increasing order."""
    if isinstance(hist, csr_array):
        if not hist.has_canonical_format:  # each row's bins once, in increasing order
            hist = hist.copy()
            hist.sum_duplicates()
        return _sparse_histogram_features(hist.indptr.astype(np.int64), hist.indices.astype(np.int64),
                                          hist.data.astype(np.float64), np.asarray(QUANTILES), HIST_BINS)
    hist = np.asarray(hist, np.float64)
    total = np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    cumulative = np.cumsum(hist, axis=1)
    quantiles = [((cumulative < q * total).sum(axis=1) + 0.5) / HIST_BINS for q in QUANTILES]
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    mean = hist @ centres / total[:, 0]
    std = np.sqrt(np.maximum(hist @ centres**2 / total[:, 0] - mean**2, 0.0))
    low = hist[:, : HIST_BINS // 2].sum(axis=1) / total[:, 0]
    return np.stack([*quantiles, std, low], axis=1)


@njit(cache=True)
def _sparse_histogram_features(indptr, bins, counts, quantiles, n_bins):
    """`histogram_features` of CSR rows without making them dense (a quantile is the first bin whose
    cumulative count reaches q x total: the dense form's count of bins below it)."""
    n = len(indptr) - 1
    out = np.empty((n, len(quantiles) + 2))
    for row in range(n):
        lo, hi = indptr[row], indptr[row + 1]
        total = 0.0
        first = 0.0
        second = 0.0
        low = 0.0
        for k in range(lo, hi):
            c = counts[k]
            centre = (bins[k] + 0.5) / n_bins
            total += c
            first += c * centre
            second += c * centre * centre
            if bins[k] < n_bins // 2:
                low += c
        total = max(total, 1.0)
        for j in range(len(quantiles)):
            target = quantiles[j] * total
            below = n_bins
            cumulative = 0.0
            for k in range(lo, hi):
                cumulative += counts[k]
                if not cumulative < target:
                    below = bins[k]
                    break
            out[row, j] = (below + 0.5) / n_bins
        mean = first / total
        out[row, len(quantiles)] = np.sqrt(max(second / total - mean * mean, 0.0))
        out[row, len(quantiles) + 1] = low / total
    return out


def _dense(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fragments` renumbered 1..n (0 kept), with the sorted old ids and the new id of each."""
    dense, mapping = fastremap.renumber(np.ascontiguousarray(fragments), start=1, preserve_zero=True)
    old = np.fromiter(mapping.keys(), np.uint64, len(mapping))
    new = np.fromiter(mapping.values(), np.int64, len(mapping))
    order = np.argsort(old)
    return dense.astype(np.int64), old[order], new[order]


def contact_intensity(fragments: np.ndarray, raw: np.ndarray, u: np.ndarray, v: np.ndarray, *,
                      renumbered: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the image (uint8 / 255) over each edge's face-adjacent voxel pairs in
    `fragments` (each pair's two voxels averaged); (u, v) sorted, u < v, each a fragment of the array; `renumbered`:
    its `_dense` if already computed."""
    n = len(u)
    dense, old, new = renumbered if renumbered is not None else _dense(fragments)
    width = np.int64(len(old) + 1)
    du = new[np.searchsorted(old, np.asarray(u, np.uint64))]
    dv = new[np.searchsorted(old, np.asarray(v, np.uint64))]
    keys = np.minimum(du, dv) * width + np.maximum(du, dv)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    sums, squares, pairs = np.zeros(n), np.zeros(n), np.zeros(n)
    image = np.asarray(raw, np.float64) / 255.0
    for d in range(3):
        hi = tuple(slice(1, None) if k == d else slice(None) for k in range(3))
        lo = tuple(slice(None, -1) if k == d else slice(None) for k in range(3))
        a, b = dense[hi], dense[lo]
        touch = (a != b) & (a != 0) & (b != 0)
        pair_keys = np.minimum(a[touch], b[touch]) * width + np.maximum(a[touch], b[touch])
        at = np.minimum(np.searchsorted(ordered, pair_keys), max(n - 1, 0))
        wanted = ordered[at] == pair_keys if n else np.zeros(len(pair_keys), bool)
        row = order[at[wanted]]
        value = (0.5 * (image[hi][touch] + image[lo][touch]))[wanted]
        sums += np.bincount(row, value, n)
        squares += np.bincount(row, value * value, n)
        pairs += np.bincount(row, None, n)
    mean = sums / np.maximum(pairs, 1.0)
    return mean, np.sqrt(np.maximum(squares / np.maximum(pairs, 1.0) - mean * mean, 0.0))


def fragment_intensity(fragments: np.ndarray, raw: np.ndarray, ids: np.ndarray, *,
                       renumbered: tuple | None = None) -> np.ndarray:
    """Mean image (uint8 / 255) over the voxels of each fragment of `ids` (each a fragment of the array); `renumbered`:
    its `_dense` if already computed."""
    dense, old, new = renumbered if renumbered is not None else _dense(fragments)
    totals = np.bincount(dense.ravel(), np.asarray(raw, np.float64).ravel() / 255.0, len(old) + 1)
    voxels = np.bincount(dense.ravel(), None, len(old) + 1)
    rows = new[np.searchsorted(old, np.asarray(ids, np.uint64))]
    return totals[rows] / np.maximum(voxels[rows], 1)


def edge_features(fragments: np.ndarray, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                  hist, limit: Sequence[int], known: tuple | None = None, raw: np.ndarray | None = None) -> np.ndarray:
    """(edges, len(FEATURES)) float32 for the edges (u, v) of `fragments`; `known`: its
    `small_fragments` if already computed. With `raw` (the EM image of `fragments`' box, uint8), the
    `INTENSITY_FEATURES` follow as further columns."""
    u, v = np.asarray(u, np.uint64), np.asarray(v, np.uint64)
    n = len(u)
    width = len(FEATURES) + (len(INTENSITY_FEATURES) if raw is not None else 0)
    if n == 0:
        return np.zeros((0, width), np.float32)
    counts = np.asarray(counts, np.float64)
    mean = np.asarray(sums, np.float64) / counts
    ids, sizes, small_ = known if known is not None else small_fragments(fragments, limit)
    counted = np.where(small_, sizes, math.prod(limit)).astype(np.float64)
    su, sv = counted[np.searchsorted(ids, u)], counted[np.searchsorted(ids, v)]
    small_is_u = su <= sv
    small = np.where(small_is_u, su, sv)
    large = np.where(small_is_u, sv, su)
    log_contact = np.log1p(counts)
    out = np.empty((n, width), np.float32)  # each float64 column rounded to float32 as astype does
    out[:, 0] = mean
    out[:, 1:8] = histogram_features(hist)
    out[:, 8] = log_contact
    out[:, 9] = np.log1p(small)
    out[:, 10] = np.log1p(large)
    out[:, 11] = log_contact - np.log1p(small) * (2.0 / 3.0)
    if raw is not None:
        renumbered = _dense(fragments)  # once for both
        contact, spread = contact_intensity(fragments, raw, u, v, renumbered=renumbered)
        inside = fragment_intensity(fragments, raw, np.where(small_is_u, u, v), renumbered=renumbered)
        out[:, 12] = contact
        out[:, 13] = spread
        out[:, 14] = inside
        out[:, 15] = inside - contact
    return out

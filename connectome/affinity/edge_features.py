"""Features of region-graph edges for the learned merge score (`edge_classifier`), all vectorised.

One row per edge of a block's region graph (`region_graph`, edges sorted by (u, v)): the contact's
affinity mean, quantiles, spread and share of low affinities (from its 64-bin histogram), the
contact area, the sizes of both fragments in the block (write box plus the layer below its inner
faces, what the block reads), and how the edge compares with the best edge of either fragment. A
fragment cut by a block face is seen as its piece in the block, so features near block faces
depend on the block layout; edges between fragments that no face cuts have the same features in
any layout.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_array

from connectome.affinity.agglomeration import HIST_BINS

FEATURES = (
    "mean_affinity", "q10", "q25", "q50", "q75", "q90", "affinity_std", "low_fraction",
    "log_contact", "log_size_small", "log_size_large", "contact_per_surface",
    "gap_to_best_small", "gap_to_best_large", "log_degree_small", "log_degree_large",
)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def histogram_features(hist: np.ndarray) -> np.ndarray:
    """(edges, 7): quantiles, standard deviation and share below 0.5 of each row's affinities."""
    hist = np.asarray(hist, np.float64)
    total = np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    cumulative = np.cumsum(hist, axis=1)
    quantiles = [((cumulative < q * total).sum(axis=1) + 0.5) / HIST_BINS for q in QUANTILES]
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    mean = hist @ centres / total[:, 0]
    std = np.sqrt(np.maximum(hist @ centres**2 / total[:, 0] - mean**2, 0.0))
    low = hist[:, : HIST_BINS // 2].sum(axis=1) / total[:, 0]
    return np.stack([*quantiles, std, low], axis=1)


def edge_features(fragments: np.ndarray, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                  hist) -> np.ndarray:
    """(edges, len(FEATURES)) float32 for the edges (u, v) of `fragments` (the block's read array)."""
    u, v = np.asarray(u, np.uint64), np.asarray(v, np.uint64)
    n = len(u)
    if n == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    dense = hist.toarray() if isinstance(hist, csr_array) else np.asarray(hist)
    counts = np.asarray(counts, np.float64)
    mean = np.asarray(sums, np.float64) / counts
    ids, sizes = np.unique(fragments, return_counts=True)
    iu, iv = np.searchsorted(ids, u), np.searchsorted(ids, v)
    su, sv = sizes[iu].astype(np.float64), sizes[iv].astype(np.float64)
    small_is_u = su <= sv
    small = np.where(small_is_u, su, sv)
    large = np.where(small_is_u, sv, su)
    best = np.zeros(len(ids))  # the best mean affinity among each fragment's edges
    np.maximum.at(best, iu, mean)
    np.maximum.at(best, iv, mean)
    degree = np.bincount(np.concatenate([iu, iv]), minlength=len(ids)).astype(np.float64)
    gap_u, gap_v = best[iu] - mean, best[iv] - mean
    deg_u, deg_v = degree[iu], degree[iv]
    log_contact = np.log1p(counts)
    out = np.column_stack([
        mean, histogram_features(dense), log_contact, np.log1p(small), np.log1p(large),
        log_contact - np.log1p(small) * (2.0 / 3.0),
        np.where(small_is_u, gap_u, gap_v), np.where(small_is_u, gap_v, gap_u),
        np.log1p(np.where(small_is_u, deg_u, deg_v)), np.log1p(np.where(small_is_u, deg_v, deg_u)),
    ])
    return out.astype(np.float32)

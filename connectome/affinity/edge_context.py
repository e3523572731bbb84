"""Learned merge scores that do not depend on the block layout.

A block's fragments are the global watershed basins cut at its faces (`watershed`), so features of
a cut piece would change with the layout. Here an edge between basins U and V gets the classifier's
p(merge) when at least one of them is *small* (spans at most the classifier's `limit` on every axis,
a property of the basin, not of the blocks); an edge between two large basins keeps its mean
affinity (exact in any layout, as the stored sums pool exactly). The features (`edge_features`)
depend only on the two basins and their contact, and count a large basin as `prod(limit)` voxels.

A block scores its edges in its read box grown by `limit` + 1: it runs the watershed again there
(a voxel's pointer depends only on its six edges, so a basin that does not reach the region's faces
is the global basin, whole), builds that region's graph and features, and gives each of its own
edges (u, v) the p(merge) of the basin pair holding u and v. Both basins touch the read box, so a
small one lies whole in the region, with its contacts; a large one is cut by the region or spans
more than the limit, and is seen as large in every layout; and the contact of a pair with a small
side lies next to that side. So every piece of a basin pair gets one score in every block, and the
merge, which pools score x contact count, scores the pair alike in any layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from connectome.affinity.edge_classifier import EdgeClassifier, learned_sums
from connectome.affinity.edge_features import edge_features, small_fragments
from connectome.affinity.encoding import affinities_as_float
from connectome.affinity.fragments import block_edges
from connectome.affinity.region_graph import region_graph
from connectome.affinity.watershed import basins, pointers, within_sections
from connectome.core.geometry import Box
from connectome.io import Volume


def scored_sums(p: np.ndarray, scored: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Table sums: p(merge) x contact count (`learned_sums`) where `scored`, the affinity sums elsewhere."""
    return np.where(scored, learned_sums(p, counts), np.asarray(sums, np.float64))


def one_block_sums(fragments: np.ndarray, tables: dict, features: np.ndarray, classifier: EdgeClassifier,
                   limit: Sequence[int]) -> np.ndarray:
    """`scored_sums` of a volume held in one block (its fragments are whole basins)."""
    ids, _, small = small_fragments(fragments, limit)
    scored = small[np.searchsorted(ids, tables["u"])] | small[np.searchsorted(ids, tables["v"])]
    return scored_sums(classifier.merge_probability(features), scored, tables["sums"], tables["counts"])


def context_sums(affinities: Volume, fragments: np.ndarray, read: Box, u: np.ndarray, v: np.ndarray,
                 sums: np.ndarray, counts: np.ndarray, classifier: EdgeClassifier, limit: Sequence[int],
                 aff_low: float, aff_high: float, in_plane: bool = False) -> np.ndarray:
    """`scored_sums` of a block's edges (u, v) with `sums` and `counts`; `fragments` is its read array
    (box `read`), scored with the basins of `read` grown by `limit` + 1."""
    if len(u) == 0:
        return np.zeros(0)
    region = read.grow([lim + 1 for lim in limit]).intersect(affinities.box)
    edges = block_edges(affinities, region)
    if in_plane:
        within_sections(edges)
    basin = basins(pointers(edges, aff_low), edges, aff_high)
    known = small_fragments(basin, limit)
    ids, _, small = known
    # each fragment of the block lies in one basin of the region
    frag_ids, first = np.unique(fragments, return_index=True)
    basin_of = basin[read.relative_to(region)].ravel()[first]
    iu = basin_of[np.searchsorted(frag_ids, np.asarray(u, fragments.dtype))]
    iv = basin_of[np.searchsorted(frag_ids, np.asarray(v, fragments.dtype))]
    lo, hi = np.minimum(iu, iv), np.maximum(iu, iv)
    scored = (small[np.searchsorted(ids, lo)] | small[np.searchsorted(ids, hi)]) & (lo != hi)
    p = np.zeros(len(u))
    if np.any(scored):
        affs = affinities_as_float(affinities.read(region), np.float64)
        bu, bv, b_sums, b_counts, hist = region_graph(basin, affs, (False, False, False))
        n = np.uint64(int(basin.max()) + 1)
        keys = bu.astype(np.uint64) * n + bv.astype(np.uint64)  # sorted, as the region graph's (u, v)
        want = lo[scored].astype(np.uint64) * n + hi[scored].astype(np.uint64)
        rows = np.flatnonzero(np.isin(keys, want))  # features only of the basin pairs this block needs
        at = np.minimum(np.searchsorted(keys[rows], want), max(len(rows) - 1, 0))
        if len(rows) == 0 or not np.array_equal(keys[rows][at], want):
            raise RuntimeError(f"edge_context: block edges without their basin pair in the region {region}")
        features = edge_features(basin, bu[rows], bv[rows], b_sums[rows], b_counts[rows], hist[rows, :], limit,
                                 known)
        p[scored] = classifier.merge_probability(features)[at]
    # two pieces of one basin (lo == hi) keep their affinity sums: the watershed's face links join them anyway
    return scored_sums(p, scored, sums, counts)

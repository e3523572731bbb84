"""Learned merge scores that do not depend on the block layout.

A block's fragments are the global watershed basins cut at its faces (`watershed`), so features of
a cut piece would change with the layout. Here an edge between basins U and V gets the classifier's
p(merge) when at least one of them is *small* (spans at most the classifier's `limit` on every axis,
a property of the basin, not of the blocks); an edge between two large basins keeps its mean
affinity (exact in any layout, as the stored sums pool exactly). The features (`edge_features`)
depend only on the two basins and their contact, and count a large basin as `prod(limit)` voxels.

A block scores its edges in its read box grown by `limit` + 1 (in y and x only for fragments within
sections, which never span two): it runs the watershed again there
(a voxel's pointer depends only on its six edges, so a basin that does not reach the region's faces
is the global basin, whole), builds that region's graph and features, and scores every voxel pair
of its own edges by the basin pair holding its two voxels (a fragment of a neighbouring block, in the
layer below a face, can lie in two basins of the region). Both voxels lie in the read box, so a
small basin lies whole in the region, with its contacts; a large one is cut by the region or spans
more than the limit, and is seen as large in every layout; and the contact of a pair with a small
side lies next to that side. So every voxel pair of a basin pair gets one score in every block, and
the merge, which pools score x contact count, scores the pair alike in any layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np

from connectome.affinity.blank import read_filled
from connectome.affinity.edge_classifier import EdgeClassifier, learned_sums
from connectome.affinity.edge_features import edge_features, small_fragments
from connectome.affinity.region_graph import region_graph
from connectome.affinity.watershed import affinity_box, stored_basins
from connectome.core.geometry import Box
from connectome.io import Volume


def _inverse(mapping: dict, dtype) -> np.ndarray:
    """The old id of each new label of a `fastremap.renumber` mapping {old: new} (new labels 0..n)."""
    out = np.zeros(max(mapping.values(), default=0) + 1, dtype)
    out[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(mapping.keys(), dtype, len(mapping))
    return out


def _small_basins(sizes: np.ndarray, boxes: np.ndarray, limit: Sequence[int]) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """`small_fragments` of the basins of `stored_basins` from its counts and boxes (row 0: no basin, a label
    only where some voxel has it)."""
    small = np.all(boxes[:, 1::2] - boxes[:, 0::2] + 1 <= np.asarray(limit, np.int64), axis=1)
    first = 0 if sizes[0] > 0 else 1
    return np.arange(first, len(sizes), dtype=np.uint64), sizes[first:], small[first:]


def scored_sums(p: np.ndarray, scored: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Table sums: p(merge) x contact count (`learned_sums`) where `scored`, the affinity sums elsewhere."""
    return np.where(scored, learned_sums(p, counts), np.asarray(sums, np.float64))


def one_block_sums(fragments: np.ndarray, tables: dict, features: np.ndarray, classifier: EdgeClassifier,
                   limit: Sequence[int]) -> np.ndarray:
    """`scored_sums` of a volume held in one block (its fragments are whole basins)."""
    ids, _, small = small_fragments(fragments, limit)
    scored = small[np.searchsorted(ids, tables["u"])] | small[np.searchsorted(ids, tables["v"])]
    return scored_sums(classifier.merge_probability(features), scored, tables["sums"], tables["counts"])


def context_sums(affinities: Volume, fragments: np.ndarray, affs: np.ndarray, has_lower: tuple[bool, bool, bool],
                 read: Box, u: np.ndarray, v: np.ndarray, classifier: EdgeClassifier, limit: Sequence[int],
                 aff_low: float, aff_high: float, in_plane: bool = False, image: Volume | None = None,
                 image_fill: int = 0) -> np.ndarray:
    """`scored_sums` of a block's edges (u, v) (sorted, as `region_graph` gives them for `fragments`, the
    block's read array of box `read`, and `affs`, its write box's affinities): every voxel pair of an
    edge scored by the pair of basins of `read` grown by `limit` + 1 that holds its two voxels. `image`: the EM
    image the affinities were predicted from, read where the classifier reads it, its blank voxels filled as the
    network read them (`affinity.blank.read_filled`, `image_fill` sections)."""
    if classifier.reads_image and image is None:
        raise RuntimeError(f"edge_context: classifier {classifier.path} reads the EM image; none given")
    if len(u) == 0:
        return np.zeros(0)
    # in-plane basins never leave their section, so the region need not grow in z
    region = read.grow([0 if in_plane and d == 0 else lim + 1 for d, lim in enumerate(limit)]).intersect(
        affinities.box)
    # the region's basins straight from its stored affinities, read once (the region's own are its first
    # voxels: affinity_box reaches one voxel further up)
    stored = affinities.read(affinity_box(region).intersect(affinities.box))
    basin, basin_sizes, basin_boxes = stored_basins(stored, region, affinities.box, aff_low, aff_high, in_plane)
    known = _small_basins(basin_sizes, basin_boxes, limit)
    ids, _, small = known
    # split each fragment of the block by the region basins its voxels lie in (a fragment of a
    # neighbouring block, in the layer below a face, can lie in several), then take the region graph
    frag_dense, frag_map = fastremap.renumber(np.ascontiguousarray(fragments), start=1, preserve_zero=True)
    frag_ids = _inverse(frag_map, fragments.dtype)
    n_basin = np.uint64(len(basin_sizes))  # basins 1..n
    inside = basin[read.relative_to(region)]
    key = frag_dense.astype(np.uint64) * n_basin + inside  # 0 where no fragment
    refined, key_map = fastremap.renumber(key, start=1, preserve_zero=True)
    keys = _inverse(key_map, np.uint64)
    ru, rv, r_sums, r_counts, _ = region_graph(refined.astype(np.uint64), affs, has_lower, histograms=False)
    piece_frag = frag_ids[(keys // n_basin).astype(np.int64)]
    piece_basin = keys % n_basin
    fu, fv = piece_frag[ru.astype(np.int64)], piece_frag[rv.astype(np.int64)]
    bu, bv = piece_basin[ru.astype(np.int64)], piece_basin[rv.astype(np.int64)]
    lo, hi = np.minimum(bu, bv), np.maximum(bu, bv)
    scored = (small[np.searchsorted(ids, lo)] | small[np.searchsorted(ids, hi)]) & (lo != hi) & (fu != fv)
    p = np.zeros(len(ru))
    if np.any(scored):
        affs_region = stored[(slice(None), *(slice(0, n) for n in region.shape))]  # uint8: no float64 copy
        touching = np.zeros(int(n_basin), bool)  # the basin pairs this block needs both touch its read box
        touching[inside] = True
        gu, gv, g_sums, g_counts, hist = region_graph(basin, affs_region, (False, False, False), touching)
        gkeys = gu.astype(np.uint64) * n_basin + gv.astype(np.uint64)  # sorted, as the region graph's (u, v)
        want = lo[scored] * n_basin + hi[scored]
        needed = np.unique(want)  # features only of the basin pairs this block needs
        rows = np.minimum(np.searchsorted(gkeys, needed), max(len(gkeys) - 1, 0))
        if len(gkeys) == 0 or not np.array_equal(gkeys[rows], needed):
            raise RuntimeError(f"edge_context: voxel pairs without their basin pair in the region {region}")
        at = np.searchsorted(needed, want)
        raw = read_filled(image, region, image_fill) if classifier.reads_image else None  # type: ignore[arg-type]
        features = edge_features(basin, gu[rows], gv[rows], g_sums[rows], g_counts[rows], hist[rows, :], limit,
                                 known, raw)
        p[scored] = classifier.merge_probability(features)[at]
    # each voxel pair's score, summed per edge of the block; pieces of one basin (lo == hi, joined by the
    # watershed's face links anyway) and pairs of two large basins keep their affinity sums
    piece_sums = scored_sums(p, scored, r_sums, r_counts)
    keep = fu != fv
    a, b = np.minimum(fu, fv)[keep], np.maximum(fu, fv)[keep]
    order = np.lexsort((b, a))
    a, b, piece_sums = a[order], b[order], piece_sums[keep][order]
    first = np.concatenate([[True], (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    totals = np.add.reduceat(piece_sums, np.flatnonzero(first)) if len(a) else np.zeros(0)
    if not (np.array_equal(a[first], u) and np.array_equal(b[first], v)):
        raise RuntimeError("edge_context: the block's edges differ from its voxel pairs' fragment pairs")
    return totals

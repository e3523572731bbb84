"""Expected run length (Januszewski et al. 2018) of a segmentation along ground-truth skeletons.

Given each skeleton node's segment id (looked up in the segmentation at the node's voxel):

- a *merging segment* is a non-zero segment that holds nodes of two or more skeletons;
- an edge is *correct* when both its nodes lie in the same non-zero segment and that segment
  is not merging; every other edge is erroneous: a *split edge* (two different non-zero
  segments), an *omitted edge* (a node in segment 0, i.e. unsegmented) or a *merged edge*
  (both nodes in one merging segment);
- a *run* is a connected component of correct edges; its length is the sum of their lengths;
- ERL = sum over all runs of (run length)^2 / total skeleton length (erroneous edges included).

That is the expected length of the correct run met at a point drawn uniformly along all
skeletons. A perfect segmentation of connected skeletons scores sum L_i^2 / sum L_i.

Counts reported: `merges` = number of merging segments; `splits` = number of split edges (each
place where a skeleton passes from one segment into another counts once; a skeleton cut into k
pieces by k-1 clean cuts counts k-1). Runs are connected components, not per-segment totals: a
skeleton that leaves segment A and comes back into it has two runs in A (funlib.evaluate's
`expected_run_length` sums them into one), which penalises the excursion as a real error would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from connectome.metrics.skeletons import Skeletons


@dataclass(frozen=True)
class RunLength:
    """ERL and its error counts; lengths in nm. `erl_nm` is None when there is no skeleton length."""

    erl_nm: float | None
    total_length_nm: float
    correct_length_nm: float
    merges: int
    splits: int
    merged_edges: int
    omitted_edges: int
    runs: int


def merging_segments(skeleton_ids: np.ndarray, node_segments: np.ndarray) -> np.ndarray:
    """Non-zero segment ids that hold nodes of two or more skeletons (sorted)."""
    on = node_segments != 0
    pairs = np.unique(np.stack([node_segments[on], skeleton_ids[on]], axis=1), axis=0)
    segments, skeletons_per_segment = np.unique(pairs[:, 0], return_counts=True)
    return segments[skeletons_per_segment >= 2]


def expected_run_length(
    skeletons: Skeletons, node_segments: np.ndarray, voxel_size: Sequence[float]
) -> RunLength:
    """ERL in nm of the segmentation whose id at each skeleton node is `node_segments`."""
    node_segments = np.asarray(node_segments).astype(np.uint64).reshape(-1)
    if len(node_segments) != len(skeletons.nodes):
        raise ValueError(f"{len(node_segments)} node segments for {len(skeletons.nodes)} nodes")
    lengths = skeletons.edge_lengths(voxel_size)
    total = float(lengths.sum())
    merged = merging_segments(skeletons.skeleton_ids, node_segments)
    seg_u = node_segments[skeletons.edges[:, 0]]
    seg_v = node_segments[skeletons.edges[:, 1]]
    omitted = (seg_u == 0) | (seg_v == 0)
    split = ~omitted & (seg_u != seg_v)
    in_merged = ~omitted & ~split & np.isin(seg_u, merged)
    correct = ~omitted & ~split & ~in_merged

    n = len(skeletons.nodes)
    good = skeletons.edges[correct]
    graph = coo_matrix((np.ones(len(good)), (good[:, 0], good[:, 1])), shape=(n, n))
    n_components, component = connected_components(graph, directed=False)
    run_lengths = np.bincount(component[good[:, 0]], weights=lengths[correct], minlength=n_components)
    run_lengths = run_lengths[run_lengths > 0]
    return RunLength(
        erl_nm=float(run_lengths @ run_lengths) / total if total > 0 else None,
        total_length_nm=total,
        correct_length_nm=float(lengths[correct].sum()),
        merges=int(len(merged)),
        splits=int(split.sum()),
        merged_edges=int(in_merged.sum()),
        omitted_edges=int(omitted.sum()),
        runs=int(len(run_lengths)),
    )

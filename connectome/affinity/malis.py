"""Constrained MALIS: loss weights that put the affinity loss on the edges that decide merges and splits.

Turaga et al. (NIPS 2009) and Funke et al. (TPAMI 2018). Every pair of labelled voxels is joined, on
the maximum spanning tree of the predicted nearest-neighbour affinities, at its *maximin* edge: the
weakest edge of the strongest path between them. A threshold agglomeration gets the pair right
exactly when that one edge is on the right side of the threshold. MALIS weights each edge by the
number of voxel pairs whose maximin edge it is, in two passes (the constrained version):

- positive pass: only edges inside one object (ground-truth affinity 1), so the pairs counted are
  pairs of one object, and the weight lands on the weakest link of each object's strongest path
  (the edge a split happens at);
- negative pass: edges inside an object set to 1 first, so each object is one node; then the edges
  between objects in descending predicted affinity, each counting the pairs of different objects
  it joins (the edge a merge happens at).

The loss is the squared error to the ground-truth affinity weighted by the counts, each pass
normalised to half the weight (`malis_loss`), on labels whose objects are first cut back by one voxel
where they touch (`grow_boundaries`), as Funke et al. train. Label 0 (boundary, unknown) voxels take part in the graph
but in no pair. Counts are computed on the CPU by union-find (numba), on the nearest-neighbour
channels only, which are the ones the fragments and the merge read.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import types
from numba.typed import Dict, List

from connectome.affinity.targets import _shifted, affinities_from_labels
from connectome.models.unet import NEAREST_OFFSETS


@numba.njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


@numba.njit(cache=True)
def _positive_counts(n: int, a: np.ndarray, b: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Pairs joined at each edge of `order` (edges within objects, strongest first) by union-find."""
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    counts = np.zeros(len(a), np.float64)
    for e in order:
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra == rb:
            continue
        counts[e] = float(size[ra]) * float(size[rb])
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
    return counts


@numba.njit(cache=True)
def _negative_counts(node_label: np.ndarray, node_size: np.ndarray, a: np.ndarray, b: np.ndarray,
                     order: np.ndarray) -> np.ndarray:
    """Pairs of different labels joined at each edge of `order` (edges between the nodes, which are the
    objects' connected pieces and the label-0 voxels, strongest first); label 0 counts in no pair."""
    k = len(node_label)
    parent = np.arange(k)
    total = np.zeros(k, np.int64)
    maps = List()
    for i in range(k):
        d = Dict.empty(key_type=types.int64, value_type=types.int64)
        if node_label[i] != 0:
            d[node_label[i]] = node_size[i]
            total[i] = node_size[i]
        maps.append(d)
    counts = np.zeros(len(a), np.float64)
    for e in order:
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra == rb:
            continue
        if len(maps[ra]) < len(maps[rb]):
            ra, rb = rb, ra
        big, small = maps[ra], maps[rb]
        same = 0.0
        for label, count in small.items():
            if label in big:
                same += float(big[label]) * float(count)
                big[label] += count
            else:
                big[label] = count
        counts[e] = float(total[ra]) * float(total[rb]) - same
        total[ra] += total[rb]
        parent[rb] = ra
        small.clear()
    return counts


def _edges(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat voxel indices (v, v - e_c) and flat edge indices into a (3, z, y, x) array, for every
    nearest-neighbour edge inside `shape`."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    edge_index = index.size * np.arange(3)
    a, b, e = [], [], []
    for c, offset in enumerate(NEAREST_OFFSETS):
        here, there = _shifted(shape, offset)
        a.append(index[here].ravel())
        b.append(index[there].ravel())
        e.append(edge_index[c] + index[here].ravel())
    return np.concatenate(a), np.concatenate(b), np.concatenate(e)


def malis_weights(affinities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Constrained MALIS pair counts, (3, z, y, x) float64, for predicted nearest-neighbour
    `affinities` (3, z, y, x; channel c joins v and v - e_c) and `labels` (z, y, x; 0 = no label)."""
    positive, negative = malis_passes(affinities, labels)
    return positive + negative


def malis_passes(affinities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positive (pairs of one object) and negative (pairs of two objects) counts of `malis_weights`."""
    import cc3d

    labels = np.asarray(labels)
    if affinities.shape != (3, *labels.shape):
        raise ValueError(f"affinities {affinities.shape} do not fit labels {labels.shape}")
    a, b, e = _edges(labels.shape)
    flat_labels = labels.ravel()
    flat_affs = np.asarray(affinities, np.float64).ravel()[e]
    inside = (flat_labels[a] == flat_labels[b]) & (flat_labels[a] != 0)
    positive = np.zeros(affinities.size, np.float64)
    negative = np.zeros(affinities.size, np.float64)

    pos = np.nonzero(inside)[0]
    order = pos[np.argsort(-flat_affs[pos], kind="stable")]
    positive[e] = _positive_counts(labels.size, a, b, order)

    # nodes of the negative pass: each object's connected pieces, and every label-0 voxel on its own
    pieces = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint64).astype(np.int64).ravel()
    unlabelled = pieces == 0
    pieces[unlabelled] = pieces.max() + 1 + np.arange(int(unlabelled.sum()))
    pieces -= 1
    node_size = np.bincount(pieces).astype(np.int64)
    node_label = np.zeros(len(node_size), np.int64)
    node_label[pieces] = flat_labels
    cross = np.nonzero(pieces[a] != pieces[b])[0]
    order = cross[np.argsort(-flat_affs[cross], kind="stable")]
    negative[e] = _negative_counts(node_label, node_size, pieces[a], pieces[b], order)
    return positive.reshape(affinities.shape), negative.reshape(affinities.shape)


def grow_boundaries(labels: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """`labels` with 0 on every voxel that touches another object along `axes`: a gap of two voxels where
    two objects meet, so that membrane voxels the labels give to one side belong to no pair."""
    grown = labels.copy()
    for axis in axes:
        here, there = _shifted(labels.shape, NEAREST_OFFSETS[axis])
        contact = (labels[here] != labels[there]) & (labels[here] != 0) & (labels[there] != 0)
        grown[here][contact] = 0
        grown[there][contact] = 0
    return grown


def malis_loss(probabilities: torch.Tensor, labels: np.ndarray, margin: tuple[int, int, int],
               gap_axes: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """Squared error to the affinities of the labels with their boundaries grown (`grow_boundaries` along
    `gap_axes`), weighted by the MALIS counts of each patch, each pass normalised to half the weight.

    `probabilities` is (n, c, z, y, x) with the nearest-neighbour channels first (the order of
    `NEAREST_OFFSETS`); `labels` is (n, z, y, x); the counts are taken inside the patch less `margin`
    voxels at each face, where the network saw full context. Without the gap, labels that give every
    membrane voxel to one side (medulla, CREMI) make the positive pass pull the affinities across membranes
    up; normalised together, the far more numerous pairs of different objects push every affinity down.
    """
    inner = tuple(slice(m, s - m) for m, s in zip(margin, labels.shape[1:]))
    total = probabilities.new_zeros(())
    for i in range(labels.shape[0]):
        p = probabilities[i, :3][(slice(None), *inner)]
        grown = grow_boundaries(labels[i][inner], gap_axes)
        target = torch.from_numpy(affinities_from_labels(grown, NEAREST_OFFSETS)[0]).to(p.device, p.dtype)
        passes = malis_passes(p.detach().float().cpu().numpy(), grown)
        w = sum(0.5 * counts / counts.sum() for counts in passes if counts.sum() > 0)
        if isinstance(w, np.ndarray):
            weight = torch.from_numpy(w).to(p.device, p.dtype)
            total = total + (weight * (p - target) ** 2).sum()
    return total / labels.shape[0]

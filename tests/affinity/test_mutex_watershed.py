"""Mutex-watershed agglomeration: hand-built graphs with known results, connected components without
repulsion, independence of the node numbering, and the compiled merge equal to its Python reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from connectome.affinity.agglomeration import lookup_table
from connectome.affinity.mutex_watershed import LINKAGES, mutex_lookup_table, mutex_regions, mutex_regions_reference

BIAS = 0.5 + 1 / (4 * 255)  # no stored affinity k / 255 lies at it, nor two at the same distance from it


def tables(u, v, affinity, counts=None, nodes=None, links=()):
    """Region-graph tables of fragments `nodes` (default: those of the edges), one row per edge (u, v)
    whose voxel pairs all have the stored affinity k / 255 nearest `affinity`."""
    u, v = np.asarray(u, np.uint64), np.asarray(v, np.uint64)
    counts = np.ones(len(u), np.int64) if counts is None else np.asarray(counts, np.int64)
    sums = np.rint(np.asarray(affinity, np.float64) * 255) / 255 * counts
    nodes = np.unique(np.concatenate([u, v])) if nodes is None else np.unique(np.asarray(nodes, np.uint64))
    link_u = np.array([a for a, _ in links], np.uint64)
    link_v = np.array([b for _, b in links], np.uint64)
    return {"nodes": nodes, "u": u, "v": v, "sums": sums, "counts": counts, "link_u": link_u, "link_v": link_v}


def partition(keys, values) -> set[frozenset]:
    """The segments of a lookup table as sets of fragment ids."""
    groups: dict[int, set[int]] = {}
    for k, s in zip(np.asarray(keys).tolist(), np.asarray(values).tolist()):
        groups.setdefault(s, set()).add(k)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("linkage", ["mutex", "average"])
def test_strong_repulsion_keeps_clusters_apart_against_an_attractive_chain(linkage):
    # chain 1 - 2 - 3 - 4 of attractive edges, and a weak-affinity contact of 1 and 4: the strongest edge
    t = tables([1, 2, 3, 1], [2, 3, 4, 4], [0.8, 0.7, 0.8, 0.0], counts=[10, 10, 10, 1])
    keys, values = mutex_lookup_table(t, BIAS, linkage)
    assert keys.tolist() == [1, 2, 3, 4]
    assert values.tolist() == [1, 1, 3, 3]  # the mutex of 1 and 4 passes to their clusters
    # the serial mean merge pools the weak contact into the chain's (mean 0.64 > 0.5) and joins all
    assert lookup_table(t, 1 - BIAS)[1].tolist() == [1, 1, 1, 1]
    # a weaker repulsion, taken after the chain's edges, comes too late
    weak = tables([1, 2, 3, 1], [2, 3, 4, 4], [0.8, 0.7, 0.8, 0.35], counts=[10, 10, 10, 1])
    assert mutex_lookup_table(weak, BIAS, linkage)[1].tolist() == [1, 1, 1, 1]


def test_average_linkage_pools_the_contact_of_merged_clusters():
    # 1-2 merge first; then {1, 2} meets 3 through 1-3 (0.3) and 2-3 (0.9). Static weights take 2-3
    # (0.4 from the bias) before the repulsive 1-3 (0.2) and join 3; average linkage pools both into one
    # contact of mean 0.36 (1-3 holds 9 of its 10 pairs), repulsive: 3 stays apart
    t = tables([1, 1, 2], [2, 3, 3], [1.0, 0.3, 0.9], counts=[5, 9, 1])
    assert mutex_lookup_table(t, BIAS, "mutex")[1].tolist() == [1, 1, 1]
    assert mutex_lookup_table(t, BIAS, "average")[1].tolist() == [1, 1, 3]


def test_sum_linkage_lets_a_large_contact_outweigh_a_small_repulsive_one():
    # 1-2 and 2-3 weakly attractive over 100 pairs each, 1-3 repulsive over 5: by mean distance from
    # the bias the repulsion comes first and keeps 3 apart; weighted by contact it comes last
    t = tables([1, 2, 1], [2, 3, 3], [0.6, 0.6, 0.0], counts=[100, 100, 5])
    assert mutex_lookup_table(t, BIAS, "mutex")[1].tolist() == [1, 1, 3]
    assert mutex_lookup_table(t, BIAS, "average")[1].tolist() == [1, 1, 3]
    assert mutex_lookup_table(t, BIAS, "sum")[1].tolist() == [1, 1, 1]


@pytest.mark.parametrize("linkage", LINKAGES)
def test_without_repulsive_edges_equals_connected_components(linkage):
    rng = np.random.default_rng(3)
    n, m = 300, 400
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = u != v
    u, v = u[keep], v[keep]
    ids = np.sort(rng.choice(np.arange(1, 10**6), n, replace=False)).astype(np.uint64)
    affinity = rng.uniform(0.55, 1.0, len(u))
    t = tables(ids[u], ids[v], affinity, rng.integers(1, 50, len(u)), nodes=ids)
    label = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)[1]
    least = np.full(label.max() + 1, n)
    np.minimum.at(least, label, np.arange(n))
    keys, values = mutex_lookup_table(t, BIAS, linkage)
    assert np.array_equal(keys, ids)
    assert np.array_equal(values, ids[least[label]])
    assert len(np.unique(values)) > 1  # isolated nodes and several components: not a trivial answer
    # repulsive edges only between those components change nothing
    a, b = rng.integers(0, n, 200), rng.integers(0, n, 200)
    between = label[a] != label[b]
    a, b = a[between], b[between]
    t2 = tables(ids[np.concatenate([u, a])], ids[np.concatenate([v, b])],
                np.concatenate([affinity, rng.uniform(0.0, 0.45, len(a))]), nodes=ids)
    assert np.array_equal(mutex_lookup_table(t2, BIAS, linkage)[1], values)


@pytest.mark.parametrize("linkage", LINKAGES)
def test_independent_of_the_node_numbering(linkage):
    rng = np.random.default_rng(5)
    n = 120
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, n, (250, 2)) if a < b}
    u, v = (np.array(x) for x in zip(*sorted(pairs)))
    # distinct affinities k / 255, none equally far from the bias: no ties in any order
    affinity = rng.choice(256, len(u), replace=False) / 255 if len(u) <= 256 else None
    assert affinity is not None
    counts = rng.integers(1, 20, len(u))
    ids = np.arange(1, n + 1, dtype=np.uint64)
    first = partition(*mutex_lookup_table(tables(ids[u], ids[v], affinity, counts, nodes=ids), BIAS, linkage))
    assert 1 < len(first) < n
    for _ in range(3):
        new = rng.permutation(n).astype(np.uint64) * 7 + 11  # another numbering, another order of ids
        renamed = partition(*mutex_lookup_table(tables(new[u], new[v], affinity, counts, nodes=new), BIAS, linkage))
        back = {int(b): int(a) for a, b in zip(ids, new)}
        assert {frozenset(back[x] for x in g) for g in renamed} == first


def test_linked_pieces_join_first_and_segments_take_the_least_fragment_id():
    # pieces 5 and 9 of one basin (a face link); 9 - 20 attractive, 5 - 20 repulsive in the same basin pair
    t = tables([9, 5, 20], [20, 20, 30], [0.9, 0.2, 0.1], counts=[4, 1, 3], links=[(5, 9)])
    keys, values = mutex_lookup_table(t, BIAS)
    assert keys.tolist() == [5, 9, 20, 30]
    assert values.tolist() == [5, 5, 5, 30]  # the basin's contact with 20 pooled: mean 0.76


@pytest.mark.parametrize("linkage", LINKAGES)
def test_compiled_equals_the_python_reference_on_random_graphs(linkage):
    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(150):
        n = int(rng.integers(2, 40))
        m = int(rng.integers(1, 4 * n))
        u, v = rng.integers(0, n, m), rng.integers(0, n, m)
        keep = u != v
        if not keep.any():
            continue
        u, v = u[keep], v[keep]  # repeated pairs pool, as rows of several blocks do
        counts = rng.integers(1, 8, len(u)).astype(np.float64)
        if linkage == "mutex" and trial % 2:
            sums = rng.integers(0, 5, len(u)) / 4 * counts  # few levels: ties, broken by contact and nodes
        else:
            sums = rng.random(len(u)) * counts
        nodes = np.sort(rng.choice(10**9, n, replace=False)).astype(np.uint64)
        stats = np.stack([sums, counts], axis=1)
        for bias in (0.25, 0.5, 0.7):
            got = mutex_regions(nodes, nodes[u], nodes[v], stats, bias, linkage)
            want = mutex_regions_reference(nodes, nodes[u], nodes[v], stats, bias, linkage)
            assert np.array_equal(got, want), (trial, bias)
            checked += len(np.unique(got)) < n
    assert checked > 100  # most cases merged something


@pytest.mark.parametrize("linkage", LINKAGES)
def test_fragments_without_edges_stay_alone(linkage):
    keys, values = mutex_lookup_table(tables([], [], [], nodes=[4, 2, 9]), 0.5, linkage)
    assert keys.tolist() == [2, 4, 9] and values.tolist() == [2, 4, 9]
    empty = mutex_lookup_table(tables([], [], [], nodes=[]), 0.5, linkage)
    assert len(empty[0]) == 0 and len(empty[1]) == 0


def test_unknown_linkage_is_refused():
    with pytest.raises(ValueError, match="linkage 'max'"):
        mutex_lookup_table(tables([1], [2], [0.9]), 0.5, "max")

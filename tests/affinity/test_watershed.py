"""The steepest-ascent watershed gives the same basins whatever the block layout."""

import numpy as np

from connectome.affinity.agglomeration import join_links
from connectome.affinity.watershed import affinity_box, basins, edge_values, face_links, pointers
from connectome.core.geometry import BlockGrid, Box
from connectome.metrics.voi import voi


def _edges(affs, region, volume):
    box = affinity_box(region).intersect(volume)
    return edge_values(affs[(slice(None), *box.to_slices())], region, volume)


def test_blocks_plus_face_links_equal_whole_volume_basins():
    rng = np.random.default_rng(4)
    shape = (12, 20, 22)
    affs = np.round(rng.random((3, *shape)), 2).astype(np.float32)  # many ties, as with uint8 affinities
    volume = Box.from_shape(shape)
    whole_edges = _edges(affs, volume, volume)
    whole = basins(pointers(whole_edges, 0.05), whole_edges, 0.97)
    assert 20 < len(np.unique(whole)) < whole.size // 2

    grid = BlockGrid(volume, (5, 8, 9))
    fragments = np.zeros(shape, np.uint64)
    for b in grid:
        e = _edges(affs, b.write_box, volume)
        local = basins(pointers(e, 0.05), e, 0.97)
        fragments[b.write_box.to_slices()] = np.where(local > 0, local + (np.uint64(b.index) << np.uint64(32)), 0)
    links_u, links_v = [], []
    for b in grid:
        w = b.write_box
        has_lower = tuple(o > 0 for o in w.offset)
        grown = Box.from_corners(tuple(o - int(h) for o, h in zip(w.offset, has_lower)), w.end)
        e = _edges(affs, grown, volume)
        u, v = face_links(pointers(e, 0.05), e, fragments[grown.to_slices()], has_lower, 0.97)
        links_u.append(u)
        links_v.append(v)
    nodes = np.unique(fragments[fragments != 0])
    basin = join_links(nodes, np.concatenate(links_u), np.concatenate(links_v))
    joined = np.zeros(shape, np.int64)
    nz = fragments != 0
    joined[nz] = basin[np.searchsorted(nodes, fragments[nz])] + 1
    assert ((joined == 0) == (whole == 0)).all()
    split, merge = voi(joined.astype(np.uint64), whole)
    assert split == 0 and merge == 0  # the same partition, exactly
    assert len(np.unique(fragments)) > len(np.unique(whole))  # blocks did cut basins


def test_compiled_basins_equal_connected_components_of_the_joins():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from connectome.affinity.watershed import DIRECTIONS, NO_POINTER, joins

    rng = np.random.default_rng(7)
    affs = np.round(rng.random((3, 9, 13, 11)) ** 4, 1).astype(np.float32)  # ties, and voxels with no basin
    volume = Box.from_shape(affs.shape[1:])
    e = _edges(affs, volume, volume)
    ptr = pointers(e, 0.5)
    got = basins(ptr, e, 0.85)
    index = np.arange(ptr.size).reshape(ptr.shape)
    src, dst = [], []
    for p, step in enumerate(DIRECTIONS):
        for voxel in zip(*np.nonzero(joins(ptr, e, 0.85, p) & (ptr != NO_POINTER))):
            target = tuple(int(c + s) for c, s in zip(voxel, step))
            if all(0 <= t < n for t, n in zip(target, ptr.shape)):
                src.append(index[voxel])
                dst.append(index[target])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(ptr.size, ptr.size))
    comp = connected_components(graph, directed=False)[1].reshape(ptr.shape)
    assert ((got == 0) == (ptr == NO_POINTER)).all() and (ptr == NO_POINTER).any()
    first = {}  # ids numbered by first appearance in C order
    expected = [first.setdefault(c, len(first) + 1) if p != NO_POINTER else 0 for c, p in zip(comp.ravel(), ptr.ravel())]
    assert got.ravel().tolist() == expected
    assert 10 < got.max() < ptr.size // 2

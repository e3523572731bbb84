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


def test_stored_basins_equal_the_float_edges_basins_with_counts_and_boxes():
    """`stored_basins` (from uint8 codes, no float32 edge arrays) gives `basins(pointers(edge_values))` exactly,
    in and out of sections, at the volume's faces and inside it, with each label's voxel count and box."""
    from connectome.affinity.edge_features import small_fragments
    from connectome.affinity.encoding import affinities_as_float
    from connectome.affinity.watershed import stored_basins, within_sections

    rng = np.random.default_rng(11)
    volume = Box((3, -2, 5), (7, 11, 12))
    for trial in range(40):
        codes = (rng.integers(0, 4, (3, *volume.shape)) * 85).astype(np.uint8)  # ties everywhere
        offset = [int(rng.integers(0, s)) for s in volume.shape]
        shape = [int(rng.integers(1, s - o + 1)) for s, o in zip(volume.shape, offset)]
        region = Box(tuple(o + v for o, v in zip(offset, volume.offset)), tuple(shape))
        stored = codes[(slice(None), *affinity_box(region).intersect(volume).relative_to(volume))]
        low, high = ((0.5 / 255, 0.99), (0.4, 0.6), (0.9, 0.2))[trial % 3]  # the last: joins into no-basin voxels
        for in_plane in (False, True):
            e = edge_values(affinities_as_float(stored, np.float32), region, volume)
            if in_plane:
                within_sections(e)
            want = basins(pointers(e, low), e, high)
            got, sizes, boxes = stored_basins(stored, region, volume, low, high, in_plane)
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
            ids, counts, small = small_fragments(want, (2, 3, 3))
            first = 0 if sizes[0] else 1
            np.testing.assert_array_equal(ids, np.arange(first, len(sizes)))
            np.testing.assert_array_equal(counts, sizes[first:])
            extent = boxes[:, 1::2] - boxes[:, 0::2] + 1
            np.testing.assert_array_equal(small, np.all(extent <= (2, 3, 3), axis=1)[first:])


def test_pointers_are_argmax_with_its_ties_and_nans():
    rng = np.random.default_rng(5)
    edges = (rng.integers(-1, 3, (6, 4, 5, 6)) / 2).astype(np.float32)
    edges[rng.random(edges.shape) < 0.1] = np.nan
    best = np.argmax(edges, axis=0).astype(np.int8)
    top = np.take_along_axis(edges, best[np.newaxis].astype(np.int64), axis=0)[0]
    best[top < 0.4] = -1
    np.testing.assert_array_equal(pointers(edges, 0.4), best)

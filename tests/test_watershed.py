"""The steepest-ascent watershed gives the same basins whatever the block layout."""

import numpy as np

from connectome.agglomeration import join_links
from connectome.geometry import BlockGrid, Box
from connectome.metrics.voi import voi
from connectome.watershed import affinity_box, basins, edge_values, face_links, pointers


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

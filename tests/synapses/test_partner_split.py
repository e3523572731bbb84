"""One cleft object whose voxels point into two boutons: by default two synapses (one per well-supported
(post, pre) pair, as for two touching clefts), or, without the split, one with the majority partner."""

import numpy as np

from connectome.core.geometry import Box
from connectome.synapses.fragments import fragment_table, label_block
from connectome.synapses.merge import synapse_rows

VS = (8.0, 8.0, 8.0)


def _table():
    shape = (4, 40, 40)
    seg = np.full(shape, 2, np.uint64)  # the postsynaptic cell fills the middle
    seg[:, :, :10] = 1  # bouton 1 on the left
    seg[:, :, 30:] = 5  # bouton 5 on the right
    prob = np.zeros(shape, np.uint8)
    prob[:, 10:30, 12:27] = 220  # one connected cleft inside cell 2, 15 columns
    vec = np.zeros((3, *shape), np.float32)
    vec[2, :, :, 12:20] = -1.0  # its left 8 columns point 10 voxels (80 nm) left, into bouton 1
    vec[2, :, :, 20:27] = 1.0  # its right 7 columns point right, into bouton 5
    box = Box.from_shape(shape)
    frag = label_block(prob, 0.5, 0)
    return fragment_table(frag, prob, vec, seg, box, box, box, 80.0, VS)


def test_split_by_partners():
    rows, lookup = synapse_rows(_table(), 50, VS, partners=True, split=True)
    got = sorted((int(p), int(q), int(n)) for p, q, n in zip(rows["pre"], rows["post"], rows["size_voxels"]))
    assert got == [(1, 2, 4 * 20 * 8), (5, 2, 4 * 20 * 7)]
    left = np.flatnonzero(rows["pre"] == 1)[0]
    assert rows["x"][left] == 16 and np.isclose(rows["partner_score"][left], 8 / 15)  # x 12..19
    assert len(set(lookup["syn_object"].tolist())) == 1  # both from one cleft object


def test_one_synapse_per_cleft_without_the_split():
    rows, _ = synapse_rows(_table(), 50, VS, partners=True, split=False)
    assert len(rows["id"]) == 1
    assert (int(rows["pre"][0]), int(rows["post"][0]), int(rows["size_voxels"][0])) == (1, 2, 4 * 20 * 15)
    assert np.isclose(rows["partner_score"][0], 8 / 15)  # all post votes agree, 8 of 15 pre votes

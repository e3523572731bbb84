"""The rules that turn cleft probability into synapses, on hand-built arrays whose answer is known:
clefts cut by the volume's faces keep their own minimum size, in one block and in several."""

import numpy as np

from connectome.core.geometry import Box
from connectome.synapses.fragments import fragment_table, label_block
from connectome.synapses.merge import synapse_rows

VS = (8.0, 8.0, 8.0)
SHAPE = (16, 48, 48)


def _volume():
    """Cell 1 (x < 24) touches cell 2 (x >= 24); two clefts in cell 2 facing cell 1: one inside the
    volume (4 x 8 x 6 = 192 voxels), one cut by the volume's lower z face (3 x 8 x 6 = 144)."""
    seg = np.ones(SHAPE, np.uint64)
    seg[:, :, 24:] = 2
    prob = np.zeros(SHAPE, np.uint8)
    prob[8:12, 4:12, 24:30] = 230
    prob[0:3, 30:38, 24:30] = 230
    vec = np.zeros((3, *SHAPE), np.float32)
    vec[2] = -1.0  # every cleft voxel points toward cell 1
    return seg, prob, vec


def _tables(seg, prob, vec, blocks):
    """One table per write box of `blocks` (the cleft_fragments stage's work), concatenated."""
    volume = Box.from_shape(SHAPE)
    parts = []
    for i, w in enumerate(blocks):
        sl = tuple(slice(o, o + s) for o, s in zip(w.offset, w.shape))
        frag = label_block(prob[sl], 0.5, i)
        parts.append(fragment_table(frag, prob[sl], vec[(slice(None), *sl)], seg, volume, w, volume, 80.0, VS))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _found(t, min_voxels, edge_min_voxels):
    rows, _ = synapse_rows(t, min_voxels, VS, partners=True, split=True, edge_min_voxels=edge_min_voxels)
    return sorted((int(z), int(p), int(q), int(n)) for z, p, q, n in
                  zip(rows["z"], rows["pre"], rows["post"], rows["size_voxels"]))


def test_clefts_cut_by_the_volume_face_have_their_own_minimum():
    seg, prob, vec = _volume()
    t = _tables(seg, prob, vec, [Box.from_shape(SHAPE)])
    assert sorted(t["edge_voxels"].tolist()) == [0, 8 * 6]  # the cut cleft's voxels in the plane z = 0
    assert _found(t, 150, None) == [(10, 1, 2, 192)]  # the cut cleft (144 voxels) is under the minimum
    assert _found(t, 150, 100) == [(1, 1, 2, 144), (10, 1, 2, 192)]  # kept with the face minimum
    assert _found(t, 200, 100) == [(1, 1, 2, 144)]  # the face minimum never applies inside the volume


def test_face_minimum_blockwise_equals_one_block():
    seg, prob, vec = _volume()
    blocks = [Box.of((z, y, 0), (8, 24, 48)) for z in (0, 8) for y in (0, 24)]
    t = _tables(seg, prob, vec, blocks)
    one = _tables(seg, prob, vec, [Box.from_shape(SHAPE)])
    assert t["edge_voxels"].sum() == one["edge_voxels"].sum() == 8 * 6  # inner block faces do not count
    for mins in ((150, None), (150, 100), (200, 100)):
        assert _found(t, *mins) == _found(one, *mins)



def _two_densities():
    """Cell 1 (x < 24) touches cell 2; one cleft object in cell 2 (probability 0.8) joins two densities
    (0.95) 20 voxels apart along y: y 4..11 and y 32..39, 4 x 8 x 6 voxels each, the bridge y 12..31."""
    seg = np.ones(SHAPE, np.uint64)
    seg[:, :, 24:] = 2
    prob = np.zeros(SHAPE, np.uint8)
    prob[6:10, 4:40, 24:30] = 204
    prob[6:10, 4:12, 24:30] = 242
    prob[6:10, 32:40, 24:30] = 242
    vec = np.zeros((3, *SHAPE), np.float32)
    vec[2] = -1.0
    return seg, prob, vec


def _core_tables(seg, prob, vec, blocks, core_threshold):
    volume = Box.from_shape(SHAPE)
    parts = []
    for i, w in enumerate(blocks):
        sl = tuple(slice(o, o + s) for o, s in zip(w.offset, w.shape))
        frag = label_block(prob[sl], 0.5, i, core_threshold)
        parts.append(fragment_table(frag, prob[sl], vec[(slice(None), *sl)], seg, volume, w, volume, 80.0, VS,
                                    core_threshold=core_threshold))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _synapses(t, core_min_voxels):
    rows, lookup = synapse_rows(t, 150, VS, partners=True, split=True, core_min_voxels=core_min_voxels)
    return sorted((int(z), int(y), int(x), int(n)) for z, y, x, n in
                  zip(rows["z"], rows["y"], rows["x"], rows["size_voxels"])), lookup


def test_one_cleft_object_over_two_densities_is_two_synapses():
    seg, prob, vec = _two_densities()
    t = _core_tables(seg, prob, vec, [Box.from_shape(SHAPE)], 0.9)
    assert sorted(t["voxels"].tolist()) == [4 * 8 * 6, 4 * 8 * 6, 4 * 20 * 6]  # two cores and the bridge
    one, _ = _synapses(t, None)
    assert one == [(8, 22, 26, 4 * 36 * 6)]  # without the split: one synapse between the densities
    two, lookup = _synapses(t, 100)
    assert two == [(8, 8, 26, 4 * 8 * 6), (8, 36, 26, 4 * 8 * 6)]  # one per density, at its centre
    assert len(set(lookup["objects"].tolist())) == 3  # two cores, and the bridge in no synapse
    assert _synapses(t, 200)[0] == one  # cores under the minimum: no split


def test_a_single_density_stays_whole_and_plain_tables_are_unchanged():
    seg, prob, vec = _two_densities()
    prob[6:10, 32:40, 24:30] = 204  # only the first density remains
    t = _core_tables(seg, prob, vec, [Box.from_shape(SHAPE)], 0.9)
    assert _synapses(t, 100)[0] == [(8, 22, 26, 4 * 36 * 6)]  # one core: the whole object, as before
    plain = _core_tables(seg, prob, vec, [Box.from_shape(SHAPE)], None)
    assert _synapses(plain, 100)[0] == _synapses(plain, None)[0] == [(8, 22, 26, 4 * 36 * 6)]


def test_density_split_blockwise_equals_one_block():
    seg, prob, vec = _two_densities()
    one = _core_tables(seg, prob, vec, [Box.from_shape(SHAPE)], 0.9)
    for blocks in ([Box.of((z, y, 0), (8, 12, 48)) for z in (0, 8) for y in (0, 12, 24, 36)],  # cuts both cores
                   [Box.of((0, y, x), (16, 16, 24)) for y in (0, 16, 32) for x in (0, 24)]):
        t = _core_tables(seg, prob, vec, blocks, 0.9)
        for core_min in (None, 100, 200):
            assert _synapses(t, core_min)[0] == _synapses(one, core_min)[0]


def test_satellites_join_the_larger_synapse_nearby():
    from connectome.synapses.merge import satellites

    loc = np.array([[0, 0, 0], [0, 0, 40], [0, 0, 100], [0, 30, 40]])  # voxels of 8 nm
    size = np.array([5000, 400, 3000, 60])
    keep, into = satellites(loc, size, VS, 400.0, 0.2)
    # 1 is 320 nm from 0 and under a fifth of it; 3 is 240 nm from 1 (its owner: 0) and 400 nm from 0;
    # 2 lies 800 nm from 0 and 480 nm from 1: kept
    assert keep.tolist() == [True, False, True, False]
    assert into.tolist() == [0, 0, 2, 0]
    keep, _ = satellites(loc, size, VS, 300.0, 0.2)
    assert keep.tolist() == [True, True, True, False]  # 3 is within 300 nm of 1 only (400 > 5 x 60)
    keep, into = satellites(loc, size, VS, 400.0, 0.05)
    assert keep.tolist() == [True, True, True, False] and into[3] == 0  # only 3 (400 nm from 0) is that small


def test_a_small_cleft_beside_a_large_one_is_no_synapse_of_its_own():
    seg, prob, vec = _volume()
    prob[0:3, 30:38, 24:30] = 0
    prob[8:12, 14:16, 24:26] = 230  # 16 voxels, 2 voxels (16 nm) beyond the 192-voxel cleft: 40 nm apart
    t = _tables(seg, prob, vec, [Box.from_shape(SHAPE)])
    assert len(_found(t, 10, None)) == 2
    rows, lookup = synapse_rows(t, 10, VS, partners=True, split=True, satellite_nm=200.0, satellite_ratio=0.2)
    assert rows["size_voxels"].tolist() == [192] and len(lookup["syn_object"]) == 1


def test_density_split_through_the_stages_blockwise(tmp_path, client):
    """cleft_fragments (with a core threshold) and synapses (with a core minimum) on stored volumes, in
    blocks that cut both densities and in one block: two synapses, the same tables and labels."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume, open_volume
    from connectome.synapses.model import vectors_as_uint8
    from connectome.synapses.table import read_synapses

    seg, prob, vec = _two_densities()
    raw = np.full(SHAPE, 128, np.uint8)
    for name, data, channels in (("raw", raw, None), ("segmentation", seg, None), ("cleft_probability", prob, None),
                                 ("partner_vectors", vectors_as_uint8(vec), 3)):
        v = create_volume(str(tmp_path / name), SHAPE, data.dtype, (8, 12, 12), VS, channels=channels)
        v.write(v.box, data)
    inputs = {"cleft_probability": str(tmp_path / "cleft_probability"),
              "partner_vectors": str(tmp_path / "partner_vectors"), "segmentation": str(tmp_path / "segmentation")}

    def run(out, block):
        stages = [StageConfig(stage="cleft_fragments", params={"threshold": 0.5, "core_threshold": 0.9},
                              inputs=inputs),
                  StageConfig(stage="synapses", params={"min_voxels": 150, "core_min_voxels": 100,
                                                        "partner_classifier": None},
                              inputs={k: inputs[k] for k in ("partner_vectors", "segmentation")})]
        config = RunConfig(input=str(tmp_path / "raw"), output=str(out), stages=stages, cluster=ClusterConfig(),
                           blocks=BlocksConfig(shape=block, chunk_shape=(8, 12, 12)))
        execute(plan_run(config), client, progress=False)
        labels = open_volume(str(out / "synapse_labels"))
        return read_synapses(str(out / "synapses.csv")), labels.read(labels.box)

    t, lab = run(tmp_path / "blocks", (8, 12, 24))
    assert sorted(zip(t["y"].tolist(), t["size_voxels"].tolist())) == [(8, 192), (36, 192)]
    assert sorted(np.unique(lab[6:10, 4:12, 24:30]).tolist() + np.unique(lab[6:10, 32:40, 24:30]).tolist()) == [1, 2]
    assert lab[6:10, 12:32, 24:30].max() == 0  # the bridge between the densities: in no synapse
    t1, lab1 = run(tmp_path / "one", SHAPE)
    for k in ("z", "y", "x", "pre", "post", "size_voxels", "id"):
        np.testing.assert_array_equal(t[k], t1[k])
    np.testing.assert_array_equal(lab, lab1)


def test_a_satellites_voxels_take_the_larger_synapses_id():
    """With the partner classifier (one synapse per cleft object and post), a satellite's voxels are
    labelled with the synapse it joins."""
    from connectome.synapses.interface import FEATURES, PartnerClassifier
    from connectome.synapses.merge import label_voxels

    seg, prob, vec = _volume()
    prob[0:3, 30:38, 24:30] = 0
    prob[8:12, 14:16, 24:26] = 230  # 16 voxels beside the 192-voxel cleft
    raw = np.full(SHAPE, 128, np.uint8)
    box = Box.from_shape(SHAPE)
    frag = label_block(prob, 0.5, 0)
    t = fragment_table(frag, prob, vec, seg, box, box, box, 80.0, VS, raw)
    n = len(FEATURES)
    clf = PartnerClassifier("votes", np.zeros(n), np.ones(n), np.eye(n)[FEATURES.index("vote_share")], {})
    rows, lookup = synapse_rows(t, 10, VS, partners=True, split=True, classifier=clf, satellite_nm=200.0)
    assert rows["size_voxels"].tolist() == [192] and (int(rows["pre"][0]), int(rows["post"][0])) == (1, 2)
    nz = np.nonzero(frag)
    post = seg[nz]
    ids = label_voxels(lookup, frag[nz], post, np.ones_like(post), partners=True)
    assert set(ids.tolist()) == {1}  # both clefts' voxels: the one synapse

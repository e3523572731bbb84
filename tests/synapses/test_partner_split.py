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


def _classified(raw_dark: int):
    """The cleft of `_table` with a raw image (bouton `raw_dark` darker: its vesicle cloud) and the shells
    the partner classifier reads."""
    shape = (4, 40, 40)
    seg = np.full(shape, 2, np.uint64)
    seg[:, :, :10] = 1
    seg[:, :, 30:] = 5
    raw = np.full(shape, 170, np.uint8)
    raw[seg == raw_dark] = 60
    prob = np.zeros(shape, np.uint8)
    prob[:, 10:30, 12:27] = 220
    vec = np.zeros((3, *shape), np.float32)
    vec[2, :, :, 12:20] = -1.0
    vec[2, :, :, 20:27] = 1.0
    box = Box.from_shape(shape)
    frag = label_block(prob, 0.5, 0)
    return fragment_table(frag, prob, vec, seg, box, box, box, 80.0, VS, raw), frag, vec, seg, box


def test_a_second_bouton_with_enough_votes_splits_off_the_classifiers_synapse():
    from connectome.synapses.fragments import partners_at
    from connectome.synapses.interface import load_classifier
    from connectome.synapses.merge import label_voxels

    clf = load_classifier("partners-synthetic")
    for dark, other, own, rest in ((1, 5, 4 * 20 * 8, 4 * 20 * 7), (5, 1, 4 * 20 * 7, 4 * 20 * 8)):
        t, frag, vec, seg, box = _classified(dark)
        rows, _ = synapse_rows(t, 50, VS, partners=True, split=True, classifier=clf)
        assert [(int(p), int(q)) for p, q in zip(rows["pre"], rows["post"])] == [(dark, 2)]  # the vesicle side
        assert int(rows["size_voxels"][0]) == own + rest  # the classifier's synapse holds the whole cleft
        # the other bouton's votes (`rest` voxels) pass the vote split: a synapse of its own at its voters
        rows, lookup = synapse_rows(t, 50, VS, partners=True, split=True, classifier=clf, vote_split_voxels=rest)
        got = {int(p): (int(n), int(x)) for p, n, x in zip(rows["pre"], rows["size_voxels"], rows["x"])}
        assert set(got) == {dark, other} and set(rows["post"].tolist()) == {2}
        left, right = (own, rest) if dark == 1 else (rest, own)
        assert got[1] == (left, 16) and got[5] == (right, 23)  # voters' centroids: x 12..19 and 20..26
        assert lookup["syn_vote_split"].tolist() == [p == other for p in rows["pre"].tolist()]
        assert np.isclose(rows["partner_score"][rows["pre"] == other][0], rest / (own + rest))
        # each voxel takes the synapse of the bouton it votes for
        nz = np.nonzero(frag)
        pos = np.stack(nz, 1).astype(np.int64)
        post, pre = partners_at(pos, nz, vec, seg, box, 80.0, VS)
        ids = label_voxels(lookup, frag[nz].astype(np.uint64), post, pre, True)
        for bouton in (1, 5):
            sid = int(rows["id"][rows["pre"] == bouton][0])
            assert set(ids[pre == bouton].tolist()) == {sid}
        # fewer votes than the split asks for: one synapse, as without it
        rows, _ = synapse_rows(t, 50, VS, partners=True, split=True, classifier=clf, vote_split_voxels=rest + 1)
        assert [int(p) for p in rows["pre"]] == [dark] and int(rows["size_voxels"][0]) == own + rest


def test_the_vote_split_needs_the_classifier_and_is_named_only_when_set(tmp_path):
    from connectome.synapses.merge import SynapseStep

    def params(**kw):
        return SynapseStep(str(tmp_path), str(tmp_path), 50, VS, True, **kw).params

    assert "vote_split_voxels" not in params(split=True, classifier="partners-synthetic")  # earlier runs resume
    assert params(split=True, classifier="partners-synthetic", vote_split_voxels=2500)["vote_split_voxels"] == 2500
    assert "vote_split_voxels" not in params(split=True, classifier=None, vote_split_voxels=2500)  # votes split anyway
    t, *_ = _classified(1)
    plain, _ = synapse_rows(t, 50, VS, partners=True, split=True)
    with_split, _ = synapse_rows(t, 50, VS, partners=True, split=True, vote_split_voxels=100)
    for k in ("pre", "post", "size_voxels", "x"):
        np.testing.assert_array_equal(plain[k], with_split[k])


def test_vote_split_through_the_stages_blockwise_equals_one_block(tmp_path, client):
    """Two boutons (1 with a vesicle cloud, 5 without) on one cleft in cell 2, the cleft cut by block
    faces: two synapses, the same tables and voxel labels in 8 blocks as in one."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume, open_volume
    from connectome.synapses.model import vectors_as_uint8
    from connectome.synapses.table import read_synapses

    shape = (16, 64, 64)
    rng = np.random.default_rng(0)
    seg = np.full(shape, 2, np.uint64)
    seg[:, :, :24], seg[:, :, 40:] = 1, 5
    raw = rng.normal(160, 8, shape)
    prob = np.zeros(shape, np.uint8)
    prob[4:12, 16:48, 25:40] = 230
    raw[prob > 0] = 70
    cloud = np.zeros(shape, bool)
    cloud[2:14, 12:52, 10:24] = True
    raw[cloud & (rng.random(shape) < 0.35)] = 85
    vec = np.zeros((3, *shape), np.float32)
    vec[2, 4:12, 16:48, 25:32] = -1.0  # 7 columns vote for bouton 1
    vec[2, 4:12, 16:48, 32:40] = 1.0  # 8 columns for bouton 5
    for name, data, channels in (("raw", np.clip(raw, 0, 255).astype(np.uint8), None), ("segmentation", seg, None),
                                 ("cleft_probability", prob, None), ("partner_vectors", vectors_as_uint8(vec), 3)):
        v = create_volume(str(tmp_path / name), shape, data.dtype, (8, 32, 32), VS, channels=channels)
        v.write(v.box, data)

    def run(out, block):
        inputs = {"partner_vectors": str(tmp_path / "partner_vectors"), "segmentation": str(tmp_path / "segmentation")}
        stages = [StageConfig(stage="cleft_fragments", params={"threshold": 0.5},
                              inputs={"cleft_probability": str(tmp_path / "cleft_probability"), **inputs}),
                  StageConfig(stage="synapses", params={"min_voxels": 10, "vote_split_voxels": 1000}, inputs=inputs)]
        config = RunConfig(input=str(tmp_path / "raw"), output=str(out), cluster=ClusterConfig(), stages=stages,
                           blocks=BlocksConfig(shape=block, chunk_shape=(8, 32, 32)))
        execute(plan_run(config), client, progress=False)
        lab = open_volume(str(out / "synapse_labels"))
        return read_synapses(str(out / "synapses.csv")), lab.read(lab.box)

    t, labels = run(tmp_path / "blocks", (8, 32, 32))
    t1, labels1 = run(tmp_path / "one", shape)
    assert sorted((int(p), int(q), int(n)) for p, q, n in zip(t["pre"], t["post"], t["size_voxels"])) == [
        (1, 2, 8 * 32 * 7), (5, 2, 8 * 32 * 8)]
    for k in ("z", "y", "x", "pre", "post", "size_voxels"):
        np.testing.assert_array_equal(t[k], t1[k])
    np.testing.assert_array_equal(labels, labels1)
    assert np.unique(labels[4:12, 16:48, 25:32]).tolist() == [int(t["id"][t["pre"] == 1][0])]
    assert np.unique(labels[4:12, 16:48, 32:40]).tolist() == [int(t["id"][t["pre"] == 5][0])]


def test_a_stored_runs_tables_rescored_as_the_synapses_stage_made_them(tmp_path, capsys):
    """training.run_scores (the size rules re-chosen on stored runs) finds what the run's own synapse
    table holds under the model's rule, and nothing under an impossible minimum."""
    import json

    from connectome.cli.main import main
    from connectome.metrics.synapses import synapse_scores
    from connectome.synapses import model as M
    from connectome.synapses.table import read_synapses
    from connectome.synapses.training import load_runs, run_scores
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions
    from connectome.synth.volume import load_ground_truth

    synth = tmp_path / "synth"
    generate((32, 128, 128), (8.0, 8.0, 8.0), seed=502, tissue=TissueOptions(synapses_per_um3=8.0)).save(
        str(synth), chunk_shape=(32, 64, 64))
    out = tmp_path / "run"
    code = main(["synapses", str(synth / "raw"), str(out), "--segmentation", str(synth / "labels"),
                 "--block-shape", "32", "64", "64", "--workers", "1", "--no-progress", "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    info = M.read_info("cleft-synthetic")
    gt = load_ground_truth(str(synth))
    table = read_synapses(str(out / "synapses.csv"))
    true = np.stack([gt.synapses[k] for k in ("z", "y", "x")], 1)
    s = synapse_scores(np.stack([table[k] for k in ("z", "y", "x")], 1), true, 200.0, (8.0, 8.0, 8.0))
    assert len(true) >= 2 and s.true_positives >= 1
    rule = {"min_voxels": info.min_voxels, "edge_min_voxels": info.edge_min_voxels,
            "vote_split_voxels": info.vote_split_voxels}
    runs = load_runs([(str(out), str(synth))])
    assert run_scores(runs, rule, info) == (s.true_positives, s.false_positives, s.false_negatives)
    nothing = {"min_voxels": 10 ** 9, "edge_min_voxels": 10 ** 9, "vote_split_voxels": None}
    assert run_scores(runs, nothing, info) == (0, 0, len(true)), json.dumps(rule)

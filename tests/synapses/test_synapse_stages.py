"""The synapse stages on hand-built volumes: known clefts, partners and an autapse; a cleft cut by
block faces counted once; blockwise == one block; resume; a segmentation of another shape refused."""

import os

import numpy as np
import pytest

from connectome.cluster.client import ClusterConfig
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import check_plan_resumable, execute, plan_run
from connectome.io import create_volume, open_volume
from connectome.synapses.model import vectors_as_uint8
from connectome.synapses.table import read_synapses

SHAPE = (16, 64, 64)
VS = (8.0, 8.0, 8.0)


def _cleft(prob, vec, sl, direction):
    prob[sl] = 230
    for k in range(3):
        vec[(k, *sl)] = direction[k]


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """Four cells and three clefts: 1 -> 2, 3 -> 4 across block faces, and an autapse on 1; plus a
    three-voxel speck below the minimum size."""
    root = tmp_path_factory.mktemp("hand")
    seg = np.zeros(SHAPE, np.uint64)
    seg[:8, :, :32], seg[:8, :, 32:] = 1, 2
    seg[8:, :32, :], seg[8:, 32:, :] = 3, 4
    prob = np.zeros(SHAPE, np.uint8)
    vec = np.zeros((3, *SHAPE), np.float32)
    _cleft(prob, vec, np.s_[2:6, 10:20, 32:34], (0, 0, -1))  # in 2, facing 1
    _cleft(prob, vec, np.s_[9:13, 32:34, 24:40], (0, -1, 0))  # in 4, facing 3; cut by the face x = 32
    _cleft(prob, vec, np.s_[2:5, 40:46, 8:10], (0, 0, 1))  # in 1, pointing into 1: an autapse
    prob[14, 5, 5:8] = 230  # a speck
    raw = np.full(SHAPE, 128, np.uint8)
    for name, data, channels in (("raw", raw, None), ("segmentation", seg, None), ("cleft_probability", prob, None),
                                 ("partner_vectors", vectors_as_uint8(vec), 3)):
        v = create_volume(str(root / name), SHAPE, data.dtype, (8, 32, 32), VS, channels=channels)
        v.write(v.box, data)
    return root


def _config(root, out, block, segmentation=None):
    seg = segmentation or str(root / "segmentation")
    vectors = str(root / "partner_vectors")
    stages = [
        StageConfig(stage="cleft_fragments", params={"threshold": 0.5},
                    inputs={"cleft_probability": str(root / "cleft_probability"), "partner_vectors": vectors,
                            "segmentation": seg}),
        # the direction votes' partners (the hand-built vectors are the truth; the classifier: test_partner_classifier)
        StageConfig(stage="synapses", params={"min_voxels": 10, "partner_classifier": None},
                    inputs={"partner_vectors": vectors, "segmentation": seg}),
    ]
    return RunConfig(input=str(root / "raw"), output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=(8, 32, 32)),
                     cluster=ClusterConfig(), stages=stages)


def _rows(table):
    return sorted((int(p), int(q), bool(a)) for p, q, a in zip(table["pre"], table["post"], table["autapse"]))


def test_known_clefts_partners_and_autapse(hand_built, tmp_path, client):
    out = tmp_path / "blocks"
    plan = plan_run(_config(hand_built, out, (8, 32, 32)))
    assert len(plan.stages[0].grid) == 8
    execute(plan, client, progress=False)
    t = read_synapses(str(out / "synapses.csv"))
    assert _rows(t) == [(1, 1, True), (1, 2, False), (3, 4, False)]  # the cut cleft once, the speck dropped
    cut = np.flatnonzero(t["post"] == 4)[0]
    assert t["size_voxels"][cut] == 4 * 2 * 16  # both halves of the cut cleft in one synapse
    assert (t["z"][cut], t["y"][cut], t["x"][cut]) == (10, 32, 32)  # rounded centroid (10.5, 32.5, 31.5)
    assert np.allclose(t["score"], 230 / 255, atol=1e-3) and np.allclose(t["partner_score"], 1.0)
    labels = open_volume(str(out / "synapse_labels"))
    lab = labels.read(labels.box)
    assert np.unique(lab[9:13, 32:34, 24:40]).tolist() == [int(t["id"][cut])]  # one id on both sides of the face
    assert lab[14, 5, 5:8].max() == 0

    one = tmp_path / "one"
    execute(plan_run(_config(hand_built, one, SHAPE)), client, progress=False)
    t1 = read_synapses(str(one / "synapses.csv"))
    for k in ("z", "y", "x", "pre", "post", "size_voxels", "id"):
        np.testing.assert_array_equal(t[k], t1[k])
    lab1 = open_volume(str(one / "synapse_labels"))
    np.testing.assert_array_equal(lab, lab1.read(lab1.box))


def test_no_cleft_where_the_mask_is_set(hand_built, tmp_path, client):
    """cleft_fragments' optional mask (e.g. align's defects: margins, blank sections): the cleft 1 -> 2 lies in
    the masked region and is gone, the others stay as they were."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[:8, :, 30:36] = 3  # the margin value of align's defects; covers the cleft in 2 facing 1 (x 32-33)
    m = create_volume(str(tmp_path / "mask"), SHAPE, np.uint8, (8, 32, 32), VS)
    m.write(m.box, mask)
    config = _config(hand_built, tmp_path / "masked", (8, 32, 32))
    stages = [config.stages[0].model_copy(update={"inputs": {**config.stages[0].inputs, "mask": m.address}}),
              *config.stages[1:]]
    execute(plan_run(config.model_copy(update={"stages": stages})), client, progress=False)
    t = read_synapses(str(tmp_path / "masked" / "synapses.csv"))
    assert _rows(t) == [(1, 1, True), (3, 4, False)]
    labels = open_volume(str(tmp_path / "masked" / "synapse_labels"))
    assert labels.read(labels.box)[mask != 0].max() == 0


def test_resume_stage_by_stage(hand_built, tmp_path, client):
    out = tmp_path / "run"
    config = _config(hand_built, out, (8, 32, 32))
    # a run stopped after the first stage: the next run skips its blocks and does the rest
    first = execute(plan_run(config.model_copy(update={"stages": config.stages[:1]})), client, progress=False)
    assert first[0].ran == 8 and not (out / "synapses.csv").exists()
    plan = plan_run(config)
    check_plan_resumable(plan, overwrite=False)
    reports = execute(plan, client, progress=False)
    # cleft_fragments skipped, the synapse merge (a global step of one task) and the synapses blocks run
    assert [(r.ran, r.skipped) for r in reports] == [(0, 8), (1, 0), (8, 0)]
    table = (out / "synapses.csv").read_text()
    stamp = os.path.getmtime(out / "synapses.csv")
    again = execute(plan_run(config), client, progress=False)
    assert [r.ran for r in again] == [0, 0, 0]
    assert os.path.getmtime(out / "synapses.csv") == stamp and (out / "synapses.csv").read_text() == table
    assert _rows(read_synapses(str(out / "synapses.csv"))) == [(1, 1, True), (1, 2, False), (3, 4, False)]


def test_segmentation_of_another_shape_refused(hand_built, tmp_path):
    other = create_volume(str(tmp_path / "small_seg"), (16, 32, 64), np.uint64, (8, 32, 32), VS)
    with pytest.raises(UserError) as e:
        plan_run(_config(hand_built, tmp_path / "out", (8, 32, 32), segmentation=other.address))
    message = str(e.value)
    assert "\n" not in message and "small_seg" in message and "[16, 32, 64]" in message and "[16, 64, 64]" in message


def test_the_cleft_network_is_recorded_by_name_and_content(hand_built, tmp_path):
    """The clefts stage's fingerprint holds its weights' file name and sha1 (not their folder)."""
    import hashlib

    from connectome.synapses.model import resolve

    config = RunConfig(input=str(hand_built / "raw"), output=str(tmp_path / "out"), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=(8, 32, 32), chunk_shape=(8, 32, 32)),
                       stages=[StageConfig(stage="clefts", params={"allow_voxel_mismatch": True})])
    stage = plan_run(config).stages[0].stage
    weights = resolve(stage.params.model)
    assert stage.fingerprint()["weights"] == {"name": weights.name,
                                              "sha1": hashlib.sha1(weights.read_bytes()).hexdigest()}

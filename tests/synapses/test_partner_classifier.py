"""The interface partner classifier: its per-block sums add up to those of one block; on a hand-built
volume whose clefts touch two cells each, with a vesicle cloud on one side and no direction signal, it
names the vesicle side as presynaptic, blockwise as in one block; the training objective learns a
feature that decides."""

import numpy as np
import pytest
from cleft_blocks import block_sums

from connectome.cluster.client import ClusterConfig
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume
from connectome.synapses.interface import (
    STATS,
    fit_conditional_logit,
    group_softmax,
    load_classifier,
    sample_reach,
)
from connectome.synapses.model import vectors_as_uint8
from connectome.synapses.table import read_synapses

SHAPE = (16, 64, 64)
VS = (8.0, 8.0, 8.0)


def _volume(seed=0):
    """Cells 1 | 5 beside 2 (z < 8) and 3 beside 4 | 6 (z >= 8); cleft A in 2 (and a little in 1 and 5)
    touching 1 and 5, cleft B
    in 4 (cut by the face x = 32) touching 3 and 6; vesicle clouds in 1 and 3 next to the clefts."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(SHAPE, np.uint64)
    seg[:8, :32, :32], seg[:8, 32:, :32], seg[:8, :, 32:] = 1, 5, 2
    seg[8:, :32, :], seg[8:, 32:, :40], seg[8:, 32:, 40:] = 3, 4, 6
    raw = rng.normal(160, 8, SHAPE)
    prob = np.zeros(SHAPE, np.uint8)
    prob[2:6, 24:40, 31:34] = 230  # A, mostly in 2 (one column spills into 1 and 5); half toward 1, half 5
    prob[9:13, 32:34, 24:40] = 230  # B, in 4, touching 6 at its end; facing 3
    raw[prob > 0] = 70  # the dense cleft
    dots = rng.random(SHAPE) < 0.35
    cloud_a = np.zeros(SHAPE, bool)
    cloud_a[1:7, 18:32, 18:32] = True  # in 1 only
    cloud_b = np.zeros(SHAPE, bool)
    cloud_b[8:15, 18:32, 24:44] = True  # in 3 only
    raw[(cloud_a | cloud_b) & dots] = 85
    return seg, np.clip(raw, 0, 255).astype(np.uint8), prob


def _block_sums(seg, raw, prob, block):
    """Interface sums per (post, candidate), summed over every block's table."""
    return block_sums(seg, raw, prob, block, VS, sample_reach(VS), lambda t, *_: t["iface_stats"])


def test_interface_sums_add_up_across_blocks():
    seg, raw, prob = _volume()
    one = _block_sums(seg, raw, prob, SHAPE)
    many = _block_sums(seg, raw, prob, (8, 32, 32))
    assert set(one) == set(many) and {(2, 1), (2, 5), (4, 3), (4, 6), (1, 2)} <= set(one)
    for key in one:
        np.testing.assert_allclose(many[key], one[key])
    n = one[(2, 1)].reshape(len(STATS), -1)[0]
    assert n.sum() > 0


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("iface")
    seg, raw, prob = _volume()
    vec = np.zeros((3, *SHAPE), np.float32)  # no direction signal: every vote stays in the cleft's own cell
    for name, data, channels in (("raw", raw, None), ("segmentation", seg, None), ("cleft_probability", prob, None),
                                 ("partner_vectors", vectors_as_uint8(vec), 3)):
        v = create_volume(str(root / name), SHAPE, data.dtype, (8, 32, 32), VS, channels=channels)
        v.write(v.box, data)
    return root


def _config(root, out, block, network="auto"):
    seg, vectors = str(root / "segmentation"), str(root / "partner_vectors")
    stages = [
        StageConfig(stage="cleft_fragments", params={"threshold": 0.5, "partner_network": network},
                    inputs={"cleft_probability": str(root / "cleft_probability"), "partner_vectors": vectors,
                            "segmentation": seg}),
        StageConfig(stage="synapses", params={"min_voxels": 10, **({"partner_classifier": "partners-synthetic-net"}
                                                                   if network else {})},
                    inputs={"partner_vectors": vectors, "segmentation": seg}),
    ]
    return RunConfig(input=str(root / "raw"), output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=(8, 32, 32)),
                     cluster=ClusterConfig(), stages=stages)


def test_hand_built_partners_by_the_shipped_classifier(hand_built, tmp_path, client):
    """With the partner network (the default; it leaves clefts cut by block faces, as both are here, to the
    linear score) and without it, the same partners; without it, blockwise equals one block exactly."""
    expected = [(1, 2, False), (3, 4, False)]  # the vesicle side, not the other contact, not an autapse
    for network in ("auto", None):
        out = tmp_path / f"blocks-{network}"
        execute(plan_run(_config(hand_built, out, (8, 32, 32), network)), client, progress=False)
        t = read_synapses(str(out / "synapses.csv"))
        got = sorted((int(p), int(q), bool(a)) for p, q, a in zip(t["pre"], t["post"], t["autapse"]))
        assert got == expected, network  # A's spill into 1 and 5 is part of A
        assert np.all(t["partner_score"] > 0.5)
    one = tmp_path / "one"
    execute(plan_run(_config(hand_built, one, SHAPE, None)), client, progress=False)
    t1 = read_synapses(str(one / "synapses.csv"))
    for k in ("z", "y", "x", "pre", "post", "size_voxels"):
        np.testing.assert_array_equal(t[k], t1[k])
    np.testing.assert_allclose(t["partner_score"], t1["partner_score"], rtol=1e-5)
    lab, lab1 = open_volume(str(out / "synapse_labels")), open_volume(str(one / "synapse_labels"))
    np.testing.assert_array_equal(lab.read(lab.box), lab1.read(lab1.box))
    labels = lab.read(lab.box)
    assert np.unique(labels[9:13, 32:34, 24:40]).tolist() == [int(t["id"][t["post"] == 4][0])]  # B, cut by a face
    assert np.unique(labels[2:6, 24:40, 31:34]).tolist() == [int(t["id"][t["post"] == 2][0])]  # A with its spill


def test_conditional_logit_learns_the_deciding_feature():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(200), 4)
    x = rng.normal(size=(800, 2))
    positive = np.zeros(800, bool)
    positive[np.arange(200) * 4 + rng.integers(0, 4, 200)] = True
    x[positive, 1] += 2.0  # the second feature marks the partner, the first is noise
    mean, std, w = fit_conditional_logit(x, groups, positive)
    p = group_softmax(groups, ((x - mean) / std) @ w, 200)
    best = np.array([np.argmax(p[g * 4:(g + 1) * 4]) for g in range(200)])
    assert w[1] > 3 * abs(w[0])
    assert (positive.reshape(200, 4)[np.arange(200), best]).mean() > 0.8


def test_unknown_classifier_refused_in_one_line():
    with pytest.raises(UserError) as e:
        load_classifier("no-such-classifier")
    assert "\n" not in str(e.value) and "no-such-classifier" in str(e.value) and "partners-synthetic" in str(e.value)

"""The partner network: patches mirror the image and zero the masks outside the data, as in training;
its sums per (post, candidate) add up across blocks for clefts that no block face cuts, and the
pieces of a cut cleft are not scored; the opt-in classifier
adds its logit where the features carry it; on held-out synthetic volumes the shipped network ranks
the true presynaptic cell first in most groups; `cleft_fragments` uses it only at its voxel size."""

import numpy as np
import pytest
from cleft_blocks import block_sums

from connectome.core.errors import UserError
from connectome.synapses import interface as I
from connectome.synapses import model as M
from connectome.synapses import partner_network as PN
from connectome.synapses.interface import FEATURES, PartnerClassifier, load_classifier, sample_reach
from connectome.synapses.partner_network_training import groups, ranked_right
from connectome.synapses.stages import CleftFragmentsParams, CleftFragmentsStage

VS = (8.0, 8.0, 8.0)


def test_patches_mirror_the_image_and_zero_the_masks_outside():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (20, 40, 40), dtype=np.uint8)
    seg = rng.integers(1, 4, (20, 40, 40)).astype(np.uint64)
    prob = rng.integers(0, 255, (20, 40, 40), dtype=np.uint8)
    offset = (100, 200, 300)
    centres = np.array([[110, 220, 320], [102, 220, 320]])
    x = PN.patches(raw, seg, prob, offset, centres, np.array([1, 1]), np.array([2, 3]), 8)
    assert x.shape == (2, 4, 16, 16, 16) and x.dtype == np.uint8
    inside = (slice(2, 18), slice(12, 28), slice(12, 28))
    np.testing.assert_array_equal(x[0, 0], raw[inside])
    np.testing.assert_array_equal(x[0, 1], (seg[inside] == 2) * 255)
    np.testing.assert_array_equal(x[0, 2], (seg[inside] == 1) * 255)
    np.testing.assert_array_equal(x[0, 3], prob[inside])
    # centred 2 voxels from the lower z face: 6 rows outside, the image mirrored there, masks 0
    np.testing.assert_array_equal(x[1, 0, :6], raw[6:0:-1, 12:28, 12:28])
    assert not x[1, 1:, :6].any()
    np.testing.assert_array_equal(x[1, 3, 6:], prob[:10, 12:28, 12:28])


def _volume():
    """Two cells side by side per half (1 | 2 for z < 16, 3 | 4 above); a cleft in 2 and one in 4 along
    the contact, dark dots in 1 and in 3."""
    rng = np.random.default_rng(2)
    shape = (32, 64, 64)
    seg = np.zeros(shape, np.uint64)
    seg[:16, :, :32], seg[:16, :, 32:], seg[16:, :, :32], seg[16:, :, 32:] = 1, 2, 3, 4
    raw = rng.normal(160, 8, shape)
    prob = np.zeros(shape, np.uint8)
    prob[4:12, 20:44, 33:36] = 230
    prob[20:28, 20:44, 33:36] = 230
    raw[prob > 0] = 70
    dots = rng.random(shape) < 0.3
    raw[:, 14:50, 16:32][dots[:, 14:50, 16:32]] = 80
    return seg, np.clip(raw, 0, 255).astype(np.uint8), prob


def _network_sums(seg, raw, prob, block):
    """Network columns per (post, candidate), summed over the blocks of `block` shape."""
    half = PN.read_info(PN.DEFAULT_NETWORK).half
    reach = tuple(max(r, half) for r in sample_reach(VS))
    return block_sums(seg, raw, prob, block, VS, reach,
                      lambda t, raw, seg, prob, read: PN.network_sums(t, raw, seg, prob, read, PN.DEFAULT_NETWORK))


def test_network_sums_add_up_across_blocks():
    seg, raw, prob = _volume()
    one = _network_sums(seg, raw, prob, seg.shape)
    many = _network_sums(seg, raw, prob, (16, 64, 32))  # faces between the cells' halves; none cuts a cleft
    assert set(one) == set(many) and {(2, 1), (4, 3)} <= set(one)
    for key in one:
        np.testing.assert_allclose(many[key], one[key], rtol=1e-5)
    assert one[(2, 1)][1] == 8 * 24 * 3  # the whole cleft scored: its voxels
    assert np.ptp([v[0] / v[1] for (post, _), v in one.items() if post == 2]) > 0  # candidates told apart
    cut = _network_sums(seg, raw, prob, (16, 32, 32))  # y = 32 cuts both clefts: their pieces are not scored
    assert set(cut) == set(one) and all(v[1] == 0 for v in cut.values())


def test_classifier_adds_the_network_logit_where_the_features_carry_it():
    n = len(FEATURES)
    clf = PartnerClassifier("t", np.zeros(n), np.ones(n), np.r_[1.0, np.zeros(n - 1)], {}, "net", 2.0)
    f = np.zeros((2, n + 1))
    f[0, 0], f[1, 0], f[1, n] = 1.0, 0.0, 1.0
    np.testing.assert_allclose(clf.scores(f), [1.0, 2.0])
    np.testing.assert_allclose(clf.scores(f[:, :n]), [1.0, 0.0])  # no network column: the linear part
    shipped = load_classifier("partners-synthetic-net")
    assert shipped.network == PN.DEFAULT_NETWORK and shipped.network_weight > 0
    assert load_classifier("partners-synthetic").network is None  # the linear part alone
    assert I.DEFAULT_CLASSIFIER == "partners-synthetic-net" and I.LINEAR_CLASSIFIER == "partners-synthetic"
    np.testing.assert_allclose(shipped.weights, load_classifier("partners-synthetic").weights)


@pytest.mark.timeout(300)
def test_shipped_network_ranks_true_partners_on_held_out_volumes():
    """Seeds never used in training or for choosing the checkpoint (train 100-184, validation 200-230)."""
    val = groups(range(240, 244), M.load("cleft-synthetic", "cpu"))
    assert len(val) >= 12
    _, net = PN.load(PN.DEFAULT_NETWORK)
    network = ranked_right(net, val)
    chance = np.mean([1 / len(g["positive"]) for g in val])
    assert network >= 0.8 and network > 3 * chance, (network, chance)


def test_cleft_fragments_uses_the_network_only_at_its_voxel_size():
    stage = CleftFragmentsStage(CleftFragmentsParams(), {}, {})
    stage._voxel_size = VS  # as check_inputs sets it from the segmentation
    assert stage.network == PN.DEFAULT_NETWORK  # on by default (auto)
    stage.params = CleftFragmentsParams(partner_network=None)
    assert stage.network is None
    stage.params = CleftFragmentsParams()
    stage._voxel_size = (40.0, 4.0, 4.0)
    assert stage.network is None  # auto: not at another voxel size
    stage.params = CleftFragmentsParams(partner_network=PN.DEFAULT_NETWORK)
    with pytest.raises(UserError, match="trained at voxel size"):
        _ = stage.network
    stage._voxel_size = VS
    assert stage.network == PN.DEFAULT_NETWORK


@pytest.mark.parametrize("voxel_size,network", [(VS, None), ((40.0, 4.0, 4.0), "auto")])
def test_a_network_classifier_without_network_scores_is_refused(tmp_path, voxel_size, network):
    """No network scores: `partner_network` null, or auto at another voxel size (serial-section data)."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import plan_run
    from connectome.io import create_volume

    for name, channels in (("raw", None), ("segmentation", None), ("cleft_probability", None),
                           ("partner_vectors", 3)):
        create_volume(str(tmp_path / name), (16, 64, 64), "uint64" if name == "segmentation" else "uint8",
                      (16, 64, 64), voxel_size, channels=channels)
    seg, vectors = str(tmp_path / "segmentation"), str(tmp_path / "partner_vectors")
    stages = [StageConfig(stage="cleft_fragments", params={"partner_network": network},
                          inputs={"cleft_probability": str(tmp_path / "cleft_probability"), "partner_vectors": vectors,
                                  "segmentation": seg}),
              StageConfig(stage="synapses", params={"partner_classifier": "partners-synthetic-net"},
                          inputs={"partner_vectors": vectors, "segmentation": seg})]
    config = RunConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "out"),
                       blocks=BlocksConfig(shape=(16, 64, 64), chunk_shape=(16, 64, 64)), cluster=ClusterConfig(),
                       stages=stages)
    with pytest.raises(UserError, match="partner_network to auto"):
        plan_run(config)
    stages[1] = StageConfig(stage="synapses", inputs=stages[1].inputs)  # the default classifier: its linear part
    plan = plan_run(config.model_copy(update={"stages": stages}))
    synapses = [p.stage for p in plan.stages if p.stage.name == "synapses"][0]
    assert synapses.params.partner_classifier == I.LINEAR_CLASSIFIER
    stages[0] = StageConfig(stage="cleft_fragments", inputs=stages[0].inputs)  # the default: auto
    plan = plan_run(config.model_copy(update={"stages": stages}))
    synapses = [p.stage for p in plan.stages if p.stage.name == "synapses"][0]
    expected = I.DEFAULT_CLASSIFIER if voxel_size == VS else I.LINEAR_CLASSIFIER
    assert synapses.params.partner_classifier == expected

"""The inference canvas on hand-built volumes with a hand-set network: fill, stop, move, determinism."""

import numpy as np
import pytest
from scipy import ndimage

from connectome.ffn.canvas import Canvas, CanvasSettings
from connectome.ffn.seeds import distance_seeds, grid_seeds, seed_order
from connectome.metrics.voi import voi

from ffn_handset import handset_model


def _settings(**kw):
    return CanvasSettings(move_threshold=0.9, segment_threshold=0.6, min_size=5, **kw)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_one_object_is_filled_and_stops_at_its_boundary(precision):
    net, info = handset_model()
    raw = np.zeros((30, 40, 40), np.uint8)
    obj = np.zeros(raw.shape, bool)
    obj[5:25, 4:36, 10:30] = True  # larger than the FOV (9): filling must move the FOV
    obj[5:25, 18:22, 10:20] = False  # a notch the object must flow around
    raw[obj] = 255
    canvas = Canvas(net, info, raw, _settings(precision=precision))
    seg = canvas.segment(np.array([[15, 10, 20]]))
    np.testing.assert_array_equal(seg != 0, obj)
    assert np.unique(seg[obj]).tolist() == [1]
    assert canvas.stats["steps"] > 10  # it moved


def test_two_touching_objects_stay_apart():
    net, info = handset_model()
    raw = np.full((20, 30, 30), 255, np.uint8)
    raw[:, 15, :] = 0  # one-voxel membrane between two objects
    gt = np.where(np.arange(30)[None, :, None] < 15, 1, 2) * np.ones((20, 1, 30), np.int64)
    gt[:, 15, :] = 0
    seg = Canvas(net, info, raw, _settings()).segment()
    inside = gt != 0
    assert np.all(seg[~inside] == 0)
    assert len(np.unique(seg[inside])) == 2
    split, merge = voi(seg[inside], gt[inside])
    assert split == 0 and merge == 0


def test_batched_equals_one_object_at_a_time_on_separate_objects():
    net, info = handset_model()
    raw = np.zeros((24, 40, 40), np.uint8)
    for k in range(4):
        raw[4:20, 4 + 9 * k:11 + 9 * k, 5:35] = 255
    one = Canvas(net, info, raw, _settings(batch=1)).segment()
    many = Canvas(net, info, raw, _settings(batch=8)).segment()
    assert len(np.unique(one)) == 5
    assert voi(many, one) == (0.0, 0.0)


def test_seeds_of_one_object_are_not_filled_twice_in_a_batch():
    """Many seeds in one object: batched filling drops the later copies (they touch the first) instead of
    filling the object once per seed, and gives the one-at-a-time result."""
    net, info = handset_model()
    raw = np.zeros((14, 24, 24), np.uint8)
    raw[2:12, 2:22, 2:22] = 255
    seeds = np.argwhere(raw[::3, ::3, ::3] == 255) * 3
    one = Canvas(net, info, raw, _settings(batch=1))
    seg_one = one.segment(seeds)
    many = Canvas(net, info, raw, _settings(batch=8))
    seg_many = many.segment(seeds)
    assert many.stats["objects"] == one.stats["objects"] == 1
    np.testing.assert_array_equal(seg_many, seg_one)
    assert many.stats["restarts"] > 0
    assert many.stats["fovs"] <= 2 * one.stats["fovs"]  # not once per seed (up to 8 times without the rule)


@pytest.mark.parametrize("batch, precision", [(4, "float32"), (1, "float32"), (1, "bfloat16")])
def test_same_input_same_output_bit_for_bit(batch, precision):
    from connectome.ffn.registry import load_model
    from connectome.synth import generate

    net, info = load_model("ffn-synthetic")
    raw = generate((20, 32, 32), (8.0, 8.0, 8.0), seed=3).raw
    a = Canvas(net, info, raw, _settings(batch=batch, precision=precision)).segment()
    b = Canvas(net, info, raw, _settings(batch=batch, precision=precision)).segment()
    assert np.count_nonzero(a) > 1000  # something was filled (this small volume mostly as one object)
    np.testing.assert_array_equal(a, b)


def test_seeds_prefer_object_centres_then_cover_the_grid():
    raw = np.zeros((20, 40, 40), np.uint8)
    raw[2:18, 5:35, 5:35] = 200
    image = (raw / 255.0 - 0.5) / 0.25  # normalised, as the canvas gives it
    seeds = distance_seeds(image, (8, 8, 8), (4, 4, 4))
    assert len(seeds) >= 1
    assert np.all(raw[tuple(seeds.T)] == 200)
    depth = ndimage.distance_transform_edt(raw == 200)
    assert depth[tuple(seeds[0])] >= depth.max() - 1.5  # the farthest from boundaries comes first (a plateau here)
    assert depth[tuple(seeds[-1])] <= depth[tuple(seeds[0])]
    grid = grid_seeds(raw.shape, (5, 5, 5))
    assert len(grid) == 4 * 8 * 8
    both = seed_order(image, (8, 8, 8), (5, 5, 5))
    assert len(both) == len(np.unique(np.ravel_multi_index(both.T, raw.shape)))


def test_a_blocks_seeds_are_the_whole_volumes_seeds_there():
    """Seeds are local and anchored globally: away from a block's faces it gets the seeds (and order) of one block."""
    from connectome.synth import generate

    image = (generate((16, 48, 48), (8.0, 8.0, 8.0), seed=3).raw / 255.0 - 0.55) / 0.15
    whole = seed_order(image, (8, 8, 8), (5, 5, 5), cap=8.0)
    lo, hi = np.array([0, 13, 7]), np.array([16, 48, 41])  # a block's read box (its origin off the grid)
    part = seed_order(image[0:16, 13:48, 7:41], (8, 8, 8), (5, 5, 5), origin=tuple(lo), cap=8.0) + lo
    inner_lo, inner_hi = lo + [0, 12, 12], hi - [0, 0, 12]  # beyond smoothing + depth cap from the cut faces

    def inner(s):
        return s[np.all((s >= inner_lo) & (s < inner_hi), axis=1)]

    assert len(inner(whole)) > 20
    np.testing.assert_array_equal(inner(part), inner(whole))


def test_ffn_canvas_neither_fills_nor_moves_through_masked_voxels():
    net, info = handset_model()
    raw = np.zeros((30, 40, 40), np.uint8)
    raw[5:25, 4:36, 10:30] = 255  # one bright object, larger than the FOV
    mask = np.zeros(raw.shape, bool)
    mask[5:25, 20, 10:30] = True  # a masked wall through the middle of it
    settings = _settings()
    whole = Canvas(net, info, raw, settings).segment(np.array([[15, 10, 20]]))
    assert np.all(whole[5:25, 4:36, 10:30] == 1)  # unmasked, one seed fills it all
    cut = Canvas(net, info, raw, settings, mask=mask).segment(np.array([[15, 10, 20], [15, 20, 15], [15, 30, 20]]))
    assert np.all(cut[mask] == 0)  # the seed in the wall did not start
    assert np.all(cut[5:25, 4:20, 10:30] == 1) and np.all(cut[5:25, 21:36, 10:30] == 2)


def test_an_unresolved_precision_is_refused():
    net, info = handset_model()
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'.*got 'auto'"):
        Canvas(net, info, np.zeros((9, 9, 9), np.uint8), _settings(precision="auto"))


class _Weakening:
    """The hand-set network, except that a FOV holding a grey voxel gets at most probability 0.8 everywhere:
    between the segment (0.6) and move (0.9) thresholds, so a seed inside such a FOV gets weak."""

    def __init__(self, net, grey: float):
        self.net, self.config, self.grey = net, net.config, grey

    def forward_stacked(self, x, dtype=None):
        out = self.net.forward_stacked(x, dtype)
        grey = ((x[:, 0] - self.grey).abs() < 1e-3).flatten(1).any(1)
        out[grey] = out[grey].clamp(max=float(np.log(0.8 / 0.2)))
        return out


@pytest.mark.parametrize("weak_seed", ["continue", "stop", "reject"])
def test_an_object_whose_seed_gets_weak_stops_and_is_kept_or_rejected(weak_seed):
    """As the reference FFN's 'seed got too weak': once the seed's probability falls below the move threshold the
    object stops moving; `stop` keeps what it filled (above the segment threshold), `reject` discards it,
    `continue` (the behaviour before the rule) fills on."""
    net, info = handset_model()
    raw = np.zeros((30, 40, 40), np.uint8)
    bar = np.zeros(raw.shape, bool)
    bar[5:25, 4:36, 10:30] = True
    raw[bar] = 255
    raw[15, 16, 20] = 128  # 6 voxels from the seed: out of its first FOV (radius 4), in the FOV one move (2) on
    weak = _Weakening(net, float(info.normalise(np.array([128], np.uint8))[0]))
    canvas = Canvas(weak, info, raw, _settings(weak_seed=weak_seed))
    seg = canvas.segment(np.array([[15, 10, 20]]))
    if weak_seed == "continue":
        assert canvas.stats["objects"] == 1 and (seg[bar] == 1).mean() > 0.95
    elif weak_seed == "stop":
        assert canvas.stats["objects"] == 1 and seg[15, 10, 20] == 1
        assert 0 < (seg == 1).sum() < bar.sum() / 4  # what was filled before the seed weakened
    else:
        assert canvas.stats["objects"] == 0 and canvas.stats["rejected"] == 1 and not seg.any()
    if weak_seed != "continue":
        assert canvas.stats["steps"] < 30


@pytest.mark.parametrize("margin", [0, 1, 2, 3])
def test_a_seed_within_the_margin_of_an_accepted_object_does_not_start(margin):
    """Two objects apart by a one-voxel membrane; the second seed is 2 voxels from the first object."""
    net, info = handset_model()
    raw = np.full((20, 30, 30), 255, np.uint8)
    raw[:, 15, :] = 0
    seeds = np.array([[10, 7, 15], [10, 16, 15]])  # the first fills y 0-14 first
    canvas = Canvas(net, info, raw, _settings(seed_margin=margin))
    seg = canvas.segment(seeds)
    assert seg[10, 7, 15] == 1
    if margin < 2:
        assert canvas.stats["objects"] == 2 and np.all(seg[:, 16:, :] == 2)
    else:
        assert canvas.stats["objects"] == 1 and not seg[:, 16:, :].any()


def test_a_spent_step_budget_starts_no_new_object_and_counts_the_seeds_left():
    """Four separate bars: with a budget the first object spends, the other three seeds do not start."""
    net, info = handset_model()
    raw = np.zeros((24, 40, 40), np.uint8)
    for k in range(4):
        raw[4:20, 4 + 9 * k:11 + 9 * k, 5:35] = 255
    seeds = np.array([[12, 7 + 9 * k, 20] for k in range(4)])
    free = Canvas(net, info, raw, _settings(step_budget=0))
    assert free.budget is None
    everything = free.segment(seeds)
    assert free.stats["objects"] == 4 and free.stats["over_budget"] == 0
    roomy = Canvas(net, info, raw, _settings())  # the default budget: far more than four objects need
    np.testing.assert_array_equal(roomy.segment(seeds), everything)
    assert roomy.stats["over_budget"] == 0 and roomy.stats["steps"] == free.stats["steps"]

    tight = Canvas(net, info, raw, _settings(step_budget=1e-3))
    assert tight.budget == 5  # ceil(0.001 x 12 x 20 x 20 positions, 2 voxels apart)
    seg = tight.segment(seeds)
    assert tight.stats["objects"] == 1 and tight.stats["over_budget"] == 3
    np.testing.assert_array_equal(seg != 0, everything == 1)  # the first object is whole: it finished
    assert tight.budget < tight.stats["steps"] < free.stats["steps"]


def _bright_model():
    """A network that marks every bright voxel of its FOV as the object, joined to the seed or not."""
    import torch

    from connectome.ffn.model import FFN, FFNConfig, FFNInfo

    config = FFNConfig(fov=(9, 9, 9), deltas=(2, 2, 2), depth=3, features=3)
    net = FFN(config)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.stem1.weight[0, 0][1, 1, 1] = 1.0  # the image (the modules pass it on: zero residual updates)
        net.stem2.weight[0, 0][1, 1, 1] = 1.0
        net.head.weight[0, 0] = 40.0  # POM + 20 on bright voxels (image 1), POM - 20 on dark ones (-1)
        net.head.bias[0] = -20.0
    return net.eval(), FFNInfo("bright", config, (8.0, 8.0, 8.0), mean=0.5, std=0.5, min_size=5)


def test_connected_moves_never_walk_into_a_blob_the_object_does_not_reach():
    """Two bright slabs one dark voxel apart: from a seed in the first, a network that marks all that is bright
    puts the second slab on the FOV's face. With `face` moves the object walks through it too (its voxels are not
    joined to the seed, so they are not kept); with `connected` moves (the default) it takes exactly the steps it
    takes when the second slab is not there, and keeps the same voxels."""
    net, info = _bright_model()
    raw = np.zeros((20, 40, 40), np.uint8)
    raw[4:16, 4:18, 4:36] = 255  # the seed's slab
    alone = raw.copy()
    raw[4:16, 19:36, 4:36] = 255  # another, beyond a one-voxel dark wall at y 18
    seed = np.array([[10, 11, 20]])  # FOV centres at y 11, 13, ..., 17: the face at y 19 is in the other slab
    assert _settings().moves == "connected"
    runs = {}
    for name, volume, moves in (("alone", alone, "connected"), ("connected", raw, "connected"),
                                ("face", raw, "face")):
        canvas = Canvas(net, info, volume, _settings(moves=moves, step_budget=0))
        runs[name] = canvas.segment(seed), canvas.stats["steps"]
    first = alone != 0
    for name, (seg, _) in runs.items():
        np.testing.assert_array_equal(seg != 0, first, err_msg=name)
    assert runs["connected"][1] == runs["alone"][1] > 10
    assert runs["face"][1] > 1.5 * runs["connected"][1]  # it moved through the second slab as well


def test_an_unknown_move_rule_is_refused():
    net, info = handset_model()
    with pytest.raises(ValueError, match="CanvasSettings.moves must be 'connected' or 'face', got 'any'"):
        Canvas(net, info, np.zeros((12, 12, 12), np.uint8), _settings(moves="any"))

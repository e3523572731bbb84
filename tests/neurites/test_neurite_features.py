"""Segment features: blocks' sums add up to the whole volume's; shape descriptors of known shapes;
ground-truth classes from compartments."""

import numpy as np
from neurite_blocks import blockwise_sums, interior_block_sums, whole_sums

from connectome.neurites import patch_net
from connectome.neurites.features import (
    FEATURE_NAMES,
    PATCH_SUMS,
    RADIUS_NM,
    describe,
    feature_reach,
)
from connectome.neurites.training import true_classes
from connectome.synth import codes as K

VS = (8.0, 8.0, 8.0)


def _shapes(shape=(32, 64, 64)):
    z, y, x = np.indices(shape)
    seg = np.full(shape, 3, np.uint64)  # the rest: one big segment around them
    tube = (y - 20) ** 2 + (z - 16) ** 2 <= 4 ** 2  # a thin tube along x, radius 4 voxels
    ball = (z - 16) ** 2 + (y - 44) ** 2 + (x - 40) ** 2 <= 12 ** 2  # a ball, radius 12 voxels
    seg[tube] = 1
    seg[ball] = 2
    raw = ((x * 7 + y * 3 + z) % 256).astype(np.uint8)
    return seg, raw


def test_blocks_add_up_to_the_whole_volume():
    seg, raw = _shapes()
    one = whole_sums(seg, raw, VS)
    blocks = blockwise_sums(seg, raw, VS, (16, 32, 32), feature_reach(VS))
    np.testing.assert_array_equal(one["ids"], blocks["ids"])
    for k, v in one.items():
        np.testing.assert_allclose(blocks[k], v, rtol=1e-9, err_msg=k)


def test_patch_sums_of_blocks_add_up_to_the_whole_volume():
    STRIDE = patch_net.STRIDE

    seg, raw = _shapes()
    model = patch_net.load("patches-synthetic")
    one = whole_sums(seg, raw, VS, patch_model=model)
    blocks = blockwise_sums(seg, raw, VS, (16, 32, 32), feature_reach(VS, patches=True), patch_model=model)
    lattice = seg[STRIDE // 2::STRIDE, STRIDE // 2::STRIDE, STRIDE // 2::STRIDE]
    np.testing.assert_array_equal(one["patches"], [np.sum(lattice == i) for i in one["ids"]])
    assert one["patches"].min() > 0  # every shape holds lattice points
    probs = np.stack([one[k] for k in PATCH_SUMS[1:]], 1)
    # probabilities sum to 1 per patch, up to their rounding to 1 / QUANTUM
    np.testing.assert_allclose(probs.sum(1), one["patches"], atol=0, rtol=5 / (2 * patch_net.QUANTUM))
    for k in PATCH_SUMS:  # exact: probabilities are rounded before they are added
        np.testing.assert_array_equal(blocks[k], one[k], err_msg=k)


def test_too_little_context_for_the_patches_is_refused():
    import pytest

    seg, raw = _shapes()
    with pytest.raises(ValueError, match="context"):
        interior_block_sums(seg, raw, VS, (16, 32, 32), (4, 4, 4), patch_model=patch_net.load("patches-synthetic"))


def test_descriptors_of_known_shapes():
    seg, raw = _shapes()
    sums = whole_sums(seg, raw, VS)
    d = describe(sums, VS, np.array([2.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    f = {name: d[:, i] for i, name in enumerate(FEATURE_NAMES)}
    tube, ball = 0, 1
    assert sums["voxels"][tube] == (seg == 1).sum()
    assert f["elong2"][tube] < 0.3 < 0.8 < f["elong2"][ball]  # a tube is long and thin, a ball round
    assert f["mean_radius_nm"][tube] < f["mean_radius_nm"][ball]
    assert 88 <= f["max_radius_nm"][ball] <= 13 * 8.0 < RADIUS_NM  # about its radius, 12 voxels (under the cap)
    assert 20 < f["max_radius_nm"][tube] <= 5 * 8.0  # about its radius, 4 voxels
    assert f["surface_per_volume"][tube] > f["surface_per_volume"][ball]
    assert f["log_out_synapses"][tube] == np.log1p(2) and f["log_in_synapses"][ball] == np.log1p(1)


def test_true_class_is_the_majority_compartment():
    seg = np.array([[[1, 1, 1, 2, 2, 3]]], np.uint64)
    comp = np.array([[[K.C_BOUTON, K.C_AXON, K.C_SPINE, K.C_SPINE, K.C_SPINE, K.C_VESSEL_WALL]]], np.uint8)
    got = true_classes(seg, comp, np.array([1, 2, 3], np.uint64))
    from connectome.neurites.classifier import CLASSES

    assert [CLASSES[i] if i >= 0 else None for i in got] == ["axon", "spine", None]

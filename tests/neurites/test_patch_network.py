"""The patch network: patches cut around lattice points, training examples labelled by the compartment at
their centre, and a short training run that saves a network the features stage can load."""

import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.neurites import lattice
from connectome.neurites import patch_net as PN
from connectome.neurites.classifier import CLASSES


def test_lattice_points_are_global_and_patches_hold_image_and_own_mask():
    assert [a.tolist() for a in lattice.axes((0, 5, 13), (9, 12, 4), (PN.STRIDE,) * 3)] == [[4], [12], []]
    seg = np.zeros((40, 40, 40), np.uint64)
    seg[10:30, 10:30, 10:30] = 7
    seg[20, 20, 20:30] = 9
    raw = np.arange(40 ** 3, dtype=np.uint32).reshape(seg.shape).astype(np.uint8)
    centres = lattice.centres(seg, (0, 0, 0), (12, 12, 12), (16, 16, 16), (PN.STRIDE,) * 3)
    assert sorted(map(tuple, centres.tolist())) == [(z, y, x) for z in (12, 20) for y in (12, 20) for x in (12, 20)]
    x = PN.patches(raw, seg, np.array([[20, 20, 20]]), 0.5, 0.25)
    assert x.shape == (1, 2, PN.PATCH, PN.PATCH, PN.PATCH)
    window = tuple(slice(20 - PN.HALF, 20 + PN.HALF) for _ in range(3))
    np.testing.assert_allclose(x[0, 0], (raw[window] / 255.0 - 0.5) / 0.25, atol=1e-6)
    np.testing.assert_array_equal(x[0, 1], seg[window] == 9)  # the centre voxel's segment, not the big one


def test_examples_are_labelled_by_the_compartment_at_their_centre_and_a_short_training_saves(tmp_path):
    from connectome.neurites import patch_training as T
    from connectome.neurites.training import COMPARTMENT_CLASS
    from connectome.synth import generate

    v = generate((24, 64, 64), (8.0, 8.0, 8.0), seed=5)
    raw, seg, centres, cls = T.volume_examples(v.raw, v.labels, v.compartments, np.random.default_rng(0), 300)
    assert len(cls) == 300 and raw.shape == tuple(s + 2 * PN.HALF for s in v.raw.shape)
    at = tuple((centres - PN.HALF).T)
    assert np.all(v.labels[at] != 0)
    np.testing.assert_array_equal(cls, [CLASSES.index(COMPARTMENT_CLASS[c]) for c in v.compartments[at]])
    report = T.train("tiny", 0.05, train_seeds=[5], val_seeds=[6], threads=1, per_volume=300, shape=(24, 64, 64),
                     out=str(tmp_path / "tiny.pt"), log=lambda *_: None)
    assert report["steps"] > 0
    assert np.sum(report["validation"]["confusion_rows_truth_cols_predicted"]) > 0
    model = PN.load(str(tmp_path / "tiny.pt"))
    assert model.classes == CLASSES
    p = PN.probabilities(model, raw, seg, centres[:10])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=5 / PN.QUANTUM)
    assert np.all(p * PN.QUANTUM == np.round(p * PN.QUANTUM))


def test_a_patch_gets_the_same_probabilities_alone_and_among_others(monkeypatch):
    """Each forward pass holds BATCH patches (the last one padded), so the float32 result of a patch does not
    depend on how many others its block has - which would otherwise move a sum across a rounding step."""
    monkeypatch.setattr(PN, "QUANTUM", 2.0 ** 40)  # (nearly) no rounding: float32 differences would show
    model = PN.load("patches-synthetic")
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 255, (48, 48, 48)).astype(np.uint8)
    seg = (rng.random((48, 48, 48)) < 0.5).astype(np.uint64) + 1
    centres = np.stack(np.meshgrid(*[np.arange(PN.HALF, 48 - PN.HALF, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert len(centres) > PN.BATCH
    together = PN.probabilities(model, raw, seg, centres)
    alone = np.concatenate([PN.probabilities(model, raw, seg, centres[i:i + 1]) for i in range(0, len(centres), 37)])
    np.testing.assert_array_equal(alone, together[::37])


def test_a_file_that_is_not_a_patch_network_is_one_line(tmp_path):
    import shutil
    from pathlib import Path

    import connectome.models.registry as models

    src = Path(models.__file__).parent / "weights" / "synthetic.pt"  # an affinity network with its json
    shutil.copy(src, tmp_path / "x.pt")
    shutil.copy(src.with_suffix(".json"), tmp_path / "x.json")
    with pytest.raises(UserError, match="not a neurite patch network") as e:
        PN.load(str(tmp_path / "x.pt"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown neurite patch network"):
        PN.load("no-such-network")

"""Training the neurite type classifier: a reconstruct run's segments as examples (classes from the
synthetic compartments, synapse counts from the run's table) and the log-size weighting of fragments."""

import numpy as np

from connectome.io import create_volume
from connectome.neurites.features import FEATURE_NAMES
from connectome.neurites.training import descriptor_names, fit, predicted_examples, split_spines, true_classes
from connectome.synapses.table import write_synapses


def test_a_runs_segments_are_examples_with_its_synapse_counts(tmp_path):
    from connectome.synth import generate

    vol = generate((24, 96, 96), (8.0, 8.0, 8.0), seed=5)
    vol.save(str(tmp_path / "synth"), chunk_shape=(24, 48, 48))
    seg = split_spines(vol.labels, vol.compartments)  # a "predicted" segmentation: the cells, spines cut off
    out = create_volume(str(tmp_path / "run" / "segmentation"), seg.shape, np.uint64, (24, 48, 48), (8.0, 8.0, 8.0))
    out.write(out.box, seg)
    ids, counts = np.unique(seg[seg != 0], return_counts=True)
    a, b = ids[np.argsort(counts)[-2:]]  # the two largest segments: a -> b twice
    write_synapses(str(tmp_path / "run" / "synapses.csv"), {
        "id": np.array([1, 2]), "z": np.array([1, 2]), "y": np.array([1, 2]), "x": np.array([1, 2]),
        "pre": np.array([a, a], np.uint64), "post": np.array([b, b], np.uint64), "score": np.ones(2),
        "partner_score": np.ones(2), "size_voxels": np.array([10, 10]), "size_nm3": np.ones(2),
        "autapse": np.zeros(2, bool)})
    x, y, n = predicted_examples(str(tmp_path / "run"), str(tmp_path / "synth"))
    truth = true_classes(seg, vol.compartments, ids)
    keep = truth >= 0
    assert x.shape == (int(keep.sum()), len(FEATURE_NAMES))
    np.testing.assert_array_equal(y, truth[keep])
    np.testing.assert_array_equal(n, counts[keep])
    out_col, in_col = FEATURE_NAMES.index("log_out_synapses"), FEATURE_NAMES.index("log_in_synapses")
    rows = {int(i): r for r, i in enumerate(ids[keep])}
    assert np.isclose(x[rows[int(a)], out_col], np.log1p(2)) and np.isclose(x[rows[int(b)], in_col], np.log1p(2))
    assert np.count_nonzero(x[:, out_col]) == 1 and np.count_nonzero(x[:, in_col]) == 1


def test_log_size_weights_let_a_few_large_segments_outweigh_many_specks():
    # the same descriptors: 10 large segments of class 0, 15 one-voxel specks of class 1
    x = np.zeros((25, 3))
    y = np.r_[np.zeros(10, np.int64), np.ones(15, np.int64)]
    voxels = np.r_[np.full(10, 1e5), np.ones(15)]
    by_count = fit(x, y, steps=300, balance=0.0)
    by_size = fit(x, y, steps=300, voxels=voxels, balance=0.0)
    assert by_count.predict(x[:1])[0][0] == 1  # the majority of segments
    assert by_size.predict(x[:1])[0][0] == 0  # 10 x log(1e5 + 1) against 15 x log(2)
    even = fit(x, y, steps=300, voxels=voxels, balance=1.0)  # classes evened out: a tie, both near 1/2
    assert abs(even.probabilities(x[:1])[0, 0] - 0.5) < 0.05


def test_the_sholl_and_patch_descriptors_are_chosen_by_flag():
    from connectome.neurites.classifier import load
    from connectome.neurites.features import PATCH_FEATURES
    from connectome.neurites.sholl import FEATURES as SHOLL

    default = descriptor_names(patches=True, with_sholl=False)
    assert not set(SHOLL) & set(default) and set(PATCH_FEATURES) <= set(default)
    assert default == load("types-synthetic").features  # retraining by default gives the shipped descriptor set
    assert set(SHOLL) <= set(descriptor_names(True, True))
    assert not set(PATCH_FEATURES) & set(descriptor_names(False, True))

"""The neurite type stages through the engine: every segment of the segmentation gets a class, the
class volume agrees with the segment table, and blockwise equals one block."""

import csv

import numpy as np
import pytest

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import open_volume
from connectome.neurites import sholl
from connectome.neurites.classifier import CLASSES
from connectome.neurites.types import class_code, load_sums, read_segments

SHAPE = (16, 96, 96)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("types")
    generate(SHAPE, (8.0, 8.0, 8.0), seed=3).save(str(root), chunk_shape=(8, 32, 32))
    return root


def _execute(root, out, block, client, features_params=None, types_params=None, raw=None):
    """The plan's block count of segment_features, and the blocks each stage ran (`raw`: another raw volume)."""
    stages = [StageConfig(stage="segment_features", inputs={"segmentation": str(root / "labels")},
                          params=features_params or {}),
              StageConfig(stage="neurite_types", inputs={"segmentation": str(root / "labels")},
                          params=types_params or {})]
    config = RunConfig(input=str(raw or root / "raw"), output=str(out), cluster=ClusterConfig(), stages=stages,
                       blocks=BlocksConfig(shape=block, chunk_shape=(8, 32, 32)))
    plan = plan_run(config)
    reports = execute(plan, client, progress=False)
    return len(plan.stages[0].grid), [r.ran for r in reports]


def _run(root, out, block, client, features_params=None, types_params=None, raw=None):
    return _execute(root, out, block, client, features_params, types_params, raw)[0]


def test_every_segment_classified_blockwise_as_one_block(synth, tmp_path, client):
    assert _run(synth, tmp_path / "blocks", (8, 32, 32), client) == 18
    assert _run(synth, tmp_path / "one", SHAPE, client) == 1
    labels = open_volume(str(synth / "labels"))
    lab = labels.read(labels.box)
    results = {}
    for name in ("blocks", "one"):
        seg = read_segments(str(tmp_path / name / "segments.csv"))
        assert sorted(seg["id"].tolist()) == sorted(int(i) for i in np.unique(lab) if i)
        assert set(seg["class"]) <= set(CLASSES)
        classes = open_volume(str(tmp_path / name / "neurite_classes"))
        vol = classes.read(classes.box)
        expected = np.zeros(int(lab.max()) + 1, np.uint8)
        expected[seg["id"].astype(np.int64)] = [class_code(c) for c in seg["class"]]
        np.testing.assert_array_equal(vol, expected[lab.astype(np.int64)])
        with open(tmp_path / name / "segments.csv", newline="") as f:
            results[name] = [(r["id"], r["class"], r["size_voxels"], r["z"], r["y"], r["x"],
                              *(r[k] for k in sholl.MORPHOLOGY_COLUMNS)) for r in csv.DictReader(f)]
        assert 0 < seg["radius_nm"].min() and seg["radius_nm"].max() <= 120
        measured = seg["sholl_points"] > 0
        assert measured.any() and not measured.all()  # small segments hold no lattice point
        for k in ("crossings", "branch_share", "tip_share"):
            np.testing.assert_array_equal(np.isnan(seg[k]), ~measured)  # empty cells: not measured
        assert (seg["crossings"][measured] > 0).any()
        for k in ("branch_share", "tip_share"):
            assert ((seg[k][measured] >= 0) & (seg[k][measured] <= 1)).all()
    assert results["blocks"] == results["one"]
    # the classes are right, mostly, against the synthetic truth (measured: 14 axons, 12 called right, 2 called
    # spines; both dendrites right). Calling every segment an axon would score as well on plain accuracy, so the
    # mean recall per true class is the bar: 0.93 measured, 0.5 for one class called throughout
    from connectome.synth.volume import load_ground_truth

    truth = load_ground_truth(str(synth)).classes
    seg = read_segments(str(tmp_path / "one" / "segments.csv"))
    called = dict(zip(seg["id"].astype(np.int64).tolist(), seg["class"]))
    assert set(called) <= set(truth) and len(set(truth[i] for i in called)) >= 2
    recall = {c: np.mean([called[i] == c for i in called if truth[i] == c]) for c in {truth[i] for i in called}}
    assert len(set(called.values())) >= 2 and np.mean(list(recall.values())) > 0.8, recall
    assert np.mean([called[i] == truth[i] for i in called]) >= 0.75


def test_a_classifier_of_patch_features_refuses_features_without_the_patch_network(synth, tmp_path, client):
    from connectome.core.errors import UserError
    from connectome.neurites.classifier import load

    assert load("types-synthetic").uses_patches  # the shipped classifier reads the patch network's features
    with pytest.raises(UserError, match="segment_features has patch_network: null"):
        _run(synth, tmp_path / "none", SHAPE, client, {"patch_network": None})  # refused while planning
    assert not (tmp_path / "none").exists()


def test_data_of_another_voxel_size_is_refused_unless_allowed(tmp_path, client):
    """The patch network and the classifier learned 8 nm tissue: a 40 x 4 x 4 nm volume is refused
    in one line while planning, naming the network or classifier, unless the mismatch is allowed."""
    from connectome.core.errors import UserError
    from connectome.synth import generate

    root = tmp_path / "sstem"
    generate((8, 64, 64), (40.0, 4.0, 4.0), seed=3).save(str(root), chunk_shape=(8, 32, 32))
    block = (8, 64, 64)
    with pytest.raises(UserError, match=r"model patches-synthetic: trained on \[8.0, 8.0, 8.0\] nm voxels, but "
                                        r".*labels has \[40.0, 4.0, 4.0\] nm"):
        _run(root, tmp_path / "a", block, client)
    with pytest.raises(UserError, match=r"model types-synthetic: trained on \[8.0, 8.0, 8.0\] nm voxels"):
        _run(root, tmp_path / "b", block, client, {"allow_voxel_mismatch": True})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    _run(root, tmp_path / "c", block, client, {"allow_voxel_mismatch": True}, {"allow_voxel_mismatch": True})
    assert read_segments(str(tmp_path / "c" / "segments.csv"))["id"].size > 0


def test_allowing_a_voxel_mismatch_does_not_start_a_finished_run_again(synth, tmp_path, client):
    """`allow_voxel_mismatch` only decides whether a run may start: it is no part of the fingerprint."""
    _, ran = _execute(synth, tmp_path / "run", SHAPE, client)
    assert len(ran) >= 2 and all(ran)
    allow = {"allow_voxel_mismatch": True}
    _, ran = _execute(synth, tmp_path / "run", SHAPE, client, allow, allow)
    assert not any(ran), ran


def _raw_copy(synth, path, change):
    """A copy of the synthetic raw volume at `path`, changed by `change(array)`."""
    from connectome.io import create_volume

    raw = open_volume(str(synth / "raw"))
    data = change(raw.read(raw.box).copy())
    vol = create_volume(str(path), data.shape, data.dtype, (8, 32, 32), raw.meta.voxel_size)
    vol.write(vol.box, data)
    return path


def _segment_rows(out):
    with open(out / "segments.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_a_lost_section_is_read_as_the_blend_of_its_neighbours(synth, tmp_path, client):
    """A section lost in cutting (all 0) that the segmentation runs through: the intensity features and the patch
    network read it as the affinity network does, filled from the sections above and below (`fill_blank`), in
    any block layout; with `fill_blank` 0 it is black, and the segments crossing it read darker."""
    from connectome.affinity.blank import FILL_BLANK, fill_blank

    def lose(a):
        a[8] = 0
        return a

    lost = _raw_copy(synth, tmp_path / "lost", lose)
    filled = _raw_copy(synth, tmp_path / "filled", lambda a: fill_blank(lose(a), FILL_BLANK))
    runs = {"blocks": (lost, (8, 32, 32), {}), "one": (lost, SHAPE, {}), "filled": (filled, SHAPE, {}),
            "black": (lost, SHAPE, {"fill_blank": 0})}
    rows, sums = {}, {}
    for name, (raw, block, params) in runs.items():
        _run(synth, tmp_path / name, block, client, features_params=params, raw=raw)
        rows[name] = _segment_rows(tmp_path / name)
        sums[name] = load_sums(str(tmp_path / name / "tables" / "segment_features"))
    assert rows["blocks"] == rows["one"] == rows["filled"]
    for name in ("blocks", "filled", "black"):
        np.testing.assert_array_equal(sums[name]["ids"], sums["one"]["ids"])
    for k in ("raw", "raw2", "dark", "patch_axon"):
        np.testing.assert_allclose(sums["blocks"][k], sums["one"][k], rtol=1e-9)
        np.testing.assert_allclose(sums["filled"][k], sums["one"][k], rtol=1e-9)
    labels = open_volume(str(synth / "labels"))
    crossing = np.isin(sums["one"]["ids"], np.unique(labels.read(labels.box)[8]))
    darker = sums["black"]["raw"] < sums["one"]["raw"] - 1e-6
    assert crossing.sum() >= 5 and (darker == crossing).all(), (crossing.sum(), darker.sum())

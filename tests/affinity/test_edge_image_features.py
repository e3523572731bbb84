"""The edge classifier's image features (`edge_features.INTENSITY_FEATURES`): their definition, a classifier that
reads them scoring alike in any block layout, and the one-line refusal where the agglomerate stage lacks the image."""

import json

import numpy as np
import pytest
from test_edge_classifier import noisy_affinities, same_partition

from connectome.affinity.edge_classifier import load_classifier
from connectome.affinity.edge_features import (
    FEATURES,
    INTENSITY_FEATURES,
    contact_intensity,
    edge_features,
    fragment_intensity,
    small_fragments,
)
from connectome.affinity.edge_training import edge_labels, edge_set, fit_classifier
from connectome.affinity.encoding import affinities_as_uint8
from connectome.affinity.region_graph import region_graph
from connectome.core.errors import UserError
from connectome.io import create_volume, open_volume


def test_image_features_follow_their_definition():
    """Contact mean and spread over every face-adjacent voxel pair of two fragments (each pair's two voxels
    averaged), and the mean over the smaller fragment, against a loop over the voxels; ids above 2^32 as blocks
    number them."""
    rng = np.random.default_rng(0)
    frag = (rng.integers(0, 7, (6, 7, 8)) * (1 << 33) + (rng.random((6, 7, 8)) < 0.2)).astype(np.uint64)
    frag[frag == 1] = 0  # some voxels of no fragment
    raw = rng.integers(0, 256, frag.shape).astype(np.uint8)
    u, v, sums, counts, hist = region_graph(frag, rng.random((3, *frag.shape)), (False, False, False))
    values: dict = {}
    for d in range(3):
        for idx in np.ndindex(frag.shape):
            nxt = list(idx)
            nxt[d] += 1
            if nxt[d] == frag.shape[d]:
                continue
            a, b = int(frag[idx]), int(frag[tuple(nxt)])
            if a != b and a and b:
                values.setdefault((min(a, b), max(a, b)), []).append((raw[idx] / 255 + raw[tuple(nxt)] / 255) / 2)
    mean, spread = contact_intensity(frag, raw, u, v)
    assert len(u) == len(values) > 10
    for k, key in enumerate(zip(u.tolist(), v.tolist())):
        assert mean[k] == pytest.approx(np.mean(values[key]), abs=1e-12)
        assert spread[k] == pytest.approx(np.std(values[key]), abs=1e-9)
    ids = np.unique(frag)[1:]
    np.testing.assert_allclose(fragment_intensity(frag, raw, ids), [raw[frag == i].mean() / 255 for i in ids],
                               atol=1e-12)
    limit = (2, 3, 3)
    feats = edge_features(frag, u, v, sums, counts, hist, limit, raw=raw)
    assert feats.shape == (len(u), len(FEATURES) + len(INTENSITY_FEATURES))
    np.testing.assert_array_equal(feats[:, :len(FEATURES)], edge_features(frag, u, v, sums, counts, hist, limit))
    known_ids, sizes, small = small_fragments(frag, limit)
    counted = np.where(small, sizes, np.prod(limit))
    cu, cv = counted[np.searchsorted(known_ids, u)], counted[np.searchsorted(known_ids, v)]
    smaller = np.where(cu <= cv, u, v)
    inside = np.array([raw[frag == i].mean() / 255 for i in smaller])
    np.testing.assert_allclose(feats[:, 12:], np.stack([mean, spread, inside, inside - mean], 1).astype(np.float32),
                               rtol=1e-6)


@pytest.fixture(scope="module")
def image_volume(tmp_path_factory):
    """A stored synthetic image with noisy affinities of its labels, and a classifier with image features fitted
    on another draw (extent 2: small and large fragments both common)."""
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("image-edges")
    fit = generate((24, 64, 64), (8.0, 8.0, 8.0), seed=3)
    edges = edge_set(affinities_as_uint8(noisy_affinities(fit.labels, 0.3, 1)), (2, 2, 2), raw=fit.raw)
    y = edge_labels(edges, fit.labels)
    keep = y >= 0
    meta = fit_classifier(edges.features[keep], y[keep], edges.tables["counts"][keep].astype(float), steps=300)
    meta.update({"threshold": 0.5, "name": "image-edges", "extent": 2})
    (root / "image-edges.json").write_text(json.dumps(meta))
    base = fit_classifier(edges.features[keep][:, :len(FEATURES)], y[keep],
                          edges.tables["counts"][keep].astype(float), steps=300)
    base.update({"threshold": 0.5, "name": "base-edges", "extent": 2})
    (root / "base-edges.json").write_text(json.dumps(base))
    seen = generate((24, 64, 64), (8.0, 8.0, 8.0), seed=4)
    a = create_volume(str(root / "affs"), seen.labels.shape, np.uint8, (12, 16, 16), (8, 8, 8), channels=3)
    a.write(a.box, affinities_as_uint8(noisy_affinities(seen.labels, 0.3, 5)))
    r = create_volume(str(root / "raw"), seen.labels.shape, np.uint8, (12, 16, 16), (8, 8, 8))
    r.write(r.box, seen.raw)
    return root


def _config(root, name, edge_model, block, image=True):
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig

    affs = {"affinities": str(root / "affs")}
    return RunConfig(input=str(root / "raw"), output=str(root / name), cluster=ClusterConfig(),
                     blocks=BlocksConfig(shape=block, chunk_shape=(12, 16, 16)),
                     stages=[StageConfig(stage="fragments", inputs=affs),
                             StageConfig(stage="agglomerate", params={"scoring": "learned", "edge_model": edge_model},
                                         inputs={**affs, **({"raw": "raw"} if image else {})}),
                             StageConfig(stage="relabel", params={"threshold": 0.5, "merge": "serial"})])


def _segment(root, name, edge_model, client, block):
    from connectome.engine.plan import execute, plan_run

    assert execute(plan_run(_config(root, name, edge_model, block)), client, progress=False)
    seg = open_volume(str(root / name / "segmentation"))
    return seg.read(seg.box)


def test_image_scoring_does_not_depend_on_the_block_layout(image_volume, client):
    """32 blocks give the partition of one block with a classifier that reads the image (each block reads the
    image of its grown region), and the image changes the merge (not the image-free classifier's partition)."""
    edge_model = str(image_volume / "image-edges.json")
    assert load_classifier(edge_model).reads_image
    assert not load_classifier(str(image_volume / "base-edges.json")).reads_image
    many = _segment(image_volume, "many", edge_model, client, (12, 16, 16))
    one = _segment(image_volume, "one", edge_model, client, (24, 64, 64))
    assert same_partition(many, one) and len(np.unique(one)) > 5
    base = _segment(image_volume, "base", str(image_volume / "base-edges.json"), client, (24, 64, 64))
    assert not same_partition(one, base)


def test_a_classifier_reading_the_image_without_it_is_refused_in_one_line(image_volume):
    from connectome.engine.plan import plan_run

    edge_model = str(image_volume / "image-edges.json")
    with pytest.raises(UserError) as refused:
        plan_run(_config(image_volume, "no-image", edge_model, (24, 64, 64), image=False))
    message = str(refused.value)
    assert "image-edges.json" in message and "reads the EM image" in message and "\n" not in message
    plan_run(_config(image_volume, "no-image", str(image_volume / "base-edges.json"), (24, 64, 64), image=False))


def test_a_classifier_file_of_unknown_features_is_refused(image_volume, tmp_path):
    meta = json.loads((image_volume / "image-edges.json").read_text())
    meta["features"] = list(FEATURES) + list(INTENSITY_FEATURES[:2])
    bad = tmp_path / "bad-edges.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="differ from this version's"):
        load_classifier(str(bad))


def test_segment_gives_the_agglomerate_stage_the_image_where_its_classifier_reads_it(tmp_path):
    """The shipped `fib-10nm-edges` reads the image: `segment`'s agglomerate stage reads the run's raw volume."""
    from connectome.affinity.segment import segmentation_config

    raw = tmp_path / "raw.npz"
    np.savez(raw, raw=np.zeros((8, 32, 32), np.uint8))
    config = segmentation_config(f"{raw}#raw", str(tmp_path / "out"), "fib-10nm", voxel_size=(10, 10, 10))
    agglomerate = next(s for s in config.stages if s.stage == "agglomerate")
    assert load_classifier(agglomerate.params["edge_model"]).reads_image
    assert agglomerate.inputs == {"raw": "raw"}
    # in the recovered order of a shuffled stack it reads the reordered image; with mean scoring no image at all
    from connectome.alignment.reordering import in_recovered_order

    ordered = next(s for s in in_recovered_order(config.stages, range(8)) if s.stage == "agglomerate")
    assert ordered.inputs == {"raw": "ordered_raw"}
    mean = segmentation_config(f"{raw}#raw", str(tmp_path / "out"), "fib-10nm", voxel_size=(10, 10, 10),
                               scoring="mean")
    for stages in (mean.stages, in_recovered_order(mean.stages, range(8))):
        assert next(s for s in stages if s.stage == "agglomerate").inputs == {}

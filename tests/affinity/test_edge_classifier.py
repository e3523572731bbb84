"""Learned agglomeration: edge features across blocks, the classifier file, its training, and the
segment run whose merge tree equals its serial merge with learned scores."""

import glob
import json

import numpy as np
import pytest

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.affinity.edge_classifier import learned_sums, load_classifier
from connectome.affinity.edge_features import EXTENT, FEATURES, edge_features, small_fragments
from connectome.affinity.edge_training import as_classifier, edge_labels, edge_set, fit_classifier, fit_members
from connectome.affinity.encoding import affinities_as_uint8
from connectome.affinity.region_graph import region_graph
from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.io import open_volume
from connectome.io.lookup import relabel


def noisy_affinities(labels: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Affinities 1 inside an object, 0 across a boundary, plus Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    affs = np.zeros((3, *labels.shape))
    for d in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[d], lo[d] = slice(1, None), slice(None, -1)
        a, b = labels[tuple(hi)], labels[tuple(lo)]
        affs[d][tuple(hi)] = (a == b) & (a != 0)
    return np.clip(affs + rng.normal(0, sigma, affs.shape), 0, 1)


@pytest.fixture(scope="module")
def synthetic():
    from connectome.synth import generate

    return [generate((24, 64, 64), (8.0, 8.0, 8.0), seed=s).labels for s in (3, 4)]


def fitted(labels: np.ndarray, extent: int, path) -> tuple[str, dict]:
    """A classifier fitted on a synthetic volume's fragment edges, written as a shipped-format json;
    fragments over `extent` voxels on some axis count as large."""
    edges = edge_set(affinities_as_uint8(noisy_affinities(labels, 0.3, 1)), (extent,) * 3)
    y = edge_labels(edges, labels)
    keep = y >= 0
    meta = fit_classifier(edges.features[keep], y[keep], edges.tables["counts"][keep].astype(float), steps=300)
    meta.update({"threshold": 0.5, "name": "test-edges", "extent": extent})
    path.write_text(json.dumps(meta))
    return str(path), meta


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    return fitted(synthetic[0], EXTENT, tmp_path_factory.mktemp("edges") / "test-edges.json")


@pytest.fixture(scope="module")
def trained_small_extent(synthetic, tmp_path_factory):
    """Extent 2: on these volumes both small and large fragments occur."""
    return fitted(synthetic[0], 2, tmp_path_factory.mktemp("edges2") / "test-edges-2.json")


def test_features_of_uncut_fragments_are_the_same_in_any_block_layout():
    rng = np.random.default_rng(0)
    cubes = rng.permutation(8 * 12 * 12).reshape(8, 12, 12) + 1  # 2^3 cubes, one id each, and a few holes
    frag = np.where(rng.random(cubes.shape) < 0.1, 0, cubes).repeat(2, 0).repeat(2, 1).repeat(2, 2).astype(np.uint64)
    affs = rng.random((3, *frag.shape))
    u, v, s, c, h = region_graph(frag, affs, (False, False, False))
    limit = (2, 2, 2)  # every 2^3 cube is a small fragment
    whole = {(a, b): row for a, b, row in zip(u.tolist(), v.tolist(), edge_features(frag, u, v, s, c, h, limit))}
    grid = BlockGrid(Box.from_shape(frag.shape), (8, 12, 12))
    compared = 0
    for block in grid:
        w = block.write_box
        lower = tuple(o > 0 for o in w.offset)
        read = Box.from_corners(tuple(o - int(h_) for o, h_ in zip(w.offset, lower)), w.end)
        sub = frag[read.to_slices()]
        bu, bv, bs, bc, bh = region_graph(sub, affs[(slice(None), *w.to_slices())], lower)
        feats = edge_features(sub, bu, bv, bs, bc, bh, limit)
        # fragments no inner face of this block touches: every contact and voxel of theirs is here
        inner = frag[w.to_slices()]
        faces = np.zeros(frag.shape, bool)
        for d in range(3):
            for edge in (w.offset[d], w.end[d]):
                if 0 < edge < frag.shape[d]:
                    sl = [slice(None)] * 3
                    sl[d] = slice(edge - 1, edge + 1)
                    faces[tuple(sl)] = True
        cut = set(np.unique(frag[faces]).tolist())
        uncut = set(np.unique(inner).tolist()) - cut
        for a, b, row in zip(bu.tolist(), bv.tolist(), feats):
            if a in uncut and b in uncut:
                np.testing.assert_allclose(row, whole[(a, b)], rtol=1e-6)
                compared += 1
    assert compared > 20  # the check covered many edges


def test_classifier_loads_scores_and_rounds_like_affinities(trained):
    path, meta = trained
    clf = load_classifier(path)
    assert clf.threshold == 0.5
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES)))
    p = clf.merge_probability(x)
    assert p.shape == (50,) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, as_classifier(meta).merge_probability(x))
    sums = learned_sums(p, np.arange(1, 51))
    scaled = sums * 255
    np.testing.assert_array_equal(scaled, np.rint(scaled))  # exact k x count, pools in any order
    assert np.all(np.abs(sums / np.arange(1, 51) - p) <= 0.5 / 255 + 1e-12)


def test_merge_probability_in_runs_of_rows_equals_the_whole_mlp_at_once(trained):
    """The classifier scores in runs of ROWS edges (cache-sized); each edge's p is the one of the plain
    forward pass over all rows, across run boundaries."""
    from connectome.affinity.edge_classifier import ROWS

    clf = load_classifier(trained[0])
    x = np.random.default_rng(1).normal(size=(2 * ROWS + 17, len(FEATURES)))
    h = (x - clf.mean) / clf.std
    for k, (w, b) in enumerate(zip(clf.weights, clf.biases)):
        h = h @ w.T + b
        h = np.maximum(h, 0.0) if k < len(clf.weights) - 1 else h
    np.testing.assert_allclose(clf.merge_probability(x), 1 / (1 + np.exp(-np.clip(h[:, 0], -60, 60))), rtol=1e-12,
                               atol=0)
    assert clf.merge_probability(x[:0]).shape == (0,)


def test_histogram_features_of_sparse_rows_equal_those_of_dense_rows():
    """The CSR path (no dense edges x 64 array) gives the dense path's quantiles, spread and low share,
    also for rows with one bin, empty rows and a CSR with its bins out of order or repeated."""
    from scipy.sparse import csr_array

    from connectome.affinity.edge_features import histogram_features

    rng = np.random.default_rng(2)
    dense = rng.integers(0, 6, size=(3000, 64)) * (rng.random((3000, 64)) < 0.15)
    dense[::9] = 0
    dense[::9, 7] = 3  # one bin
    dense[5] = 0  # empty
    want = histogram_features(dense)
    np.testing.assert_array_equal(histogram_features(csr_array(dense.astype(np.uint32))), want)
    row, col = np.nonzero(dense)
    half = dense[row, col] // 2
    pick = rng.permutation(2 * len(row))  # each bin's count in two parts, all out of order
    rows, cols = np.concatenate([row, row])[pick], np.concatenate([col, col])[pick]
    by_row = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(dense)))])
    shuffled = csr_array((np.concatenate([dense[row, col] - half, half])[pick][by_row], cols[by_row], indptr),
                         shape=dense.shape)
    assert not shuffled.has_canonical_format
    np.testing.assert_allclose(histogram_features(shuffled), want, rtol=1e-12, atol=1e-15)


def test_region_graph_of_kept_labels_is_the_full_graphs_edges_between_them():
    rng = np.random.default_rng(3)
    frag = rng.integers(0, 30, size=(6, 20, 20)).astype(np.uint64)
    affs = rng.random((3, 5, 19, 19))
    u, v, sums, counts, hist = region_graph(frag, affs, (True, True, True))
    keep = np.zeros(30, bool)
    keep[rng.choice(30, 12, replace=False)] = True
    ku, kv, ks, kc, kh = region_graph(frag, affs, (True, True, True), keep)
    rows = np.flatnonzero(keep[u.astype(np.int64)] & keep[v.astype(np.int64)])
    assert 0 < len(rows) < len(u)
    np.testing.assert_array_equal(ku, u[rows])
    np.testing.assert_array_equal(kv, v[rows])
    np.testing.assert_array_equal(ks, sums[rows])  # the same sums, bit for bit
    np.testing.assert_array_equal(kc, counts[rows])
    np.testing.assert_array_equal(kh.toarray(), hist[rows, :].toarray())


def test_region_graph_of_stored_affinities_is_that_of_their_float64_values():
    """uint8 affinities give the graph of `affinities_as_float(..., float64)` bit for bit, and without histograms
    the same edges, sums and counts."""
    from connectome.affinity.encoding import affinities_as_float

    rng = np.random.default_rng(8)
    frag = rng.integers(0, 40, size=(7, 16, 18)).astype(np.uint64)
    stored = rng.integers(0, 256, (3, 6, 15, 17)).astype(np.uint8)
    want = region_graph(frag, affinities_as_float(stored, np.float64), (True, True, True))
    got = region_graph(frag, stored, (True, True, True))
    bare = region_graph(frag, stored, (True, True, True), histograms=False)
    for a, b, c in zip(got[:4], want[:4], bare[:4]):
        assert a.dtype == b.dtype == c.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    assert bare[4] is None
    for key in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got[4], key), getattr(want[4], key))
    assert got[4].has_canonical_format and want[4].has_canonical_format


def test_training_separates_merge_from_split_edges_on_another_volume(synthetic, trained):
    _, meta = trained
    labels = synthetic[1]  # not trained on
    edges = edge_set(affinities_as_uint8(noisy_affinities(labels, 0.3, 2)))
    y = edge_labels(edges, labels)
    keep = y >= 0
    p = as_classifier(meta).merge_probability(edges.features[keep])
    y = y[keep]
    assert 0 < y.sum() < len(y)
    # area under the ROC curve: chance is 0.5
    pos, neg = p[y == 1], p[y == 0]
    auc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc > 0.9


def test_members_fold_into_one_mlp_scoring_their_mean_logit(synthetic, tmp_path):
    edges = edge_set(affinities_as_uint8(noisy_affinities(synthetic[0], 0.3, 1)))
    y = edge_labels(edges, synthetic[0])
    x, y, w = edges.features[y >= 0], y[y >= 0], edges.tables["counts"][y >= 0].astype(float)
    folded = dict(fit_members(x, y, w, members=3, steps=60, seed=5), threshold=0.5)
    path = tmp_path / "members-edges.json"
    path.write_text(json.dumps(folded))
    members = [as_classifier(fit_classifier(x, y, w, steps=60, seed=5 + k)).merge_probability(x) for k in range(3)]
    logits = np.log(np.stack(members)) - np.log1p(-np.stack(members))
    assert np.ptp(logits, axis=0).max() > 0.1  # the members differ, so the mean is not trivially one of them
    p = load_classifier(str(path)).merge_probability(x)  # the stored file, as the stage reads it
    np.testing.assert_allclose(np.log(p) - np.log1p(-p), logits.mean(axis=0), atol=1e-8)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"kind": "unet"}),
                                     json.dumps({"kind": "edge_classifier", "format": 1, "features": ["x"]})])
def test_a_bad_classifier_file_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        load_classifier(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_segment_with_a_bad_edge_model_exits_2_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad-edges.json"
    bad.write_text(json.dumps({"kind": "edge_classifier", "format": 1, "features": list(FEATURES)}))
    raw = tmp_path / "raw.npz"
    np.savez(raw, raw=np.zeros((8, 16, 16), np.uint8))
    code = main(["segment", f"{raw}#raw", str(tmp_path / "out"), "--model", "synthetic", "--voxel-size", "8", "8",
                 "8", "--scoring", "learned", "--edge-model", str(bad), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bad-edges.json" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))


@pytest.fixture(scope="module")
def affinity_volume(tmp_path_factory, synthetic):
    from connectome.io import create_volume

    root = tmp_path_factory.mktemp("learned")
    labels = synthetic[1]
    a = create_volume(str(root / "affs"), labels.shape, np.uint8, (12, 16, 16), (8, 8, 8), channels=3)
    a.write(a.box, affinities_as_uint8(noisy_affinities(labels, 0.3, 5)))
    return root


def _run(root, name, merge, agglomerate, client, block=(12, 16, 16), in_plane=False, reports=None):
    """The segmentation of a fragments -> agglomerate -> relabel run; `reports` gets each stage's report."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    affs = {"affinities": str(root / "affs")}
    config = RunConfig(input=str(root / "affs"), output=str(root / name), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=block, chunk_shape=(12, 16, 16)),
                       stages=[StageConfig(stage="fragments", inputs=affs, params={"in_plane": in_plane}),
                               StageConfig(stage="agglomerate", inputs=affs, params=agglomerate),
                               StageConfig(stage="relabel", params={"threshold": 0.5, "merge": merge, "fanout": 2})])
    ran = execute(plan_run(config), client, progress=False)
    assert ran
    if reports is not None:
        reports.extend(ran)
    seg = open_volume(str(root / name / "segmentation"))
    return seg.read(seg.box)


def test_learned_scoring_tree_equals_serial_merge(affinity_volume, trained, client):
    """32 blocks (2 x 4 x 4), super-blocks of 2^3 (two levels): the learned merge's tree and serial runs
    agree voxel for voxel, the tables carry p(merge) sums, and the result differs from mean scoring."""
    path, _ = trained
    learned = {"scoring": "learned", "edge_model": path}
    tree = _run(affinity_volume, "tree", "tree", learned, client)
    serial = _run(affinity_volume, "serial", "serial", learned, client)
    assert tree.tobytes() == serial.tobytes()
    assert list((affinity_volume / "tree").rglob("*.tree")) and not list((affinity_volume / "serial").rglob("*.tree"))
    assert len(np.unique(tree)) > 5
    # the same tables merged on their mean affinities give another segmentation
    edges_dir = affinity_volume / "tree" / "tables" / "edges"
    tables = load_tables(str(edges_dir))
    affinity_sums = [np.load(p)["affinity_sums"] for p in sorted(glob.glob(str(edges_dir / "*.npz")))]
    assert not np.allclose(tables["sums"], np.concatenate(affinity_sums))
    tables["sums"] = np.concatenate(affinity_sums)
    fragments = open_volume(str(affinity_volume / "tree" / "fragments"))
    frag = fragments.read(fragments.box)
    mean = relabel(frag, *lookup_table(tables, 0.5))
    assert not np.array_equal(tree, mean)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays group the voxels alike (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("extent", [2, EXTENT])
def test_learned_scoring_does_not_depend_on_the_block_layout(affinity_volume, trained, trained_small_extent,
                                                              client, extent):
    """32 blocks give the partition of one block, with edges that have a fragment of at most `extent`
    voxels scored by the classifier, the others by their mean affinity (2: many fragments of both kinds;
    16: nearly all small)."""
    path, _ = trained if extent == EXTENT else trained_small_extent
    learned = {"scoring": "learned", "edge_model": path}
    many = _run(affinity_volume, f"many-{extent}", "serial", learned, client)
    one = _run(affinity_volume, f"one-{extent}", "serial", learned, client, block=(24, 64, 64))
    assert same_partition(many, one)
    fragments = open_volume(str(affinity_volume / f"one-{extent}" / "fragments"))
    _, _, small = small_fragments(fragments.read(fragments.box), (extent,) * 3)
    small, large = int(small[1:].sum()), int((~small[1:]).sum())  # id 0 left out
    assert (small > 100 and large > 20) if extent == 2 else large < 5, (small, large)
    # the merge saw classifier scores: not the mean-affinity result
    mean = _run(affinity_volume, f"mean-{extent}", "serial", {"scoring": "mean"}, client, block=(24, 64, 64))
    assert not same_partition(one, mean)


def test_learned_scoring_of_fragments_within_sections_does_not_depend_on_the_block_layout(
        affinity_volume, trained_small_extent, client):
    """Fragments within sections (serial-section models): the scoring region grows in y and x only, and
    32 blocks still give the partition of one block, with small and large fragments both common."""
    path, _ = trained_small_extent
    learned = {"scoring": "learned", "edge_model": path}
    many = _run(affinity_volume, "plane-many", "serial", learned, client, in_plane=True)
    one = _run(affinity_volume, "plane-one", "serial", learned, client, block=(24, 64, 64), in_plane=True)
    assert same_partition(many, one)
    fragments = open_volume(str(affinity_volume / "plane-one" / "fragments"))
    frag = fragments.read(fragments.box)
    assert all(len(np.setdiff1d(np.unique(frag[z]), [0])) and not np.intersect1d(
        np.unique(frag[z]), np.unique(frag[z + 1])).any() for z in range(frag.shape[0] - 1))  # one section each
    _, _, small = small_fragments(frag, (2, 2, 2))
    assert small[1:].sum() > 100 and (~small[1:]).sum() > 20
    mean = _run(affinity_volume, "plane-mean", "serial", {"scoring": "mean"}, client, block=(24, 64, 64),
                in_plane=True)
    assert not same_partition(one, mean)


def test_a_block_scores_each_voxel_pair_by_the_whole_basins_it_joins(tmp_path, synthetic, trained_small_extent):
    """A block whose read array holds fragments larger than its grown region (here: the whole volume's
    basins, cut by the region's faces and so split into several region basins) still gives every edge
    with a small side the whole volume's p(merge)."""
    from connectome.affinity.agglomerate import block_graph
    from connectome.affinity.edge_context import one_block_sums
    from connectome.affinity.edge_features import small_fragments
    from connectome.io import create_volume

    path, _ = trained_small_extent
    clf = load_classifier(path)
    labels = synthetic[1]
    affs = affinities_as_uint8(noisy_affinities(labels, 0.3, 5))
    whole = edge_set(affs, (2, 2, 2))
    p_whole = one_block_sums(whole.fragments, whole.tables, whole.features, clf, (2, 2, 2)) / whole.tables["counts"]
    a = create_volume(str(tmp_path / "affs"), labels.shape, np.uint8, (12, 16, 16), (8, 8, 8), channels=3)
    a.write(a.box, affs)
    f = create_volume(str(tmp_path / "frag"), labels.shape, np.uint64, (12, 16, 16), (8, 8, 8))
    f.write(f.box, whole.fragments)
    write = Box((6, 16, 16), (12, 32, 32))
    read = Box((5, 15, 15), (13, 33, 33))
    table = block_graph(f, a, read, write, 0.5 / 255, 0.99, clf)
    ids, _, small = small_fragments(whole.fragments, (2, 2, 2))
    small_side = small[np.searchsorted(ids, table["u"])] | small[np.searchsorted(ids, table["v"])]
    assert small_side.sum() >= 10 and (~small_side).sum() >= 1
    index = {(x, y): k for k, (x, y) in enumerate(zip(whole.tables["u"].tolist(), whole.tables["v"].tolist()))}
    at = np.array([index[(x, y)] for x, y in zip(table["u"].tolist(), table["v"].tolist())])
    np.testing.assert_allclose((table["sums"] / table["counts"])[small_side], p_whole[at][small_side], atol=1e-12)
    # large-large edges keep the block's own affinity mean
    np.testing.assert_allclose(table["sums"][~small_side], table["affinity_sums"][~small_side])


def test_an_edge_to_a_basin_the_grown_region_cuts_in_two_is_scored(tmp_path, trained_small_extent):
    """A fragment seen in the block's read array that the grown region cuts into two basins (a U whose
    bend lies outside): the small fragment touching its far arm gets the whole volume's p(merge)."""
    from connectome.affinity.agglomerate import block_graph
    from connectome.affinity.edge_context import one_block_sums
    from connectome.io import create_volume

    path, _ = trained_small_extent
    clf = load_classifier(path)
    labels = np.zeros((4, 40, 40), np.uint64)
    labels[:, :32, 10:14] = 1  # left arm of the U
    labels[:, :32, 26:30] = 1  # right arm
    labels[:, 30:36, 10:30] = 1  # the bend, far from the block
    labels[1:3, 5:7, 24:26] = 2  # a small fragment touching the right arm
    affs = affinities_as_uint8(noisy_affinities(labels, 0.0, 0))
    whole = edge_set(affs, (2, 2, 2))
    p_whole = one_block_sums(whole.fragments, whole.tables, whole.features, clf, (2, 2, 2)) / whole.tables["counts"]
    assert len(whole.tables["u"]) == 1  # the U and the small fragment
    a = create_volume(str(tmp_path / "affs"), labels.shape, np.uint8, (4, 20, 40), (8, 8, 8), channels=3)
    a.write(a.box, affs)
    f = create_volume(str(tmp_path / "frag"), labels.shape, np.uint64, (4, 20, 40), (8, 8, 8))
    f.write(f.box, whole.fragments)
    box = Box((0, 0, 0), (4, 16, 40))  # the region (grown by 3) ends at y 19, before the bend
    table = block_graph(f, a, box, box, 0.5 / 255, 0.99, clf)
    np.testing.assert_allclose(table["sums"] / table["counts"], p_whole, atol=1e-12)


@pytest.fixture(scope="module")
def stored_synthetic(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("edge-volumes")
    for seed in (3, 4):
        generate((16, 64, 64), (8.0, 8.0, 8.0), seed=seed).save(str(root / f"s{seed}"))
    return root


def test_train_edges_fits_on_a_seeded_draw_of_max_edges(stored_synthetic, tmp_path, capsys):
    out = tmp_path / "synthetic-edges.json"
    args = ["train", "edges", "--model", "synthetic", "--raw", str(stored_synthetic / "s3" / "raw"),
            "--labels", str(stored_synthetic / "s3" / "labels"), "--val-raw", str(stored_synthetic / "s4" / "raw"),
            "--val-labels", str(stored_synthetic / "s4" / "labels"), "--steps", "30", "--max-edges", "150",
            "--extent", "6", "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads(out.read_text())
    available = sum(v["edges"] for v in meta["provenance"]["data"]["train"])
    assert available > 150 and meta["provenance"]["fitted_edges"] == 150
    clf = load_classifier(str(out))
    assert summary["threshold"] == meta["threshold"] and clf.threshold == meta["threshold"]
    assert meta["extent"] == clf.extent == 6  # the stage grows its halo and calls fragments small by it
    assert clf.reads_image and meta["provenance"]["image"]  # the image's features, by default
    assert main([*args[:-3], "--out", str(tmp_path / "plain-edges.json"), "--no-image"]) == 0
    plain = load_classifier(str(tmp_path / "plain-edges.json"))
    assert not plain.reads_image and plain.features == FEATURES and len(plain.mean) == len(FEATURES)


@pytest.mark.parametrize("option", [["--max-edges", "0"], ["--extent", "0"], ["--members", "0"]])
def test_train_edges_refuses_a_count_below_one_in_one_line(stored_synthetic, tmp_path, capsys, option):
    s3 = stored_synthetic / "s3"
    args = ["train", "edges", "--model", "synthetic", "--raw", str(s3 / "raw"), "--labels", str(s3 / "labels"),
            "--val-raw", str(stored_synthetic / "s4" / "raw"), "--val-labels", str(stored_synthetic / "s4" / "labels"),
            *option, "--out", str(tmp_path / "x.json")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert " ".join(option) in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()


def test_a_run_resumes_with_the_same_classifier_from_another_folder(affinity_volume, trained, client, tmp_path):
    """The agglomerate stage knows its classifier by file name and content: the same file in another
    folder (another checkout, venv or container) resumes every stage; other content is refused."""
    path, meta = trained
    moved = tmp_path / "elsewhere" / "test-edges.json"
    moved.parent.mkdir()
    moved.write_bytes(open(path, "rb").read())
    first = _run(affinity_volume, "moved", "serial", {"scoring": "learned", "edge_model": path}, client)
    reports: list = []
    again = _run(affinity_volume, "moved", "serial", {"scoring": "learned", "edge_model": str(moved)}, client,
                 reports=reports)
    assert np.array_equal(first, again)
    assert [r.ran for r in reports] == [0] * len(reports) and len(reports) >= 3, reports
    done = affinity_volume / "moved" / ".connectome" / "done" / "agglomerate" / "fingerprint.json"
    recorded = json.loads(done.read_text())
    assert recorded["params"]["edge_model"] == "test-edges.json" and str(tmp_path) not in done.read_text()
    moved.write_text(json.dumps({**meta, "threshold": 0.4}))  # retrained in place: the stage must run again
    with pytest.raises(UserError, match="agglomerate.*other settings: edge_model_sha1"):
        _run(affinity_volume, "moved", "serial", {"scoring": "learned", "edge_model": str(moved)}, client)


def test_a_classifier_fitted_to_other_weights_is_refused(tmp_path, trained):
    """A classifier records the affinity weights it was fitted to; where the model's weights are no longer those
    (retrained in place), `segment` refuses it in one line instead of merging by the old weights' classifier."""
    import shutil

    from connectome.affinity.segment import segmentation_config
    from connectome.core.errors import UserError
    from connectome.engine.stage import file_record
    from connectome.models.registry import resolve_model_path

    shipped = resolve_model_path("synthetic")
    model = tmp_path / "mine.pt"
    shutil.copyfile(shipped, model)
    shutil.copyfile(shipped.with_suffix(".json"), model.with_suffix(".json"))
    classifier = tmp_path / "mine-edges.json"
    classifier.write_text(json.dumps({**trained[1], "affinity_weights": file_record(model)}))
    raw = tmp_path / "raw.npz"
    np.savez(raw, raw=np.zeros((8, 16, 16), np.uint8))

    def config():
        return segmentation_config(f"{raw}#raw", str(tmp_path / "out"), str(model), voxel_size=(8, 8, 8),
                                   scoring="learned")

    assert config().stages[2].params["edge_model"] == str(classifier)  # fitted to these weights: used
    model.write_bytes(model.read_bytes() + b"\0")  # retrained in place (other content under the same name)
    with pytest.raises(UserError, match=r"mine-edges.json: fitted to the affinities of mine.pt .* retrained since, or another model"):
        config()
    classifier.write_text(json.dumps(trained[1]))  # a classifier from before the weights were recorded: used
    assert config().stages[2].params["edge_model"] == str(classifier)


def test_the_affinity_cache_follows_the_weights_not_the_model_name(stored_synthetic, tmp_path, monkeypatch):
    """`train edges --cache` predicts anew for a model retrained in place (its cache was keyed by the model's name
    and the address as written, so a retrained model was fitted on its old weights' affinities), and reuses the
    affinities of the same data however its address is written."""
    import shutil

    import torch

    from connectome.affinity.edge_training import volume_edges
    from connectome.models.registry import load_model, resolve_model_path

    shipped = resolve_model_path("synthetic")
    mine = tmp_path / "models" / "mine.pt"
    mine.parent.mkdir()
    shutil.copy(shipped, mine)
    shutil.copy(shipped.with_suffix(".json"), mine.with_suffix(".json"))
    cache = tmp_path / "cache"
    raw, labels = str(stored_synthetic / "s3" / "raw"), str(stored_synthetic / "s3" / "labels")

    first, _, _ = volume_edges(load_model(str(mine), "cpu"), raw, labels, str(cache))
    monkeypatch.chdir(stored_synthetic)
    volume_edges(load_model(str(mine), "cpu"), "./s3/raw", labels, str(cache))  # the same data, written otherwise
    assert len(list(cache.iterdir())) == 1

    state = torch.load(mine, map_location="cpu", weights_only=True)
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, mine)  # "retrained" in place
    again, _, _ = volume_edges(load_model(str(mine), "cpu"), raw, labels, str(cache))
    assert len(list(cache.iterdir())) == 2
    assert not np.array_equal(again.tables["sums"], first.tables["sums"]) or len(again.tables["u"]) != len(
        first.tables["u"])

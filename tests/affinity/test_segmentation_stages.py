"""Fragments, region graph, global merge and relabel: exact across blocks, and seam-free."""

import numpy as np
import pytest
import yaml

from connectome.affinity.agglomeration import (
    HIST_BINS,
    affinity_bins,
    merge_regions,
    merge_regions_reference,
    quantile_score,
)
from connectome.affinity.region_graph import region_graph
from connectome.cli.main import main
from connectome.core.geometry import BlockGrid, Box
from connectome.io import create_volume, open_volume
from connectome.io.lookup import relabel
from connectome.io.reflected import mirror_indices, read_reflected
from connectome.metrics.voi import voi


def affinities_of(labels: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities (waterz convention: channel d links x and x - e_d)."""
    affs = np.zeros((3,) + labels.shape, np.float32)
    for d in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[d], lo[d] = slice(1, None), slice(0, -1)
        a, b = labels[tuple(hi)], labels[tuple(lo)]
        affs[d][tuple(hi)] = (a == b) & (a != 0)
    return affs


def test_region_graph_by_hand():
    frag = np.array([[[1, 1, 2, 2]]], np.uint64)  # one row: 1 1 | 2 2
    affs = np.zeros((3, 1, 1, 4))
    affs[2, 0, 0, 2] = 0.25  # the pair (x=1, x=2)
    u, v, sums, counts, hist = region_graph(frag, affs, (False, False, False))
    assert u.tolist() == [1] and v.tolist() == [2] and sums.tolist() == [0.25] and counts.tolist() == [1]
    assert hist.shape == (1, HIST_BINS) and hist[0, HIST_BINS // 4] == 1 and hist.sum() == 1


def test_region_graph_summed_over_blocks_equals_whole_volume():
    rng = np.random.default_rng(0)
    frag = rng.integers(1, 6, (12, 14, 16)).astype(np.uint64)
    affs = rng.random((3, 12, 14, 16))
    whole = region_graph(frag, affs, (False, False, False))
    grid = BlockGrid(Box.from_shape(frag.shape), (5, 7, 6))
    rows = {}
    for b in grid:
        w = b.write_box
        has_lower = tuple(o > 0 for o in w.offset)
        grown = Box.from_corners(tuple(o - int(h) for o, h in zip(w.offset, has_lower)), w.end)
        u, v, s, c, _ = region_graph(frag[grown.to_slices()], affs[(slice(None), *w.to_slices())], has_lower)
        for key in zip(u.tolist(), v.tolist(), s.tolist(), c.tolist()):
            total = rows.setdefault(key[:2], [0.0, 0])
            total[0] += key[2]
            total[1] += key[3]
    assert sorted(rows) == list(zip(whole[0].tolist(), whole[1].tolist()))
    for i, (a, b) in enumerate(zip(whole[0].tolist(), whole[1].tolist())):
        assert rows[(a, b)][1] == whole[3][i]
        assert rows[(a, b)][0] == pytest.approx(whole[2][i])


def test_merge_pools_contact_statistics():
    nodes = np.array([10, 20, 30], np.uint64)
    # 10-20: mean 0.9 merges first; 10-30 (mean 0.45 over 2) and 20-30 (mean 0.7 over 2) then pool to 0.575
    u = np.array([10, 10, 20], np.uint64)
    v = np.array([20, 30, 30], np.uint64)
    sums = np.array([0.9, 0.9, 1.4])
    counts = np.array([1, 2, 2])
    stats = np.stack([sums, counts], axis=1)
    roots = merge_regions(nodes, u, v, stats, threshold=0.4)
    assert roots[0] == roots[1] and roots[2] != roots[0]  # pooled score 1 - 0.575 = 0.425 >= 0.4
    roots = merge_regions(nodes, u, v, stats, threshold=0.43)
    assert len(set(roots.tolist())) == 1  # 0.425 < 0.43: all three merge


def strong_chain(n: int = 6):
    """A chain 0-1-...-(n-1) of strong contacts, all of one score (mean 0.9 over one voxel pair),
    and weak contacts (mean 0 over ten) from each node to the one after next: once two chain
    neighbours merge, their contact to the next piece pools with a weak one and stops scoring
    below 0.5."""
    chain = [(a, a + 1, 0.9, 1.0) for a in range(n - 1)]
    weak = [(a, a + 2, 0.0, 10.0) for a in range(n - 2)]
    u, v, sums, counts = (np.array(c) for c in zip(*(chain + weak)))
    stats = np.stack([np.rint(sums * 255), counts * 255], axis=1)  # as edge_stats makes them
    return np.arange(n, dtype=np.uint64), u.astype(np.uint64), v.astype(np.uint64), stats


def test_equal_scores_merge_one_at_a_time_and_are_scored_again():
    """Merged whole, the tie of the chain's equal scores joins all six nodes, though each merge
    makes the contacts around it weak; one at a time (the strict order: the edge of the highest
    least ids first), each merge re-scores the pooled contacts and the chain ends in three pairs."""
    nodes, u, v, stats = strong_chain(6)
    for merge in (merge_regions, merge_regions_reference):
        roots = merge(nodes, u, v, stats.copy(), threshold=0.5)
        assert roots.tolist() == [0, 0, 2, 2, 4, 4]  # (4, 5) first; then (3, 45) pools to 0.9/11
        assert merge(nodes, u, v, stats.copy(), 0.5, order="waterz").tolist() == [0, 0, 2, 2, 4, 4]
    # node 3 frozen (the merge tree's rule): (4, 5) is the least edge at 4 and 5 and still merges;
    # (2, 3), the least edge left, meets frozen 3 and freezes 2, then (1, 2) freezes 1, (0, 1) 0
    for merge in (merge_regions, merge_regions_reference):
        flags = np.array([0, 0, 0, 1, 0, 0], np.int8)
        assert merge(nodes, u, v, stats.copy(), 0.5, frozen=flags).tolist() == [0, 1, 2, 3, 4, 4]
        assert flags.tolist() == [1, 1, 1, 1, 0, 0]


def test_quantile_scoring_pools_histograms():
    nodes = np.array([1, 2, 3], np.uint64)
    u = np.array([1, 1, 2], np.uint64)
    v = np.array([2, 3, 3], np.uint64)
    hist = np.zeros((3, HIST_BINS))
    hist[0, HIST_BINS - 1] = 5  # 1-2: all affinities ~1, merges first
    hist[1, 0] = 3  # 1-3: three pairs near 0 ...
    hist[2, HIST_BINS - 1] = 4  # 2-3: ... and four near 1: pooled median near 1
    median = quantile_score(0.5)
    assert median(hist[1]) > 0.9 and median(hist[2]) < 0.1
    roots = merge_regions(nodes, u, v, hist, threshold=0.5, score=median)
    assert len(set(roots.tolist())) == 1  # the pooled 1-3 contact has median ~1: merged
    roots = merge_regions(nodes, u, v, hist, threshold=0.5, score=quantile_score(0.3))
    assert roots[0] == roots[1] and roots[2] != roots[0]  # 30% quantile of the pooled contact is ~0


def test_relabel_refuses_unknown_fragments():
    keys = np.array([5, 7], np.uint64)
    vals = np.array([1, 1], np.uint64)
    assert relabel(np.array([[[0, 5, 7]]], np.uint64), keys, vals).tolist() == [[[0, 1, 1]]]
    with pytest.raises(RuntimeError, match="missing from the lookup table"):
        relabel(np.array([[[6]]], np.uint64), keys, vals)


def test_mirrored_reads_do_not_depend_on_the_box():
    assert mirror_indices(-3, 8, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    assert mirror_indices(-2, 2, 1).tolist() == [0, 0, 0, 0]


def test_mirrored_read_matches_numpy_reflect(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (6, 9, 11), dtype=np.uint8)
    vol = create_volume(str(tmp_path / "v"), data.shape, np.uint8, (6, 9, 11), (1, 1, 1))
    vol.write(vol.box, data)
    got = read_reflected(vol, Box((-2, -3, 4), (10, 15, 12)))
    padded = np.pad(data, ((2, 2), (3, 3), (0, 5)), mode="reflect")
    np.testing.assert_array_equal(got, padded[0:10, 0:15, 4:16])


@pytest.fixture(scope="module")
def synthetic_affinities(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("seg")
    vol = generate((32, 128, 128), (8.0, 8.0, 8.0), seed=3)
    rng = np.random.default_rng(0)
    affs = np.clip(affinities_of(vol.labels) + rng.normal(0, 0.15, (3, *vol.labels.shape)), 0, 1)
    a = create_volume(str(root / "in" / "affs"), vol.labels.shape, np.uint8, (16, 32, 32), (8, 8, 8), channels=3)
    a.write(a.box, np.rint(affs * 255).astype(np.uint8))
    g = create_volume(str(root / "in" / "gt"), vol.labels.shape, np.uint64, (16, 32, 32), (8, 8, 8))
    g.write(g.box, vol.labels)
    return root


def _segment_from_affinities(root, name, block_shape, scoring="mean", absorb=None):
    cfg = {
        "input": str(root / "in" / "gt"),
        "output": str(root / name),
        "blocks": {"shape": block_shape, "chunk_shape": [16, 32, 32]},
        "cluster": {"n_workers": 2},
        "stages": [
            {"stage": "fragments", "inputs": {"affinities": str(root / "in" / "affs")}},
            {"stage": "agglomerate", "inputs": {"affinities": str(root / "in" / "affs")}},
            {"stage": "relabel", "params": {"threshold": 0.5, "scoring": scoring, **(absorb or {})}},
        ],
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress", "--json"]) == 0
    seg = open_volume(str(root / name / "segmentation"))
    return seg.read(seg.box)


@pytest.mark.parametrize("scoring", ["mean", "quantile"])
def test_eight_blocks_match_one_block(synthetic_affinities, capsys, scoring):
    root = synthetic_affinities
    one = _segment_from_affinities(root, f"one-{scoring}", [32, 128, 128], scoring)
    eight = _segment_from_affinities(root, f"eight-{scoring}", [16, 64, 64], scoring)
    capsys.readouterr()
    gt = open_volume(str(root / "in" / "gt")).read(Box.from_shape((32, 128, 128)))
    split, merge = voi(eight, one)
    assert split + merge <= 0.01, (split, merge)
    gs, gm = voi(one, gt)
    assert gs + gm < 0.5, (gs, gm)  # the chain recovers the cells from noisy affinities
    assert len(np.unique(eight)) > 20


def test_absorbing_small_segments_is_the_same_in_eight_blocks(synthetic_affinities, capsys):
    """relabel's min_voxels: blocks read their context, so 8 blocks give the one-block partition exactly."""
    root = synthetic_affinities
    absorb = {"min_voxels": 64, "max_extent": [4, 8, 8]}
    plain = _segment_from_affinities(root, "plain-one", [32, 128, 128])
    one = _segment_from_affinities(root, "absorb-one", [32, 128, 128], absorb=absorb)
    eight = _segment_from_affinities(root, "absorb-eight", [16, 64, 64], absorb=absorb)
    capsys.readouterr()
    split, merge = voi(eight, one)
    assert split == 0 and merge == 0, (split, merge)
    ids, sizes = np.unique(plain, return_counts=True)
    assert (sizes < 64).sum() > 10_000  # the noisy affinities leave many small segments ...
    after = np.unique(one, return_counts=True)[1]
    assert (after < 64).sum() < (sizes < 64).sum() - 2000  # ... those beside a large one are absorbed
    gt = open_volume(str(root / "in" / "gt")).read(Box.from_shape((32, 128, 128)))
    assert sum(voi(one, gt)) < sum(voi(plain, gt))


def _random_graph(rng, n, m, levels):
    """A random region graph whose mean affinities repeat (ties), as uint8 affinities do."""
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n  # no self-loops; duplicate pairs pool
    counts = rng.integers(1, 6, m).astype(np.float64)
    sums = np.round(rng.random(m) * levels) / levels * counts
    hist = rng.integers(0, 3, (m, HIST_BINS)).astype(np.uint32)
    hist[hist.sum(axis=1) == 0, 0] = 1
    return a.astype(np.uint64) * np.uint64(7), b.astype(np.uint64) * np.uint64(7), np.stack([sums, counts], 1), hist


@pytest.mark.parametrize("seed", range(6))
def test_compiled_merge_equals_reference(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(50, 400)), int(rng.integers(100, 2000))
    u, v, stats, hist = _random_graph(rng, n, m, levels=int(rng.choice([4, 16, 255])))
    nodes = np.arange(n, dtype=np.uint64) * np.uint64(7)
    for threshold in (0.2, 0.5, 0.8):
        for order in ("strict", "waterz"):
            compiled = merge_regions(nodes, u, v, stats.copy(), threshold, order=order)
            reference = merge_regions_reference(nodes, u, v, stats.copy(), threshold, order=order)
            assert np.array_equal(compiled, reference)
            assert len(np.unique(compiled)) < n or threshold < 0.5  # merges did happen
            frozen = (rng.random(n) < 0.1).astype(np.int8)  # as the merge tree freezes nodes at faces
            flags = frozen.copy()
            compiled = merge_regions(nodes, u, v, stats.copy(), threshold, frozen=flags, order=order)
            assert np.array_equal(compiled, merge_regions_reference(nodes, u, v, stats.copy(), threshold,
                                                                    frozen=frozen, order=order))
            assert np.array_equal(flags, frozen)
            for q in (0.3, 0.5):
                assert np.array_equal(merge_regions(nodes, u, v, hist, threshold, quantile_score(q), order=order),
                                      merge_regions_reference(nodes, u, v, hist, threshold, quantile_score(q),
                                                              order=order))


@pytest.mark.parametrize("seed", range(3))
def test_compiled_merge_equals_reference_when_edges_move_often(seed):
    """Cores merge pairwise up a binary tree, carrying their private leaves and weak links to other
    cores (never merged, but pooled) along: edges are re-keyed more often than there are edges, so
    the compiled merge purges stale pairs from its hash table. Scores tie within each level."""
    rng = np.random.default_rng(seed)
    cores, levels = 512, 9
    tree = [(c, c + 2 ** (level - 1), 0.1 * level + rng.choice([0.0, 0.02]))
            for level in range(1, levels + 1) for c in range(0, cores, 2**level)]
    weak = {tuple(sorted(pair)) for pair in rng.integers(0, cores, (cores, 2)) if pair[0] != pair[1]}
    weak -= {(a, b) for a, b, _ in tree}
    leaves = rng.integers(2, 7, cores)
    owner = np.repeat(np.arange(cores), leaves)
    u = np.concatenate([[a for a, _, _ in tree], [a for a, _ in weak], owner])
    v = np.concatenate([[b for _, b, _ in tree], [b for _, b in weak], cores + np.arange(len(owner))])
    affinity = np.concatenate([[1.0 - sc for _, _, sc in tree], rng.choice([0.0, 0.1], len(weak)),
                               np.zeros(len(owner))])
    ids = rng.permutation(cores + len(owner)).astype(np.uint64)  # node indices in no telling order
    u, v, nodes = ids[u], ids[v], np.sort(ids)
    counts = rng.integers(1, 4, len(u)).astype(np.float64)
    stats = np.stack([affinity * counts, counts], 1)
    hist = np.zeros((len(u), HIST_BINS), np.uint32)
    hist[np.arange(len(u)), np.minimum((affinity * HIST_BINS).astype(int), HIST_BINS - 1)] = counts.astype(np.uint32)
    for threshold, levels_merged in ((0.35, 3), (0.8, levels)):
        compiled = merge_regions(nodes, u, v, stats, threshold)
        assert np.array_equal(compiled, merge_regions_reference(nodes, u, v, stats, threshold))
        assert len(np.unique(compiled)) < len(nodes) - cores * (1 - 0.5**levels_merged) + cores // 8  # most tree merges
        assert np.array_equal(merge_regions(nodes, u, v, hist, threshold, quantile_score(0.5)),
                              merge_regions_reference(nodes, u, v, hist, threshold, quantile_score(0.5)))


def test_compiled_region_graph_equals_numpy_reference():
    rng = np.random.default_rng(3)
    frag = rng.integers(0, 7, (9, 11, 10)).astype(np.uint64) * np.uint64(2**33 + 1)
    affs = rng.random((3, 8, 10, 10))
    has_lower = (True, True, False)
    u, v, sums, counts, hist = region_graph(frag, affs, has_lower)
    pairs = {}
    inner = frag[1:, 1:, :]
    for d in range(3):
        for z, y, x in np.ndindex(inner.shape):
            lower = [z + 1, y + 1, x]
            lower[d] -= 1
            if min(lower) < 0:
                continue
            a, b = inner[z, y, x], frag[tuple(lower)]
            if a != b and a and b:
                pairs.setdefault((min(a, b), max(a, b)), []).append(affs[d, z, y, x])
    assert list(zip(u.tolist(), v.tolist())) == sorted(pairs)
    for i, key in enumerate(sorted(pairs)):
        w = np.array(pairs[key])
        assert counts[i] == len(w) and sums[i] == pytest.approx(w.sum())
        assert np.array_equal(hist.toarray()[i], np.bincount(affinity_bins(w), minlength=HIST_BINS))

"""The merge tree equals the serial merge: random region graphs across super-block faces, chains
through several super-blocks, a killed level resumed, and the sharded table in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.affinity.merge_tree import MergeTree, TreeLayout, owner
from connectome.cli.main import main
from connectome.io import open_volume
from connectome.io.lookup import load_shard, relabel
from connectome.io.tables import save_table

from tmpfs_fixture import fill


def random_tables(directory, grid, rng, per_block=(3, 12), levels=8, link_rate=0.05, edges_per_node=2.0):
    """Block tables of a random region graph, as the agglomerate stage writes them: edges inside a
    block and across its lower faces (stored in the upper block), watershed links across faces.
    Affinities take `levels` values, so scores tie often."""
    directory.mkdir(parents=True, exist_ok=True)
    gz, gy, gx = grid
    n_blocks = gz * gy * gx
    counts = rng.integers(per_block[0], per_block[1] + 1, n_blocks)
    ids = [(np.uint64(b) << np.uint64(32)) | np.arange(1, counts[b] + 1, dtype=np.uint64) for b in range(n_blocks)]
    for b in range(n_blocks):
        z, y, x = b // (gy * gx), (b // gx) % gy, b % gx
        mine, lower = ids[b], []
        for dz, dy, dx in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            if z - dz >= 0 and y - dy >= 0 and x - dx >= 0:
                lower.append(ids[((z - dz) * gy + y - dy) * gx + x - dx])
        m = int(edges_per_node * len(mine))
        u, v = rng.choice(mine, m), rng.choice(np.concatenate([mine] + lower), m)
        pairs = np.unique(np.stack([np.minimum(u, v), np.maximum(u, v)], 1)[u != v], axis=0)
        u, v = pairs[:, 0], pairs[:, 1]
        pairs_per_edge = rng.integers(1, 5, len(u))
        stored = [rng.integers(0, levels, c) * (255 // (levels - 1)) for c in pairs_per_edge]  # uint8 affinities
        sums = np.array([s.sum() for s in stored]) / 255.0
        edge = np.repeat(np.arange(len(u)), pairs_per_edge)
        bins = np.minimum((np.concatenate(stored) / 255.0 * 64).astype(int), 63) if len(u) else np.zeros(0, int)
        key, count = np.unique(edge * 64 + bins, return_counts=True)
        link_u = link_v = np.zeros(0, np.uint64)
        if lower and (k := rng.binomial(len(mine), link_rate)):
            link_u, link_v = rng.choice(mine, k), rng.choice(np.concatenate(lower), k)
        save_table(str(directory), b, nodes=mine, u=u, v=v, sums=sums, counts=pairs_per_edge.astype(np.float64),
                   hist_edge=(key // 64).astype(np.uint32), hist_bin=(key % 64).astype(np.uint8),
                   hist_count=count.astype(np.uint32), link_u=link_u, link_v=link_v, grid=np.array(grid))


def tree_table(tree: MergeTree) -> tuple[np.ndarray, np.ndarray]:
    """The tree's lookup table, gathered from its shards (sorted by fragment)."""
    parts = [load_shard(tree.shards_dir, b) for b in range(int(np.prod(tree.layout.grid)))]
    for b, (keys, _) in enumerate(parts):
        assert np.all(owner(keys) == b)  # a shard holds its own block's fragments only
    keys, values = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(keys)
    return keys[order], values[order]


@pytest.mark.parametrize("seed", range(6))
def test_tree_equals_serial_on_random_graphs(tmp_path, seed):
    rng = np.random.default_rng(seed)
    grid = tuple(int(g) for g in rng.integers(2, 7, 3))
    fanout = int(rng.choice([2, 3]))
    random_tables(tmp_path / "edges", grid, rng, levels=int(rng.choice([3, 8, 256])))
    layout = TreeLayout(grid, fanout)  # type: ignore[arg-type]
    assert layout.levels >= 2
    for scoring in ("mean", "quantile"):
        tables = load_tables(str(tmp_path / "edges"), histograms=scoring == "quantile")
        for threshold in (0.3, 0.5, 0.7):
            keys, values = lookup_table(tables, threshold, scoring, order="strict")
            tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / f"tree-{scoring}-{threshold}"),
                             str(tmp_path / f"shards-{scoring}-{threshold}"), layout, threshold, scoring)
            tree.run()
            got_keys, got_values = tree_table(tree)
            np.testing.assert_array_equal(got_keys, keys)
            np.testing.assert_array_equal(got_values, values)
            if threshold == 0.5:
                assert len(np.unique(values)) < 0.8 * len(keys)  # the merge did merge


def test_a_chain_through_every_super_block_merges_at_the_top(tmp_path):
    """Eight blocks in a row, super-blocks of two: a chain of strong contacts (all of one score)
    runs through all of them, so only the top task can join it whole. The last block's side piece touches the first
    chain piece (mean 0.6: alone it would merge) and its own (mean 0.1): once the chain is one
    segment the two contacts pool to a mean of 0.225 and it stays apart, as in the serial merge."""
    grid, n = (1, 1, 8), 8
    (tmp_path / "edges").mkdir()
    frag = [(np.uint64(b) << np.uint64(32)) | np.uint64(1) for b in range(n)]
    side = [(np.uint64(b) << np.uint64(32)) | np.uint64(2) for b in range(n)]
    for b in range(n):
        rows = [(side[b], frag[b], 0.45 * 2, 2.0) if b < n - 1 else (frag[b], side[b], 0.1 * 6, 6.0)]
        if b > 0:  # the chain: block b's piece to block b-1's, mean affinity 0.9 (score 0.1)
            rows.append((frag[b - 1], frag[b], 0.9 * 4, 4.0))
        if b == n - 1:
            rows.append((frag[0], side[b], 0.6 * 2, 2.0))
        u, v, sums, counts = (np.array(c) for c in zip(*sorted(rows)))
        save_table(str(tmp_path / "edges"), b, nodes=np.array([frag[b], side[b]], np.uint64),
                   u=u.astype(np.uint64), v=v.astype(np.uint64), sums=sums, counts=counts,
                   hist_edge=np.zeros(0, np.uint32), hist_bin=np.zeros(0, np.uint8), hist_count=np.zeros(0, np.uint32),
                   link_u=np.zeros(0, np.uint64), link_v=np.zeros(0, np.uint64), grid=np.array(grid))
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), TreeLayout(grid, 2), 0.5)
    assert tree.layout.levels == 3
    tree.run()
    got_keys, got_values = tree_table(tree)
    np.testing.assert_array_equal(got_values, values)
    chain = values[np.searchsorted(keys, np.array(frag, np.uint64))]
    assert len(set(chain.tolist())) == 1  # one segment through all eight blocks
    assert not set(values[np.searchsorted(keys, np.array(side, np.uint64))].tolist()) & set(chain.tolist())
    assert len(np.unique(values)) == 1 + n  # the chain and each side piece alone
    top = tree._load("up", tree.layout.levels - 1, 0)
    # the chain went up in pieces, joined at the top (its first piece stays frozen below the top by
    # the last block's side piece)
    assert frag[0] in top["keys"] and len(set(top["keys"].tolist()) & set(np.array(frag, np.uint64).tolist())) > 2


def test_equal_scores_across_faces_merge_one_at_a_time(tmp_path):
    """A chain of eight fragments of one score, two per block in four blocks in a row, and weak
    contacts from each to the one after next (`test_segmentation_stages.strong_chain`): one edge at
    a time, each merge makes the contacts around it weak, and the chain ends in four pairs (taken
    whole, the tie joined all eight). The tree decides the last block's pair inside its
    super-block and the rest at the top, with the serial merge's result."""
    grid, n = (1, 1, 4), 8
    (tmp_path / "edges").mkdir()
    ids = [(np.uint64(a // 2) << np.uint64(32)) | np.uint64(a % 2 + 1) for a in range(n)]
    rows = [(a, a + 1, 0.9, 1.0) for a in range(n - 1)] + [(a, a + 2, 0.0, 10.0) for a in range(n - 2)]
    for b in range(grid[2]):
        mine = [(ids[a], ids[c], s_, c_) for a, c, s_, c_ in rows if c // 2 == b]  # stored in the upper block
        u, v, sums, counts = (np.array(c) for c in zip(*mine))
        save_table(str(tmp_path / "edges"), b, nodes=np.array(ids[2 * b:2 * b + 2], np.uint64),
                   u=u.astype(np.uint64), v=v.astype(np.uint64), sums=sums, counts=counts,
                   hist_edge=np.zeros(0, np.uint32), hist_bin=np.zeros(0, np.uint8), hist_count=np.zeros(0, np.uint32),
                   link_u=np.zeros(0, np.uint64), link_v=np.zeros(0, np.uint64), grid=np.array(grid))
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    assert values.tolist() == [ids[a - a % 2] for a in range(n)]  # four pairs
    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), TreeLayout(grid, 2), 0.5)
    assert tree.layout.levels == 2
    tree.run()
    got_keys, got_values = tree_table(tree)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_values, values)
    assert ids[6] not in tree._load("up", 1, 0)["nodes"].tolist() + tree._load("up", 1, 0)["keys"].tolist()


class Killed(Exception):
    pass


def _dies(ran: list, at):
    """A `submit` for MergeTree.run that runs its tasks in this process, recording each in `ran`, and raises Killed
    at the first task for which `at(task)` holds."""
    def submit(tree, todo):
        out = []
        for task in todo:
            if at(task):
                raise Killed
            out.append(tree.run_task(*task))
            ran.append(task)
        return out

    return submit


def test_a_killed_tree_resumes_after_its_output_moved(tmp_path):
    """The tree's record named its edges tables by full path: an output directory moved after a killed merge
    recomputed every finished task. It names them relative to the tree now."""
    import shutil

    rng = np.random.default_rng(5)
    grid = (4, 4, 4)
    here = tmp_path / "here"
    random_tables(here / "edges", grid, rng)
    layout = TreeLayout(grid, 2)

    ran: list = []
    tree = MergeTree(str(here / "edges"), str(here / "tree"), str(here / "shards"), layout, 0.5)
    with pytest.raises(Killed):
        tree.run(submit=_dies(ran, lambda task: task[:2] == ("up", 1)))
    assert len(ran) == layout.count(0)
    shutil.move(str(here), str(tmp_path / "there"))
    there = tmp_path / "there"
    moved = MergeTree(str(there / "edges"), str(there / "tree"), str(there / "shards"), layout, 0.5)
    resumed = moved.run()
    assert not [s for s in resumed if s["level"] == 0 and s["kind"] == "up"]  # level 0 was not computed again
    keys, values = lookup_table(load_tables(str(there / "edges")), 0.5)
    got_keys, got_values = tree_table(moved)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_values, values)


def test_a_killed_level_resumes(tmp_path):
    rng = np.random.default_rng(11)
    grid = (5, 5, 5)
    random_tables(tmp_path / "edges", grid, rng)
    layout = TreeLayout(grid, 2)
    fresh = MergeTree(str(tmp_path / "edges"), str(tmp_path / "fresh"), str(tmp_path / "fresh-shards"), layout, 0.5)
    fresh.run()

    ran: list[tuple[str, int, int]] = []

    def third_of_level_one(task) -> bool:
        if task[:2] == ("up", 1) and len([t for t in ran if t[:2] == ("up", 1)]) == 2:
            # killed while writing its third task: only a temporary file is left
            (tmp_path / "tree" / "up-1" / f"{task[2]}.999.tmp.npz").write_bytes(b"half a file")
            return True
        return False

    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), layout, 0.5)
    with pytest.raises(Killed):
        tree.run(submit=_dies(ran, third_of_level_one))
    assert layout.count(1) > 3 and all(tree.done("up", 0, i) for i in range(layout.count(0)))
    before = len(ran)
    resumed = tree.run()
    assert {(s["kind"], s["level"], s["index"]) for s in resumed}.isdisjoint(set(ran))  # done tasks did not run again
    assert len([s for s in resumed if (s["kind"], s["level"]) == ("up", 1)]) == layout.count(1) - 2
    assert before == layout.count(0) + 2
    for a, b in zip(tree_table(tree), tree_table(fresh)):
        np.testing.assert_array_equal(a, b)
    # a changed threshold is another tree: its old results are discarded, not mixed in
    other = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), layout, 0.3)
    other.run()
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.3)
    np.testing.assert_array_equal(tree_table(other)[1], values)
    # so are rewritten tables (an agglomerate stage run again)
    random_tables(tmp_path / "edges", grid, np.random.default_rng(12))
    again = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), layout, 0.3)
    rerun = again.run()
    assert len([s for s in rerun if (s["kind"], s["level"]) == ("up", 0)]) == layout.count(0)  # all again
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.3)
    np.testing.assert_array_equal(tree_table(again)[0], keys)
    np.testing.assert_array_equal(tree_table(again)[1], values)


@pytest.fixture(scope="module")
def affinities(tmp_path_factory):
    from connectome.io import create_volume
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("tree")
    vol = generate((32, 128, 128), (8.0, 8.0, 8.0), seed=5)
    rng = np.random.default_rng(1)
    labels = vol.labels
    affs = np.zeros((3, *labels.shape))
    for d in range(3):
        same = np.zeros(labels.shape, bool)
        sl = [slice(None)] * 3
        sl[d] = slice(1, None)
        prev = [slice(None)] * 3
        prev[d] = slice(None, -1)
        same[tuple(sl)] = (labels[tuple(sl)] == labels[tuple(prev)]) & (labels[tuple(sl)] != 0)
        affs[d] = same
    affs = np.clip(affs + rng.normal(0, 0.2, affs.shape), 0, 1)
    a = create_volume(str(root / "affs"), labels.shape, np.uint8, (16, 32, 32), (8, 8, 8), channels=3)
    a.write(a.box, np.rint(affs * 255).astype(np.uint8))
    return root


def _run(root, name, merge, **relabel):
    cfg = {"input": str(root / "affs"), "output": str(root / name),
           "blocks": {"shape": [16, 32, 32], "chunk_shape": [16, 32, 32]}, "cluster": {"n_workers": 2},
           "stages": [{"stage": "fragments", "inputs": {"affinities": str(root / "affs")}},
                      {"stage": "agglomerate", "inputs": {"affinities": str(root / "affs")}},
                      {"stage": "relabel", "params": {"threshold": 0.5, "merge": merge, "fanout": 2, **relabel}}]}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / f"{name}.yaml"), "--no-progress"]) == 0
    seg = open_volume(str(root / name / "segmentation"))
    return seg.read(seg.box)


def test_sharded_tree_table_gives_the_same_segmentation_byte_for_byte(affinities, capsys):
    """32 blocks in a 2 x 4 x 4 grid, super-blocks of 2^3 blocks (two levels): the tree's sharded
    table, the serial merge's, and the whole table applied to the whole volume agree voxel for voxel."""
    tree = _run(affinities, "tree", "tree")
    serial = _run(affinities, "serial", "serial")
    capsys.readouterr()
    fragments = open_volume(str(affinities / "tree" / "fragments"))
    keys, values = lookup_table(load_tables(str(affinities / "tree" / "tables" / "edges")), 0.5)
    whole = relabel(fragments.read(fragments.box), keys, values)
    assert tree.dtype == serial.dtype == whole.dtype
    assert tree.tobytes() == serial.tobytes() == whole.tobytes()
    assert 20 < len(np.unique(tree)) < 0.8 * len(keys)  # merges happened: the comparison is not trivial


def test_relabel_reads_only_the_shards_its_fragments_name(tmp_path):
    from connectome.affinity.relabel import relabel_block
    from connectome.io.lookup import save_shards

    keys = np.array([(1 << 32) | 1, (1 << 32) | 2, (2 << 32) | 1, (7 << 32) | 3], np.uint64)
    values = np.array([(1 << 32) | 1, (1 << 32) | 1, (2 << 32) | 1, (1 << 32) | 1], np.uint64)
    save_shards(str(tmp_path / "shards"), keys, values)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["1.npz", "2.npz", "7.npz"]
    (tmp_path / "shards" / "2.npz").unlink()  # a block that does not need block 2's shard never opens it
    block = np.array([[[0, keys[0], keys[1], keys[3]]]], np.uint64)
    assert relabel_block(str(tmp_path / "shards"), block).tolist() == [[[0, values[0], values[1], values[3]]]]
    assert relabel_block(str(tmp_path / "shards"), np.zeros((2, 2, 2), np.uint64)).sum() == 0  # background only
    with pytest.raises(RuntimeError, match="2.npz: a shard of the lookup table is missing"):
        relabel_block(str(tmp_path / "shards"), np.array([[[keys[2]]]], np.uint64))


@pytest.mark.parametrize("with_grid", [True, False])
def test_merge_step_takes_the_tree_only_where_the_tables_name_their_grid(tmp_path, with_grid):
    """Tables written before the merge tree lack their grid: the step merges them as one task, with
    the same table (a wrong grid would hide the edges that reach a super-block from above)."""
    from connectome.affinity.relabel import MergeStep

    grid = (3, 4, 2)
    random_tables(tmp_path / "edges", grid, np.random.default_rng(4))
    if not with_grid:
        for path in (tmp_path / "edges").glob("*.npz"):
            with np.load(path) as t:
                arrays = {k: t[k] for k in t.files if k != "grid"}
            save_table(str(tmp_path / "edges"), int(path.stem), **arrays)
    step = MergeStep(str(tmp_path / "edges"), 0.5, "mean", 0.5, "tree", fanout=2)
    summary = step.run()
    assert summary["merge"] == ("tree" if with_grid else "serial")
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    parts = [load_shard(step.path, b) for b in range(24)]
    got = np.concatenate([p[1] for p in parts])[np.argsort(np.concatenate([p[0] for p in parts]))]
    np.testing.assert_array_equal(got, values)
    assert summary["segments"] == len(np.unique(values)) and summary["fragments"] == len(keys)


def _temporaries(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def test_a_full_disk_leaves_no_temporary_file_in_the_tree(tmp_path, tmpfs):
    """The tree's fingerprint and its tasks' results were written aside without cleanup: a disk that filled left
    `fingerprint.json.PID.tmp` and `up-0/0.PID.tmp.npz` in the output for good."""
    mount_point, remount = tmpfs
    remount("size=4m")
    grid = (3, 3, 3)
    random_tables(tmp_path / "edges", grid, np.random.default_rng(8))
    tree = MergeTree(str(tmp_path / "edges"), str(mount_point / "tree"), str(mount_point / "shards"),
                     TreeLayout(grid, 2), 0.5)
    filler = mount_point / "filler"
    fill(filler)  # no room for the fingerprint
    with pytest.raises(OSError, match="No space left"):
        tree.run()
    assert _temporaries(mount_point) == []
    filler.unlink()

    def filling(tree, todo):  # the disk fills as the first task writes its result
        fill(filler)
        return [tree.run_task(*task) for task in todo]

    with pytest.raises(OSError, match="No space left"):
        tree.run(submit=filling)
    assert _temporaries(mount_point) == []
    filler.unlink()
    tree.run()  # room again: the merge resumes and finishes
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    got_keys, got_values = tree_table(tree)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_values, values)


def test_what_killed_writers_left_in_the_tree_goes(tmp_path):
    """Temporary files of writers that are gone (a worker killed mid-write, one before this run and one whose task
    was retried meanwhile) are removed; a live writer's stays."""
    import os
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    dead, alive = proc.pid, os.getppid()
    grid = (4, 4, 4)
    random_tables(tmp_path / "edges", grid, np.random.default_rng(9))
    layout = TreeLayout(grid, 2)
    tree_dir, shards = tmp_path / "tree", tmp_path / "shards"
    tree = MergeTree(str(tmp_path / "edges"), str(tree_dir), str(shards), layout, 0.5)
    ran: list = []
    with pytest.raises(Killed):
        tree.run(submit=_dies(ran, lambda task: task[:2] == ("up", 1)))
    gone = [tree_dir / f"fingerprint.json.{dead}.tmp", tree_dir / "up-0" / f"0.{dead}.tmp.npz",
            tree_dir / "rounds" / "rows" / "0" / "1" / f"bridge-0.npz.{dead}.tmp", shards / f".3.{dead}.tmp.npz"]
    stay = tree_dir / "up-0" / f"1.{alive}.tmp.npz"
    for path in [*gone, stay]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    retried = tree_dir / "up-1" / f"2.{dead}.tmp.npz"

    def leaves_one(tree, todo):  # a task of level 1 killed mid-write, then retried elsewhere
        if todo[0][:2] == ("up", 1):
            retried.parent.mkdir(exist_ok=True)
            retried.write_bytes(b"half a file")
        return [tree.run_task(*task) for task in todo]

    tree.run(submit=leaves_one)
    assert not retried.exists()
    assert not [p for p in gone if p.exists()] and stay.exists()
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    np.testing.assert_array_equal(tree_table(tree)[1], values)

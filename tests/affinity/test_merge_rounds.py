"""The rounds above the merge tree's last level equal the serial merge: random region graphs with
watershed links across faces, a chain through every super-block, a killed round resumed, and the
pipeline's segmentation byte for byte."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from test_merge_tree import _run, affinities, random_tables, tree_table  # noqa: F401 - affinities: a fixture

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.affinity.merge_rounds import PHASES
from connectome.affinity.merge_tree import MergeTree, TreeLayout


@pytest.mark.parametrize("seed", range(3))
def test_rounds_equal_serial_on_random_graphs(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    grid = tuple(int(g) for g in rng.integers(3, 7, 3))
    random_tables(tmp_path / "edges", grid, rng, levels=int(rng.choice([3, 8, 256])), link_rate=0.2)
    layout = TreeLayout(grid, 2)  # type: ignore[arg-type]
    assert layout.levels == 3
    # an orthogonal array over scoring x threshold x top level: every pair of settings runs once
    for scoring, threshold, top in (("mean", 0.3, 0), ("mean", 0.7, 1), ("quantile", 0.3, 1), ("quantile", 0.7, 0)):
        tables = load_tables(str(tmp_path / "edges"), histograms=scoring == "quantile")
        keys, values = lookup_table(tables, threshold, scoring, order="strict")
        name = f"{scoring}-{threshold}-{top}"
        tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / f"tree-{name}"),
                         str(tmp_path / f"shards-{name}"), layout, threshold, scoring, top_level=top)
        summaries = tree.run()
        assert {s["kind"] for s in summaries} >= set(PHASES)
        assert max(s["level"] for s in summaries if s["kind"] == "up") == top  # no task above it
        got_keys, got_values = tree_table(tree)
        np.testing.assert_array_equal(got_keys, keys)
        np.testing.assert_array_equal(got_values, values)
        assert tree.totals()["segments"] == len(np.unique(values))
        assert len(np.unique(values)) < 0.9 * len(keys)  # the merge did merge


def test_a_chain_through_every_shard_merges(tmp_path):
    """The chain of `test_a_chain_through_every_super_block_merges_at_the_top` with rounds above
    level 0: no task sees the chain whole, the rounds join it across four shards."""
    from test_merge_tree import test_a_chain_through_every_super_block_merges_at_the_top as chain

    chain(tmp_path)  # writes the tables and checks the full tree
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.5)
    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "rounds"), str(tmp_path / "rounds-shards"),
                     TreeLayout((1, 1, 8), 2), 0.5, top_level=0)
    summaries = tree.run()
    np.testing.assert_array_equal(tree_table(tree)[1], values)
    assert max(s["level"] for s in summaries if s["kind"] == "propose") >= 1  # it took rounds, not one task
    assert len(np.unique(values)) == 9
    # a round's final names are resolved only where it did something; the other shards' are read from the next
    # round (every shard wrote its whole name table in every round before)
    resolved = {(s["level"], s["index"]) for s in summaries if s["kind"] == "resolve"}
    rounds = tree.rounds()
    assert rounds is not None
    last = max(s["level"] for s in summaries if s["kind"] == "propose")
    assert resolved == {(r, shard) for r in range(last) for shard in rounds.resolving(r)}
    assert len(resolved) < last * rounds.shards, (len(resolved), last, rounds.shards)


def test_a_killed_round_resumes(tmp_path):
    rng = np.random.default_rng(7)
    grid = (4, 4, 4)
    random_tables(tmp_path / "edges", grid, rng, link_rate=0.2)
    layout = TreeLayout(grid, 2)
    fresh = MergeTree(str(tmp_path / "edges"), str(tmp_path / "fresh"), str(tmp_path / "fresh-shards"), layout, 0.7,
                      top_level=0)
    fresh.run()

    class Killed(Exception):
        pass

    ran: list[tuple[str, int, int]] = []

    def dies_in_round_two(tree, todo):
        out = []
        for task in todo:
            if task[:2] == ("decide", 2) and len([t for t in ran if t[:2] == ("decide", 2)]) == 3:
                rounds = tree.rounds()
                # killed while writing: a message half written (a temporary file) and one whole
                target = os.path.join(rounds.work, "rename", "2", "0")
                os.makedirs(target, exist_ok=True)
                with open(os.path.join(target, f"d-{task[2]}.npz.999.tmp"), "wb") as f:
                    f.write(b"half a file")
                raise Killed
            out.append(tree.run_task(*task))
            ran.append(task)
        return out

    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), layout, 0.7,
                     top_level=0)
    with pytest.raises(Killed):
        tree.run(submit=dies_in_round_two)
    resumed = tree.run()
    again = {(s["kind"], s["level"], s["index"]) for s in resumed}
    assert again.isdisjoint(set(ran))  # no finished task ran twice
    busy = glob.glob(os.path.join(tree.rounds().work, "done", "2", "propose", "*.npz"))  # shards with work in round 2
    assert len([t for t in again if t[:2] == ("decide", 2)]) == len(busy) - 3
    for a, b in zip(tree_table(tree), tree_table(fresh)):
        np.testing.assert_array_equal(a, b)
    # what rounds pass between their phases is deleted once they are done: disk use does not grow with them
    work = tree.rounds().work
    for kind in ("rows", "pooled", "propose", "offer", "adj", "rename"):
        assert not glob.glob(os.path.join(work, kind, "*", "*", "*")), kind
    assert glob.glob(os.path.join(work, "local", "*", "*.npz")) and glob.glob(os.path.join(work, "done", "*"))


def test_rounds_give_the_pipeline_the_same_segmentation(affinities, capsys):  # noqa: F811 - the fixture
    """The pipeline of `test_sharded_tree_table_gives_the_same_segmentation_byte_for_byte` with one
    tree level and rounds above it."""
    rounds = _run(affinities, "rounds", "tree", tree_levels=1)
    serial = _run(affinities, "serial-r", "serial")
    capsys.readouterr()
    assert rounds.tobytes() == serial.tobytes()
    assert os.path.isdir(str(affinities / "rounds" / "tables"))
    assert glob.glob(str(affinities / "rounds" / "tables" / "*.tree" / "rounds" / "done"))


def test_a_phase_over_many_shards_is_a_few_tasks_on_the_cluster(tmp_path, client):
    """On the cluster each level and phase runs as at most four tasks per worker thread (runs of
    neighbouring shards, one after another), not one task per shard; the table is still the serial
    merge's."""
    from distributed import get_task_stream

    from connectome.affinity.merge_tree import submit_on_dask

    rng = np.random.default_rng(21)
    grid = (4, 4, 8)  # 16 level-0 super-blocks, the shards of the rounds
    random_tables(tmp_path / "edges", grid, rng, link_rate=0.2)
    keys, values = lookup_table(load_tables(str(tmp_path / "edges")), 0.6)
    tree = MergeTree(str(tmp_path / "edges"), str(tmp_path / "tree"), str(tmp_path / "shards"), TreeLayout(grid, 2),
                     0.6, top_level=0)
    threads = sum(client.nthreads().values())
    asked: list[int] = []

    def submit(t, todo):
        asked.append(len(todo))
        return submit_on_dask(t, todo)

    with get_task_stream(client) as stream:
        summaries = tree.run(submit=submit)
    tasks = [s for s in stream.data if s["key"].startswith(("run_tasks", "run_task-"))]
    assert max(asked) > 4 * threads  # phases with more shards than tasks
    assert len(tasks) == sum(min(n, 4 * threads) for n in asked)
    assert len(summaries) == sum(asked)  # every shard's task ran, once
    got_keys, got_values = tree_table(tree)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_values, values)
    # a phase over many shards on few threads: runs of at most MAX_RUN, in order, every shard once
    from connectome.affinity.merge_tree import MAX_RUN, task_groups

    many = [("local", 0, i) for i in range(100 * MAX_RUN + 7)]
    groups = task_groups(many, threads=2)
    assert len(groups) == 101 and max(len(g) for g in groups) <= MAX_RUN
    assert [t for g in groups for t in g] == many

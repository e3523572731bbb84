"""Final segmentation: the global merge of every block's region graph into a fragment -> segment
lookup table sharded by block (a global step), then fragments relabelled block by block, each
block reading only its own shard.

The merge runs as a tree of partial merges on the cluster (`merge_tree`, the default) or as one
task (`merge: serial`, `agglomeration.lookup_table`); both give the same table."""

from __future__ import annotations

import os
import shutil

import numpy as np

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.affinity.merge_tree import GridMismatch, MergeTree, TreeLayout, on_one_grid, submit_on_dask
from connectome.engine.global_step import GlobalStep
from connectome.io.lookup import load_shard, save_shards, shards_path


def table_grid(edges_dir: str) -> tuple[int, int, int] | None:
    """The block grid the tables were written on (`grid` in each table); None for tables without
    it (written before the merge tree), which the merge then takes as one task."""
    try:
        with np.load(os.path.join(edges_dir, "0.npz")) as t:
            if "grid" in t.files:
                return tuple(int(g) for g in t["grid"])  # type: ignore[return-value]
    except FileNotFoundError:
        pass
    return None


class MergeStep(GlobalStep):
    """The global merge: every block's region graph -> one lookup table, sharded by block."""

    name = "merge"

    def __init__(self, edges_dir: str, threshold: float, scoring: str, quantile: float, method: str = "tree",
                 fanout: int = 4, tree_levels: int = 2):
        self.edges_dir = edges_dir
        self.threshold = threshold
        self.scoring = scoring
        self.quantile = quantile
        self.method = method
        self.fanout = fanout
        self.tree_levels = tree_levels  # not in the fingerprint: the table is the same whatever it is

    @property
    def params(self) -> dict:
        return {"threshold": self.threshold, "scoring": self.scoring, "quantile": self.quantile}

    @property
    def path(self) -> str:
        """The directory of the table's shards, one npz per block."""
        return shards_path(self.edges_dir, self.params)

    def fingerprint(self) -> dict:
        return {"step": self.name, "params": self.params, "tables": self.edges_dir, "lut": os.path.basename(self.path),
                "merge": self.method, "fanout": self.fanout}

    def tree(self) -> MergeTree | None:
        """The merge tree over the tables, or None when their block grid is unknown."""
        grid = table_grid(self.edges_dir)
        if grid is None:
            return None
        layout = TreeLayout(grid, self.fanout)
        return MergeTree(self.edges_dir, self.path[: -len(".shards")] + ".tree", self.path, layout, self.threshold,
                         self.scoring, self.quantile, top_level=self.tree_levels - 1)

    def run(self) -> dict:
        tree = self.tree() if self.method == "tree" and self.scoring == "mean" else None
        if tree is not None and on_one_grid(self.edges_dir, int(np.prod(tree.layout.grid))):
            try:
                tree.run(submit=_dask_submitter())
                return {**tree.totals(), "merge": "tree"}
            except GridMismatch:
                pass
        # one task: asked for, quantile scoring (merged one tie at a time: see merge_tree), tables
        # without their grid, or fragments made on another block grid than the tables (the tree
        # needs each fragment's id to name the block whose table lists it)
        tables = load_tables(self.edges_dir, histograms=self.scoring == "quantile")
        keys, values = lookup_table(tables, self.threshold, self.scoring, self.quantile)
        shutil.rmtree(self.path, ignore_errors=True)
        save_shards(self.path, keys, values)
        return {"fragments": int(keys.size), "segments": int(np.unique(values).size), "merge": "serial"}


def _dask_submitter():
    """`submit_on_dask` when this runs under a Dask client or worker, else None (run here)."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None
    return submit_on_dask if client.status == "running" else None


def relabel_block(shards_dir: str, fragments: np.ndarray) -> np.ndarray:
    """Segment ids of a block of fragments, reading only the shards of the blocks its fragments come from."""
    from connectome.io.lookup import relabel

    ids = np.unique(fragments[fragments != 0])
    if ids.size == 0:
        return np.zeros(fragments.shape, np.uint64)  # background only: no shard to read
    owners = np.unique(ids >> np.uint64(32)).tolist()
    try:
        parts = [load_shard(shards_dir, int(b)) for b in owners]
    except FileNotFoundError as e:
        raise RuntimeError(f"{e.filename}: a shard of the lookup table is missing; re-run the merge "
                           "(connectome run ... --overwrite)") from None
    if len(parts) == 1:
        keys, values = parts[0]
    else:
        keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
        values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint64)
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
    return relabel(fragments, keys, values)

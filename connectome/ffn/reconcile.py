"""Reconciliation of overlapping FFN blocks into global objects (a global step).

Each block segments its read box; neighbouring read boxes overlap. In each overlap, the objects of
the two blocks are matched by mutual best overlap: a matches b when b is a's largest overlap, a is
b's, and the overlap holds at least `threshold` of the smaller of the two within the overlap (and
at least `min_overlap` voxels). Matches are joined by union-find into final ids, numbered 1..n in
the order of their smallest block id. Conflicts (voxels two blocks label differently) are resolved
by ownership: a voxel takes the label of the block whose write box holds it.
"""

from __future__ import annotations

import glob
import itertools
import os

import numpy as np

from connectome.core.geometry import Box
from connectome.core.ids import globalise
from connectome.core.union_find import UnionFind
from connectome.engine.global_step import GlobalStep
from connectome.ffn.shells import read_shell
from connectome.io import open_volume
from connectome.io.lookup import lut_path, save_lut

OVERLAPS_FORMAT = 1


def mutual_best(a: np.ndarray, b: np.ndarray, threshold: float, min_overlap: int) -> np.ndarray:
    """(k, 2) matched id pairs of two label arrays of one region (0 = unlabelled, ignored)."""
    keep = (a != 0) & (b != 0)
    if not keep.any():
        return np.zeros((0, 2), np.uint64)
    size_a = dict(zip(*np.unique(a[a != 0], return_counts=True)))
    size_b = dict(zip(*np.unique(b[b != 0], return_counts=True)))
    pairs, count = np.unique(np.stack([a[keep], b[keep]]).astype(np.uint64), axis=1, return_counts=True)
    # best partner of each a (largest count, then smallest b) and of each b
    order_a = np.lexsort((pairs[1], -count, pairs[0]))
    first_a = order_a[np.r_[True, pairs[0][order_a][1:] != pairs[0][order_a][:-1]]]
    order_b = np.lexsort((pairs[0], -count, pairs[1]))
    first_b = order_b[np.r_[True, pairs[1][order_b][1:] != pairs[1][order_b][:-1]]]
    mutual = np.intersect1d(first_a, first_b)
    out = []
    for i in mutual:
        x, y, c = pairs[0, i], pairs[1, i], count[i]
        if c >= min_overlap and c >= threshold * min(size_a[x], size_b[y]):
            out.append((x, y))
    return np.array(out, np.uint64).reshape(-1, 2)


def lookup_table(ids: np.ndarray, matches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys (every id) and final ids 1..n (components numbered by their smallest id)."""
    uf = UnionFind()
    for a, b in matches.tolist():
        uf.union(a, b)
    keys = np.unique(ids)
    roots = np.array([uf.find(int(k)) for k in keys.tolist()], np.uint64)
    _, final = np.unique(roots, return_inverse=True)
    return keys, (final + 1).astype(np.uint64)


def block_labels(tables: dict, fragments, index: int, box: Box) -> np.ndarray:
    """Global labels block `index` gave the voxels of `box` (within its read box)."""
    t = tables[index]
    out = np.zeros(box.shape, np.uint64)
    read_shell(t, box, out, box)
    out[out != 0] |= np.uint64(index) << np.uint64(32)
    write = Box(tuple(t["write_box"][0]), tuple(t["write_box"][1]))
    inner = write.intersect(box)
    if not inner.empty:
        out[inner.relative_to(box)] = fragments.read(inner)
    return out


def overlap_pairs(tables: dict) -> list[tuple[int, int, Box]]:
    """Pairs of blocks (i < j) whose read boxes overlap, with the overlap (neighbours as far as the context reaches)."""
    where = {tuple(t["position"].tolist()): i for i, t in tables.items()}
    reach = np.ones(3, np.int64)
    for t in tables.values():
        (w0, ws), (r0, rs) = t["write_box"], t["read_box"]
        margin = np.maximum(w0 - r0, (r0 + rs) - (w0 + ws))
        reach = np.maximum(reach, -(-margin // np.maximum(ws, 1)))
    out = []
    for i, t in sorted(tables.items()):
        read_i = Box(tuple(t["read_box"][0]), tuple(t["read_box"][1]))
        for d in itertools.product(*(range(-int(r), int(r) + 1) for r in reach)):
            j = where.get(tuple(int(p) + q for p, q in zip(t["position"], d)))
            if j is None or j <= i:
                continue
            u = tables[j]
            common = read_i.intersect(Box(tuple(u["read_box"][0]), tuple(u["read_box"][1])))
            if not common.empty:
                out.append((i, j, common))
    return out


def load_tables(directory: str) -> dict[int, dict]:
    """Every block's overlap table, by block index."""
    out = {}
    for path in glob.glob(os.path.join(directory, "*.npz")):
        name = os.path.basename(path)[:-4]
        if name.isdigit():
            with np.load(path) as f:
                out[int(name)] = {k: f[k] for k in f.files}
    return out


def reconcile(directory: str, fragments_address: str, threshold: float, min_overlap: int):
    """(keys, values, summary): the lookup table from block ids to final ids."""
    tables = load_tables(directory)
    fragments = open_volume(fragments_address)
    matches = [np.zeros((0, 2), np.uint64)]
    pairs = overlap_pairs(tables)
    for i, j, common in pairs:
        matches.append(mutual_best(block_labels(tables, fragments, i, common),
                                   block_labels(tables, fragments, j, common), threshold, min_overlap))
    block_ids = [globalise(t["ids"], i) for i, t in tables.items()]
    ids = np.concatenate(block_ids) if block_ids else np.zeros(0, np.uint64)
    matches_all = np.concatenate(matches)
    keys, values = lookup_table(ids, matches_all)
    return keys, values, {"blocks": len(tables), "overlaps": len(pairs), "matches": int(len(matches_all)),
                          "objects": int(len(keys)), "segments": int(values.max(initial=0))}


class ReconcileStep(GlobalStep):
    """The global step: every block's overlap table -> one lookup table file beside the tables."""

    name = "ffn_reconcile"

    def __init__(self, tables_dir: str, fragments: str, threshold: float, min_overlap: int):
        self.tables_dir = tables_dir
        self.fragments = fragments
        self.threshold = threshold
        self.min_overlap = min_overlap

    @property
    def params(self) -> dict:
        return {"threshold": self.threshold, "min_overlap": self.min_overlap}

    @property
    def path(self) -> str:
        return lut_path(self.tables_dir, self.params, prefix="ffn-lut")

    def fingerprint(self) -> dict:
        return {"step": self.name, "params": self.params, "tables": self.tables_dir, "fragments": self.fragments,
                "lut": os.path.basename(self.path)}

    def run(self) -> dict:
        keys, values, summary = reconcile(self.tables_dir, self.fragments, self.threshold, self.min_overlap)
        save_lut(self.path, keys, values)
        return summary

"""Final segmentation: the global merge of every block's region graph into a fragment -> segment
lookup table (a global step), then fragments relabelled through it block by block."""

from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.engine.global_step import GlobalStep


def lut_path(edges_dir: str, params: dict) -> str:
    """Where the lookup table of these merge parameters lives (beside the edge tables)."""
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.normpath(os.path.join(edges_dir, os.pardir, f"lut-{tag}.npz"))


@functools.lru_cache(maxsize=2)
def _load_lut(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as t:
        return t["fragments"], t["segments"]


def load_lut(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The (fragments, segments) arrays of a lookup table, cached per worker while the file is unchanged."""
    return _load_lut(path, os.path.getmtime(path))


def relabel(fragments: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map fragment ids through the sorted lookup table; 0 stays 0."""
    out = np.zeros(fragments.shape, np.uint64)
    nz = fragments != 0
    ids = fragments[nz]
    idx = np.searchsorted(keys, ids)
    idx_clipped = np.minimum(idx, len(keys) - 1)
    if len(keys) == 0 or not np.array_equal(keys[idx_clipped], ids):
        raise RuntimeError("fragment ids missing from the lookup table; re-run the agglomerate stage")
    out[nz] = values[idx_clipped]
    return out


class MergeStep(GlobalStep):
    """The global merge: every block's region graph -> one lookup table file."""

    name = "merge"

    def __init__(self, edges_dir: str, threshold: float, scoring: str, quantile: float):
        self.edges_dir = edges_dir
        self.threshold = threshold
        self.scoring = scoring
        self.quantile = quantile

    @property
    def params(self) -> dict:
        return {"threshold": self.threshold, "scoring": self.scoring, "quantile": self.quantile}

    @property
    def path(self) -> str:
        return lut_path(self.edges_dir, self.params)

    def fingerprint(self) -> dict:
        return {"step": self.name, "params": self.params, "tables": self.edges_dir, "lut": os.path.basename(self.path)}

    def run(self) -> dict:
        tables = load_tables(self.edges_dir, histograms=self.scoring == "quantile")
        keys, values = lookup_table(tables, self.threshold, self.scoring, self.quantile)
        tmp = self.path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, fragments=keys, segments=values)
        os.replace(tmp, self.path)
        return {"fragments": int(keys.size), "segments": int(np.unique(values).size)}

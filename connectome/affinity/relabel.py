"""Final segmentation: the global merge of every block's region graph into a fragment -> segment
lookup table (a global step), then fragments relabelled through it block by block."""

from __future__ import annotations

import os

import numpy as np

from connectome.affinity.agglomeration import load_tables, lookup_table
from connectome.engine.global_step import GlobalStep
from connectome.io.lookup import lut_path, save_lut


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
        save_lut(self.path, keys, values)
        return {"fragments": int(keys.size), "segments": int(np.unique(values).size)}

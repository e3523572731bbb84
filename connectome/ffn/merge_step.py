"""The global step of FFN agglomeration: every block's decisions -> one lookup table from segment ids
to merged ids (each pair decided once, `agglomeration.chosen_decisions`; agreed pairs joined by
union-find, components numbered 1..n by their smallest id)."""

from __future__ import annotations

import os

import numpy as np

from connectome.engine.global_step import GlobalStep
from connectome.ffn.agglomeration import chosen_decisions
from connectome.ffn.reconcile import load_tables, lookup_table
from connectome.io.lookup import lut_path, save_lut

MERGES_FORMAT = 1


class FFNMergeStep(GlobalStep):
    name = "ffn_merge_step"

    def __init__(self, tables_dir: str, segments: str):
        self.tables_dir = tables_dir
        self.segments = segments

    @property
    def path(self) -> str:
        return lut_path(self.tables_dir, {"merges": MERGES_FORMAT}, prefix="ffn-merge-lut")

    def fingerprint(self) -> dict:
        return {"step": self.name, "tables": self.tables_dir, "segments": self.segments,
                "lut": os.path.basename(self.path)}

    def run(self) -> dict:
        tables = load_tables(self.tables_dir)
        ids = [t["ids"] for t in tables.values()]
        merges = chosen_decisions(tables)
        keys, values = lookup_table(np.concatenate(ids) if ids else np.zeros(0, np.uint64), merges)
        save_lut(self.path, keys, values)
        tested = sum(len(t["counts"]) for t in tables.values())
        return {"blocks": len(tables), "pairs_tested": tested, "merges": int(len(merges)),
                "segments_before": int(len(keys)), "segments": int(values.max(initial=0))}

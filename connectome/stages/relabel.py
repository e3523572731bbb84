"""Final segmentation: the global merge into a lookup table, then fragments relabelled block by block."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Literal

import numpy as np
from pydantic import Field

from connectome.agglomeration import load_tables, lookup_table
from connectome.errors import UserError
from connectome.geometry import Block
from connectome.stages.base import BlockStage, OutputSpec, StageParams
from connectome.volumes import Volume, VolumeMeta


class RelabelParams(StageParams):
    threshold: float = Field(0.5, ge=0, le=1, description="merge while the edge score is below this")
    scoring: Literal["mean", "quantile"] = Field("mean", description="score = 1 - mean or 1 - quantile affinity")
    quantile: float = Field(0.5, gt=0, lt=1, description="the quantile, for quantile scoring")


@functools.lru_cache(maxsize=2)
def _load_lut(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as t:
        return t["fragments"], t["segments"]


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


class RelabelStage(BlockStage):
    name = "relabel"
    Params = RelabelParams
    inputs = ("fragments",)
    outputs = ("segmentation",)
    reads_tables = ("edges",)

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"segmentation": OutputSpec(dtype="uint64")}

    @property
    def lut_path(self) -> str:
        tag = hashlib.sha256(json.dumps(self.params.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
        return os.path.join(self.table_dirs["edges"], os.pardir, f"lut-{tag}.npz")

    def prepare(self, work_dir: str) -> None:
        """Build the lookup table once from every block's region graph (skipped when present)."""
        path = os.path.normpath(self.lut_path)
        edges = self.table_dirs["edges"]
        if not os.path.isdir(edges):
            raise UserError(f"{edges}: no region-graph tables; run the agglomerate stage first")
        newest = max((e.stat().st_mtime for e in os.scandir(edges)), default=0.0)
        if os.path.exists(path) and os.path.getmtime(path) >= newest:
            return
        p = self.params
        tables = load_tables(edges, histograms=p.scoring == "quantile")
        keys, values = lookup_table(tables, p.threshold, p.scoring, p.quantile)
        tmp = path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, fragments=keys, segments=values)
        os.replace(tmp, path)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "lut": os.path.basename(self.lut_path)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        path = os.path.normpath(self.lut_path)
        keys, values = _load_lut(path, os.path.getmtime(path))
        frag = volumes["fragments"].read(block.write_box)
        seg = relabel(frag, keys, values)
        volumes["segmentation"].write(block.write_box, seg)
        return {"segments": int(np.unique(seg[seg != 0]).size)}

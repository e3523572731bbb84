"""Region-graph edges per block, including the edges that cross the block's lower faces, and the
watershed pointers across those faces that join pieces of one basin (`link_u`, `link_v`).

The edges come from `connectome.region_graph`; each block's table is an npz with `nodes`, `u`,
`v`, `sums`, `counts`, the links, and the affinity histograms stored sparsely (`hist_edge`,
`hist_bin`, `hist_count`: only non-zero bins), since most contacts are a few voxel pairs.
"""

from __future__ import annotations

import os

import numpy as np
from pydantic import Field

from connectome.geometry import Block
from connectome.region_graph import region_graph
from connectome.stages.base import BlockStage, StageParams
from connectome.stages.fragments import block_edges
from connectome.volumes import Volume
from connectome.watershed import face_links, pointers

TABLE_FORMAT = 2  # 2: sparse histograms


def save_table(directory: str, index: int, **arrays) -> None:
    """Write one block's table atomically (a reader never sees half a file)."""
    path = os.path.join(directory, f"{index}.npz")
    tmp = os.path.join(directory, f".{index}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class AgglomerateParams(StageParams):
    aff_low: float = Field(0.5 / 255, ge=0, lt=1, description="as the fragments stage's aff_low")
    aff_high: float = Field(0.99, gt=0, le=1, description="as the fragments stage's aff_high")


class AgglomerateStage(BlockStage):
    name = "agglomerate"
    Params = AgglomerateParams
    inputs = ("affinities", "fragments")
    outputs = ()
    tables = ("edges",)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "table_format": TABLE_FORMAT}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        w = block.write_box
        has_lower = tuple(o > 0 for o in w.offset)
        grown = type(w).from_corners(tuple(o - int(h) for o, h in zip(w.offset, has_lower)), w.end)
        fragments = volumes["fragments"].read(grown)
        affs = volumes["affinities"].read(w).astype(np.float64) / 255.0
        u, v, sums, counts, hist = region_graph(fragments, affs, has_lower)
        edges = block_edges(volumes["affinities"], grown)
        ptr = pointers(edges, self.params.aff_low)
        link_u, link_v = face_links(ptr, edges, fragments, has_lower, self.params.aff_high)
        start = tuple(int(h) for h in has_lower)
        nodes = np.unique(fragments[tuple(slice(s, None) for s in start)])
        nodes = nodes[nodes != 0]
        hist_edge = np.repeat(np.arange(len(u), dtype=np.uint32), np.diff(hist.indptr))
        save_table(self.table_dirs["edges"], block.index, nodes=nodes, u=u, v=v, sums=sums, counts=counts,
                   hist_edge=hist_edge, hist_bin=hist.indices.astype(np.uint8), hist_count=hist.data,
                   link_u=link_u, link_v=link_v)
        return {"nodes": int(nodes.size), "edges": int(u.size), "links": int(link_u.size)}

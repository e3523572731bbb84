"""Region-graph edges per block, including the edges that cross the block's lower faces, and the
watershed pointers across those faces that join pieces of one basin (`link_u`, `link_v`).

For every face-adjacent voxel pair (x - e_d, x) with x in the write box, the pair's affinity is
added to the edge between the two fragments. The pair is counted in the block holding x only,
so across all blocks every edge's affinity sum and contact count are exact.
"""

from __future__ import annotations

import os

import numpy as np

from connectome.agglomeration import HIST_BINS, affinity_bins
from connectome.geometry import Block
from pydantic import Field

from connectome.stages.base import BlockStage, StageParams
from connectome.stages.fragments import block_edges
from connectome.watershed import face_links, pointers
from connectome.volumes import Volume


def region_graph(fragments: np.ndarray, affs: np.ndarray, has_lower: tuple[bool, bool, bool]):
    """Edges of a write box.

    `fragments` covers the write box plus one voxel layer below each face where `has_lower`;
    `affs` (3, z, y, x) covers the write box. Returns sorted unique (u, v) with u < v, the sum of
    their affinities, the number of voxel pairs and a histogram of the affinities per edge.
    """
    start = tuple(int(h) for h in has_lower)
    inner = tuple(slice(s, None) for s in start)
    f_in = fragments[inner]
    us, vs, ws = [], [], []
    for d in range(3):
        lower = list(inner)
        lower[d] = slice(0, fragments.shape[d] - 1)  # one voxel below each voxel of `upper`
        upper = [slice(None)] * 3
        if not start[d]:
            upper[d] = slice(1, None)  # no voxel below the volume's face
        a = f_in[tuple(upper)]
        b = fragments[tuple(lower)]
        w = affs[d][tuple(upper)]
        keep = (a != b) & (a != 0) & (b != 0)
        us.append(np.minimum(a[keep], b[keep]))
        vs.append(np.maximum(a[keep], b[keep]))
        ws.append(w[keep].astype(np.float64))
    u, v, w = np.concatenate(us), np.concatenate(vs), np.concatenate(ws)
    if u.size == 0:
        empty = np.zeros(0, np.uint64)
        return empty, empty, np.zeros(0), np.zeros(0, np.int64), np.zeros((0, HIST_BINS), np.uint32)
    ids, local = np.unique(np.concatenate([u, v]), return_inverse=True)  # < 2^32 ids in one block
    local = local.astype(np.uint64)
    key = (local[: len(u)] << np.uint64(32)) | local[len(u):]
    keys, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.bincount(inverse, weights=w, minlength=len(keys))
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.int64)
    hist = np.bincount(inverse * HIST_BINS + affinity_bins(w), minlength=len(keys) * HIST_BINS)
    pu, pv = ids[(keys >> np.uint64(32)).astype(np.int64)], ids[(keys & np.uint64(0xFFFFFFFF)).astype(np.int64)]
    return pu, pv, sums, counts, hist.reshape(-1, HIST_BINS).astype(np.uint32)


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
        save_table(self.table_dirs["edges"], block.index, nodes=nodes, u=u, v=v, sums=sums, counts=counts,
                   hist=hist, link_u=link_u, link_v=link_v)
        return {"nodes": int(nodes.size), "edges": int(u.size), "links": int(link_u.size)}

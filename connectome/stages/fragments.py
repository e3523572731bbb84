"""Supervoxels per block: the steepest-ascent watershed (connectome.watershed), ids `(block << 32) | local`.

The basins of a block are the global basins cut at its faces; the agglomerate stage records the
pointers that cross faces, and the global merge joins those pieces first, so the fragments do not
depend on the block layout.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from connectome.geometry import Block
from connectome.stages.base import BlockStage, OutputSpec, StageParams
from connectome.volumes import Volume, VolumeMeta
from connectome.watershed import affinity_box, basins, edge_values, pointers

LOCAL_BITS = 32


class FragmentsParams(StageParams):
    aff_low: float = Field(0.5 / 255, ge=0, lt=1, description="voxels whose best affinity is below this stay 0")
    aff_high: float = Field(0.99, gt=0, le=1, description="edges at or above this always join their voxels")


def globalise(local: np.ndarray, block_index: int) -> np.ndarray:
    """Local ids 1..n of block `block_index` as unique uint64 ids; 0 stays 0."""
    out = local.astype(np.uint64, copy=True)
    out[out != 0] |= np.uint64(block_index) << np.uint64(LOCAL_BITS)
    return out


def block_edges(affinities: Volume, region) -> np.ndarray:
    """The six edge affinities of each voxel in `region`, from the stored uint8 affinities."""
    box = affinity_box(region).intersect(affinities.box)
    return edge_values(affinities.read(box).astype(np.float32) / 255.0, region, affinities.box)


class FragmentsStage(BlockStage):
    name = "fragments"
    Params = FragmentsParams
    inputs = ("affinities",)
    outputs = ("fragments",)
    input_dtypes = {"affinities": ("uint8",)}

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"fragments": OutputSpec(dtype="uint64")}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        edges = block_edges(volumes["affinities"], block.write_box)
        local = basins(pointers(edges, self.params.aff_low), edges, self.params.aff_high)
        volumes["fragments"].write(block.write_box, globalise(local, block.index))
        return {"fragments": int(local.max(initial=0))}

"""Supervoxels per block: waterz's watershed over the affinity graph, ids `(block << 32) | local`."""

from __future__ import annotations

import contextlib
import os

import fastremap
import numpy as np
from pydantic import Field

from connectome.geometry import Block
from connectome.stages.base import BlockStage, OutputSpec, StageParams, crop
from connectome.volumes import Volume, VolumeMeta

LOCAL_BITS = 32


class FragmentsParams(StageParams):
    context: tuple[int, int, int] = Field((8, 8, 8), description="voxels the watershed sees beyond the block")
    aff_low: float = Field(0.0001, ge=0, lt=1, description="affinities below this never join voxels")
    aff_high: float = Field(0.9999, gt=0, le=1, description="affinities above this always join voxels")


@contextlib.contextmanager
def silenced_stdout():
    """waterz reports progress on the C++ stdout; keep worker logs and terminals clean."""
    fd = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def watershed_fragments(affs: np.ndarray, aff_low: float = 0.0001, aff_high: float = 0.9999) -> np.ndarray:
    """Fragments 1..n (uint64, 0 = background) of float affinities (3, z, y, x) in [0, 1]."""
    import waterz

    affs = np.ascontiguousarray(affs, dtype=np.float32)
    with silenced_stdout():
        seg = next(iter(waterz.agglomerate(affs, [0.0], aff_threshold_low=aff_low, aff_threshold_high=aff_high)))
    seg = np.ascontiguousarray(seg, dtype=np.uint64)
    fastremap.renumber(seg, in_place=True, preserve_zero=True)
    return seg


def globalise(local: np.ndarray, block_index: int) -> np.ndarray:
    """Local ids 1..n of block `block_index` as unique uint64 ids; 0 stays 0."""
    out = local.astype(np.uint64, copy=True)
    out[out != 0] |= np.uint64(block_index) << np.uint64(LOCAL_BITS)
    return out


class FragmentsStage(BlockStage):
    name = "fragments"
    Params = FragmentsParams
    inputs = ("affinities",)
    outputs = ("fragments",)
    input_dtypes = {"affinities": ("uint8",)}

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"fragments": OutputSpec(dtype="uint64")}

    def context(self) -> tuple[int, int, int]:
        return tuple(self.params.context)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        """Watershed the read box (so basins near the faces match the whole volume's), keep the write box."""
        affs = volumes["affinities"].read(block.read_box).astype(np.float32) / 255.0
        seg = watershed_fragments(affs, self.params.aff_low, self.params.aff_high)
        local = np.ascontiguousarray(crop(seg, block))
        fastremap.renumber(local, in_place=True, preserve_zero=True)
        volumes["fragments"].write(block.write_box, globalise(local, block.index))
        return {"fragments": int(local.max(initial=0))}

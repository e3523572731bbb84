"""Blockwise affinity prediction with a U-Net that stays resident on each worker.

Each block reads its write box grown by the model's context (mirrored past the volume's faces)
and padded to a multiple of the model's downsampling factor, so a block's output equals the
whole-volume prediction: the stage is seam-free.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import Field

from connectome.geometry import Block, Box, Vec
from connectome.stages.base import BlockStage, OutputSpec, StageParams
from connectome.volumes import Volume, VolumeMeta
from connectome.volumes.reflected import read_reflected


class AffinitiesParams(StageParams):
    model: str = Field("synthetic", description="shipped model name or path to a .pt file")
    device: str | None = Field(None, description="cpu, cuda, cuda:N; default: the worker's GPU if any")


class AffinitiesStage(BlockStage):
    name = "affinities"
    Params = AffinitiesParams
    inputs = ("raw",)
    outputs = ("affinities",)
    input_dtypes = {"raw": ("uint8",)}
    resources = {"GPU": 1}  # asked for only where the cluster has GPU workers

    @cached_property
    def model_info(self):
        from connectome.models.registry import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.model))

    def context(self) -> Vec:
        return tuple(int(c) for c in self.model_info.context)

    def block_multiple(self) -> Vec:
        return tuple(int(d) for d in self.model_info.divisor)

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"affinities": OutputSpec(dtype="uint8", channels=3)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        from connectome.models import predict_affinities
        from workers.model_cache import get_model

        model = get_model(self.params.model, self.params.device)
        divisor = model.info.divisor
        context = model.info.context
        write = block.write_box
        padded_shape = tuple(-(-s // d) * d for s, d in zip(write.shape, divisor))
        virtual = Box(write.offset, padded_shape).grow(context)
        raw = read_reflected(volumes["raw"], virtual)
        affs = predict_affinities(model, raw)
        inner = tuple(slice(c, c + s) for c, s in zip(context, write.shape))
        out = np.rint(affs[(slice(0, 3), *inner)] * 255.0).astype(np.uint8)
        volumes["affinities"].write(write, out)
        return {}

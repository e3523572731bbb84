"""Copy a volume block by block (the work of `connectome ingest`)."""

from __future__ import annotations

from connectome.geometry import Block
from connectome.stages.base import BlockStage, OutputSpec, StageParams
from connectome.volumes import Volume, VolumeMeta


class CopyParams(StageParams):
    dtype: str | None = None  # None keeps the source dtype


class CopyStage(BlockStage):
    name = "copy"
    Params = CopyParams
    inputs = ("raw",)
    outputs = ("copy",)

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        src = inputs["raw"]
        return {"copy": OutputSpec(dtype=self.params.dtype or src.dtype.name, channels=src.channels)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        data = volumes["raw"].read(block.write_box)
        volumes["copy"].write(block.write_box, data.astype(volumes["copy"].dtype, copy=False))
        return {}

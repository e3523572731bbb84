"""Image stages: `copy` (the work of `connectome ingest`) and `normalize` (per-section local contrast)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from connectome.core.errors import UserError
from connectome.core.geometry import Block, Context
from connectome.engine.registry import register
from connectome.engine.stage import IMAGE, BlockStage, Input, Output, OutputSpec, StageParams, crop
from connectome.image.normalize import TRUNCATE, normalize_sections
from connectome.image.rescale import needs_rescale, rescale
from connectome.io import Volume, VolumeMeta


class CopyParams(StageParams):
    dtype: str | None = None  # None keeps the source dtype
    # source [low, high] mapped linearly onto the full range of an integer `dtype`, clipped outside;
    # required when `dtype` cannot hold every source value (connectome ingest fills it in)
    rescale: tuple[float, float] | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return np.dtype(value).name
        except TypeError:
            raise ValueError(f"unknown dtype {value!r}; expected e.g. uint8, uint16, float32") from None

    @field_validator("rescale")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (np.isfinite(value).all() and value[0] < value[1]):
            raise ValueError(f"expected finite [low, high] with low < high, found {list(value)}")
        return value


@register
class CopyStage(BlockStage):
    name = "copy"
    reads_only_read_box = True
    Params = CopyParams
    inputs = (Input("raw"),)
    outputs = (Output("copy"),)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        """Refuse a narrowing conversion without a rescale range (it would wrap values)."""
        super().check_inputs(inputs)
        src, dst = inputs["raw"].dtype, self.params.dtype or inputs["raw"].dtype.name
        if self.params.rescale is None and needs_rescale(src, dst):
            raise UserError(
                f"stage 'copy': converting {src.name} to {dst} would wrap values; give params.rescale [low, high] "
                f"(`connectome ingest --dtype {dst}` takes it from percentiles or --range)"
            )
        if self.params.rescale is not None and np.dtype(dst).kind not in "iu":
            raise UserError(f"stage 'copy': params.rescale needs an integer dtype, found {dst}")

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        src = inputs["raw"]
        return {"copy": OutputSpec(dtype=self.params.dtype or src.dtype.name, channels=src.channels)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        data = volumes["raw"].read(block.write_box)
        out = volumes["copy"]
        if self.params.rescale is not None:
            low, high = self.params.rescale
            data = rescale(data, low, high, out.dtype)
        volumes["copy"].write(block.write_box, data.astype(out.dtype, copy=False))
        return {}


class NormalizeParams(StageParams):
    sigma: float = Field(24.0, gt=0, description="xy Gaussian sigma in voxels")
    contrast: float = Field(40.0, gt=0, description="output grey levels per local standard deviation")


@register
class NormalizeStage(BlockStage):
    name = "normalize"
    reads_only_read_box = True
    Params = NormalizeParams
    inputs = (Input("raw", dtypes=("uint8", "uint16", "float32"), channels=1, description=IMAGE),)
    outputs = (Output("normalized", OutputSpec(dtype="uint8")),)

    def context(self) -> Context:
        r = int(TRUNCATE * self.params.sigma + 0.5)
        return Context.of((0, r, r))

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        raw = volumes["raw"].read(block.read_box)
        out = normalize_sections(raw, self.params.sigma, self.params.contrast)
        volumes["normalized"].write(block.write_box, crop(out, block))
        return {}

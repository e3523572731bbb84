"""Per-section local contrast normalisation: removes brightness drift between and within sections.

Each section is normalised by a Gaussian-weighted local mean and standard deviation in (y, x).
The filter's support is finite, so with a context of that radius a block's output equals the
whole-volume computation exactly: the stage is seam-free by construction.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy.ndimage import gaussian_filter

from connectome.geometry import Block, Vec
from connectome.stages.base import BlockStage, OutputSpec, StageParams, crop
from connectome.volumes import Volume, VolumeMeta

TRUNCATE = 3.0


class NormalizeParams(StageParams):
    sigma: float = Field(24.0, gt=0, description="xy Gaussian sigma in voxels")
    contrast: float = Field(40.0, gt=0, description="output grey levels per local standard deviation")


def normalize_sections(raw: np.ndarray, sigma: float, contrast: float) -> np.ndarray:
    """Normalise each (y, x) section of `raw` by its local mean and deviation; returns uint8."""
    x = raw.astype(np.float32)
    s = (0.0, sigma, sigma)
    mean = gaussian_filter(x, s, truncate=TRUNCATE, mode="reflect")
    var = gaussian_filter(x * x, s, truncate=TRUNCATE, mode="reflect") - mean * mean
    std = np.sqrt(np.maximum(var, 1.0))
    out = (x - mean) / std * contrast + 128.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class NormalizeStage(BlockStage):
    name = "normalize"
    Params = NormalizeParams
    inputs = ("raw",)
    outputs = ("normalized",)
    input_dtypes = {"raw": ("uint8", "uint16", "float32")}

    def context(self) -> Vec:
        r = int(TRUNCATE * self.params.sigma + 0.5)
        return (0, r, r)

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"normalized": OutputSpec(dtype="uint8")}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        raw = volumes["raw"].read(block.read_box)
        out = normalize_sections(raw, self.params.sigma, self.params.contrast)
        volumes["normalized"].write(block.write_box, crop(out, block))
        return {}

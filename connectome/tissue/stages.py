"""The `tissue` stage: the tissue network per section, argmax class codes, and the exclusion mask.

Each block reads its write box padded in y and x to the model's divisor and grown by its receptive
field (`context`), mirrored past the volume's faces; every layer is a zero-padded convolution and
inference runs in float64 (unless `precision: float32`), so a block's output equals the whole-volume
output exactly (seam-free). Each section's grey levels (predict.py: a dim section is read like a normal
one) come from a global step over whole sections that runs before the blocks, and a block reads
predict.HALO more pixels in y and x to find alignment margins (labelled defect) and fill them.
"""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from typing import Literal

from pydantic import Field, field_validator

from connectome.core.geometry import Block, Context, Vec, vec3
from connectome.engine.registry import register
from connectome.engine.stage import IMAGE, BlockStage, Input, Output, OutputSpec, StageParams
from connectome.io import Volume, VolumeMeta
from connectome.io.reflected import read_reflected
from connectome.models.context import unet_context
from connectome.models.voxel_size import check_voxel_size
from connectome.tissue.classes import DEFAULT_EXCLUDE, NAMES
from connectome.tissue.levels import SectionStatsStep


class TissueParams(StageParams):
    model: str = Field("tissue", description="shipped tissue model name or path to a .pt file")
    exclude: tuple[str, ...] = Field(
        DEFAULT_EXCLUDE, description="classes marked 1 in tissue_mask (left out of segmentation); "
                                     "see classes.DEFAULT_EXCLUDE for why these by default")
    allow_voxel_mismatch: bool = Field(False, description="run the model on data of another in-plane voxel size")
    guards = ("allow_voxel_mismatch",)
    precision: Literal["float64", "float32"] = Field(
        "float64", description="float64: blockwise == one block exactly; float32: about 5x faster on a CPU, a "
                               "few voxels at near-ties may differ between block layouts")
    normalize_sections: bool | None = Field(
        None, description="map each section's 0.5 and 99.5 percentiles (exact zeros left out) to the grey levels "
                          "the model trained on (a blank frame is left as it is), so a dim or low-contrast section "
                          "is not read as a blank one (defect); false: raw / 255 as is; default: as the model was "
                          "trained (its json's normalisation: the shipped `tissue` since 2026-12-06 maps them, a model "
                          "trained before does not)")

    @field_validator("exclude")
    @classmethod
    def _known_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in NAMES]
        if unknown:
            raise ValueError(f"unknown tissue class(es) {', '.join(map(repr, unknown))}; expected any of "
                             f"{', '.join(NAMES)}")
        return tuple(value)


@register
class TissueStage(BlockStage[TissueParams]):
    name = "tissue"
    Params = TissueParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),)
    outputs = (Output("tissue", OutputSpec(dtype="uint8")), Output("tissue_mask", OutputSpec(dtype="uint8")))

    @cached_property
    def model_info(self):
        from connectome.tissue.model import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.model))

    def context(self) -> Context:
        return unet_context(self.model_info.context, self.model_info.divisor)

    def block_multiple(self) -> Vec:
        return vec3(self.model_info.divisor)

    def block_multiple_reason(self) -> str:
        return f"the downsampling factor of model {self.params.model}"

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        # a 2-d model: only the in-plane voxel size matters (the z spacing of sections does not)
        check_voxel_size(self.params.model, self.model_info.voxel_size[1:], self.input_addresses["raw"],
                         inputs["raw"].voxel_size[1:], self.params.allow_voxel_mismatch)

    @property
    def levels_path(self) -> str:
        out = os.path.abspath(self.output_addresses["tissue"])
        return os.path.join(os.path.dirname(out), "tables", f"section-stats-{os.path.basename(out)}.npz")

    @property
    def normalize(self) -> bool:
        """Whether sections are mapped: as the params say, else as the model was trained."""
        given = self.params.normalize_sections
        return self.model_info.sections_mapped if given is None else given

    def global_step(self) -> SectionStatsStep | None:
        if not self.normalize:
            return None
        return SectionStatsStep(self.input_addresses["raw"], self.levels_path)

    def weight_files(self) -> dict[str, tuple[str, str]]:
        return {"weights": ("model", self.model_info.path)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        import numpy as np

        from connectome.tissue.model import load_model
        from connectome.tissue.predict import HALO, classify, exclusion_mask

        net, info = load_model(self.params.model, self.params.precision)
        levels = None
        if self.normalize:
            z = slice(block.read_box.offset[0], block.read_box.end[0])
            levels = _levels(self.levels_path, os.path.getmtime(self.levels_path))[z]
        box = block.read_box.grow((0, HALO, HALO))
        shape = volumes["raw"].shape
        faces = [(-box.offset[a], shape[a] - 1 - box.offset[a]) for a in (1, 2)]
        codes = classify(net, info, read_reflected(volumes["raw"], box), levels, faces)
        inner = block.write_box.relative_to(block.read_box)
        codes = codes[inner]
        mask = exclusion_mask(codes, [info.classes.index(n) for n in self.params.exclude])
        volumes["tissue"].write(block.write_box, codes)
        volumes["tissue_mask"].write(block.write_box, mask)
        counts = np.bincount(codes.ravel(), minlength=len(info.classes))
        return {"masked_voxels": int(mask.sum()), "class_voxels": counts.tolist()}


@lru_cache(maxsize=2)
def _levels(path: str, mtime: float):
    import numpy as np

    with np.load(path) as f:
        return f["stats"]

"""Pyramid stages: `image_pyramid` (mean) for the raw image and `label_pyramid` (most frequent label)
for a segmentation, adding scales 1..n to the volume's own OME-Zarr group (or precomputed layer's
info); `label_pyramid` also marks a zarr segmentation as an OME-Zarr label image of the raw image, so
napari and Neuroglancer open both."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from connectome.core.address import parse_address
from connectome.core.errors import UserError
from connectome.core.geometry import Block, Vec
from connectome.engine.global_step import GlobalStep
from connectome.engine.registry import register
from connectome.engine.stage import BlockStage, Input, StageParams
from connectome.export.pyramid import (
    MIN_CHUNK,
    MIN_EXTENT,
    create_levels,
    create_precomputed_levels,
    cumulative,
    downsample,
    level_box,
    level_factors,
    mark_labels,
    write_level,
)
from connectome.io import Volume, VolumeMeta


class PyramidParams(StageParams):
    guards = ("in_place",)

    levels: int | None = Field(None, ge=1, le=12, description="levels below scale 0 (default: while chunks "
                                                              "stay at least 8 voxels and the volume 32 wide)")
    in_place: bool = Field(False, description="add the levels to a volume outside the run's output directory "
                                              "(a source volume; refused otherwise)")


class ScalesStep(GlobalStep):
    """Create the levels' arrays and list them in the multiscales metadata (and mark a label image)."""

    name = "pyramid_scales"

    def __init__(self, address: str, factors: list[Vec], image: str | None, labels: bool):
        self.address, self.factors, self.image, self.labels = address, factors, image, labels

    def fingerprint(self) -> dict:
        return {"step": self.name, "volume": self.address, "factors": [list(f) for f in self.factors],
                "labels": self.labels}

    def run(self) -> dict:
        if parse_address(self.address).kind == "precomputed":
            create_precomputed_levels(self.address, self.factors)
            return {"levels": len(self.factors)}
        create_levels(self.address, self.factors)
        if self.labels:
            mark_labels(self.address, self.image)
        return {"levels": len(self.factors)}


class ImageScalesStep(ScalesStep):
    name = "image_pyramid_scales"


class LabelScalesStep(ScalesStep):
    name = "label_pyramid_scales"


def check_precomputed_offset(address: str, offset: Vec, total: Vec, stage: str) -> None:
    """Refuse a precomputed volume whose voxel_offset is not a multiple of the pyramid's coarsest factor: there, a
    coarse voxel k covers the fine voxels k * factor onwards counted from 0, not from the offset, so the levels the
    blocks write would lie a fine voxel off (cloud-volume reads them so)."""
    off = [a for a, (o, t) in zip("zyx", zip(offset, total)) if o % t]
    if off:
        raise UserError(f"stage {stage!r}: {address}: its voxel_offset (z y x) {list(offset)} is not a multiple of "
                        f"the coarsest level's downsampling {list(total)} in {', '.join(off)}: precomputed counts a "
                        "coarse voxel's fine voxels from 0, so its levels would lie a voxel off; write the volume at "
                        "an offset that is such a multiple (a section range starting there), or to OME-Zarr")


class _PyramidStage(BlockStage[PyramidParams]):
    Params = PyramidParams
    volume: ClassVar[str]
    labels: ClassVar[bool]
    factors: list[Vec] | None = None

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        address = self.input_addresses[self.volume]
        parsed = parse_address(address)
        if parsed.kind not in ("zarr", "precomputed") or parsed.sections is not None:
            raise UserError(f"stage {self.name!r}: {address}: pyramids are written into an OME-Zarr group or a "
                            f"precomputed layer; found a {parsed.kind} volume{' range' if parsed.sections else ''}")
        meta = inputs[self.volume]
        if meta.channels is not None:
            raise UserError(f"stage {self.name!r}: {address} has {meta.channels} channels, expected a 3-d volume")
        self.factors = level_factors(meta.voxel_size, meta.chunk_shape, meta.shape, self.params.levels)
        if parsed.kind == "precomputed" and self.factors:
            check_precomputed_offset(address, meta.offset, cumulative(self.factors)[-1], self.name)
        if not self.factors and max(meta.shape[1:]) >= 2 * MIN_EXTENT:  # wide enough, but its chunks are too thin
            raise UserError(f"stage {self.name!r}: {address}: its chunks {list(meta.chunk_shape)} allow no level of 2x "
                            f"downsampling (chunks stay whole and at least {MIN_CHUNK} voxels an axis); write it with "
                            "larger chunks (`--chunk-shape`)")
        self.chunk_shape = meta.chunk_shape

    def block_multiple(self) -> Vec:
        """Blocks of whole scale-0 chunks, so that each covers whole chunks at every level."""
        return getattr(self, "chunk_shape", (1, 1, 1))

    def block_multiple_reason(self) -> str:
        return f"the chunk shape of {self.input_addresses[self.volume]}: each block adds whole chunks to every level"

    def _factors(self) -> list[Vec]:
        if self.factors is None:
            raise RuntimeError(f"stage {self.name!r}: levels unset (the plan's check_inputs sets them)")
        return self.factors

    def fingerprint_params(self) -> dict:
        """Without `in_place` (added on 2026-12-05; a guard, it changes no output), so earlier runs resume."""
        params = super().fingerprint_params()
        params.pop("in_place", None)
        return params

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "factors": [list(f) for f in self._factors()]}

    def open_volumes(self) -> dict[str, Volume]:
        from connectome.io import open_volume

        return {self.volume: open_volume(self.input_addresses[self.volume])}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        factors = self._factors()
        data = volumes[self.volume].read(block.write_box)
        address = self.input_addresses[self.volume]
        for level, (total, values) in enumerate(zip(cumulative(factors)[1:], downsample(data, factors, self.labels)),
                                                start=1):
            write_level(address, level, level_box(block.write_box, total), values)
        return {"levels": len(factors)}


@register
class ImagePyramidStage(_PyramidStage):
    """Scales 1..n of an image, each the mean of 2x2x2 (or 1x2x2 for thin sections) voxels of the last."""

    name = "image_pyramid"
    volume = "raw"
    writes_into = ("raw",)
    labels = False
    inputs = (Input("raw", dtypes=("uint8", "uint16", "float32")),)

    def global_step(self) -> GlobalStep:
        return ImageScalesStep(self.input_addresses["raw"], self._factors(), None, False)


@register
class LabelPyramidStage(_PyramidStage):
    """Scales 1..n of a segmentation (the most frequent label of each 2x2x2 or 1x2x2), marked as an
    OME-Zarr label image of `raw` and listed in the output directory's `labels`."""

    name = "label_pyramid"
    volume = "segmentation"
    writes_into = ("segmentation",)
    labels = True
    inputs = (Input("segmentation", dtypes=("uint32", "uint64")), Input("raw"))

    def global_step(self) -> GlobalStep:
        raw = parse_address(self.input_addresses["raw"])  # a section range's image is the whole volume
        image = raw.base if raw.kind == "zarr" and "://" not in raw.base else None
        return LabelScalesStep(self.input_addresses["segmentation"], self._factors(), image, True)

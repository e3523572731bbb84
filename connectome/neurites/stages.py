"""The neurite type stages: segment_features (per-block feature sums) -> neurite_types (a global step
classifies every segment into OUT/segments.csv; its blocks write the class of each voxel)."""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np
from pydantic import Field

from connectome.affinity.blank import FILL_BLANK, fingerprint_fill, read_filled
from connectome.core.geometry import Block, Context
from connectome.engine.registry import register
from connectome.engine.stage import IMAGE, BlockStage, Input, Output, OutputSpec, StageParams, Table
from connectome.io import Volume, VolumeMeta, open_volume
from connectome.io.lookup import load_lut, relabel
from connectome.io.tables import save_table
from connectome.models.voxel_size import check_voxel_size
from connectome.neurites.features import FEATURES_FORMAT, block_sums, feature_reach
from connectome.neurites.types import TypesStep

DEFAULT_CLASSIFIER = "types-synthetic"
DEFAULT_PATCH_NETWORK = "patches-synthetic"
TYPES_HINT = ("only 8 nm neurite models ship: pass --allow-voxel-mismatch (stage parameter allow_voxel_mismatch) "
              "to run them anyway, or leave the neurite types out (--no-types)")


class UnrecordedGuard:
    """Leaves `allow_voxel_mismatch` out of a neurite stage's fingerprint altogether (the engine records
    a guard at its default), as before the parameter existed, so earlier runs resume."""

    def fingerprint_params(self) -> dict:
        return {k: v for k, v in super().fingerprint_params().items()  # type: ignore[misc]
                if k != "allow_voxel_mismatch"}


class SegmentFeaturesParams(StageParams):
    patch_network: str | None = Field(DEFAULT_PATCH_NETWORK, description="patch network (shipped name or .pt "
                                      "path) whose class probabilities of lattice patches join the features; "
                                      "null: none")
    allow_voxel_mismatch: bool = Field(False, description="run the patch network on data of another voxel size")
    guards = ("allow_voxel_mismatch",)
    fill_blank: int = Field(FILL_BLANK, ge=0, le=16, description="the intensity features and the patch network read "
                            "a blank voxel with tissue within this many sections above and below it as the image "
                            "interpolated between the two (a missing section as the blend of its neighbours, as the "
                            "affinity and cleft networks read it); 0: as black (affinity.blank)")


@register
class SegmentFeaturesStage(UnrecordedGuard, BlockStage[SegmentFeaturesParams]):
    name = "segment_features"
    Params = SegmentFeaturesParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),
              Input("segmentation", dtypes=("uint64", "uint32")))
    tables = (Table("segment_features", FEATURES_FORMAT),)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        self._voxel_size = tuple(inputs["segmentation"].voxel_size)
        if self.params.patch_network:
            from connectome.core.errors import UserError
            from connectome.neurites.features import PATCH_CLASSES
            from connectome.neurites.patch_net import load

            model = load(self.params.patch_network)  # an unknown network is one line before anything runs
            if model.classes != PATCH_CLASSES:
                raise UserError(f"segment_features: patch network {self.params.patch_network!r} has classes "
                                f"{list(model.classes)}, expected {list(PATCH_CLASSES)}")
            check_voxel_size(model.name, model.voxel_size, self.input_addresses["segmentation"],
                             self._voxel_size, self.params.allow_voxel_mismatch, TYPES_HINT)

    def _vs(self):
        vs = getattr(self, "_voxel_size", None)
        return vs or open_volume(self.input_addresses["segmentation"]).meta.voxel_size

    def context(self) -> Context:
        reach = feature_reach(self._vs(), patches=bool(self.params.patch_network))
        return Context(reach, reach)

    def fingerprint(self) -> dict:
        """With `fill_blank` only where something is filled: a run from before the option resumes with 0."""
        return fingerprint_fill(super().fingerprint(), self.params.fill_blank)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        seg = volumes["segmentation"].read(block.read_box)
        raw = read_filled(volumes["raw"], block.read_box, self.params.fill_blank)  # the same in any block layout
        model = None
        if self.params.patch_network:
            from connectome.neurites.patch_net import load

            model = load(self.params.patch_network)
        table = block_sums(seg, raw, block.read_box, block.write_box, volumes["segmentation"].box, self._vs(),
                           patch_model=model)
        save_table(self.table_dirs["segment_features"], block.index, **table,
                   patch_network=np.array(model.name if model else ""))
        return {"segments": int((table["voxels"] > 0).sum())}


class NeuriteTypesParams(StageParams):
    classifier: str = Field(DEFAULT_CLASSIFIER, description="shipped classifier name or path to a .json file")
    allow_voxel_mismatch: bool = Field(False, description="run the classifier on data of another voxel size")
    guards = ("allow_voxel_mismatch",)


@register
class NeuriteTypesStage(UnrecordedGuard, BlockStage[NeuriteTypesParams]):
    name = "neurite_types"
    Params = NeuriteTypesParams
    inputs = (Input("segmentation", dtypes=("uint64", "uint32")),)
    outputs = (Output("neurite_classes", OutputSpec(dtype="uint8")),)
    reads_tables = (Table("segment_features", FEATURES_FORMAT),)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        from connectome.neurites.classifier import load

        clf = load(self.params.classifier)  # an unknown classifier is one line before anything runs
        self._voxel_size = tuple(inputs["segmentation"].voxel_size)
        if clf.voxel_size:
            check_voxel_size(clf.name, clf.voxel_size,
                             self.input_addresses["segmentation"], self._voxel_size, self.params.allow_voxel_mismatch,
                             TYPES_HINT)

    def check_table_producers(self, producers: dict[str, BlockStage]) -> None:
        from connectome.core.errors import UserError
        from connectome.neurites.classifier import load
        from connectome.neurites.patch_net import load as load_patch_network

        features = producers.get("segment_features")
        clf = load(self.params.classifier)
        if features is None or not clf.uses_patches:
            return
        network = features.params.patch_network
        if not network:
            raise UserError(f"stage neurite_types: classifier {self.params.classifier!r} reads the patch network's "
                            "features, but segment_features has patch_network: null")
        wanted = clf.provenance.get("patch_network")
        if wanted and load_patch_network(network).name != wanted:
            raise UserError(f"stage neurite_types: classifier {self.params.classifier!r} was trained on the features "
                            f"of patch network {wanted!r}, but segment_features uses {network!r}")

    @cached_property
    def step(self) -> TypesStep:
        tables = self.table_dirs["segment_features"]
        out_dir = os.path.dirname(os.path.dirname(os.path.abspath(tables)))
        vs = getattr(self, "_voxel_size", None) or open_volume(self.input_addresses["segmentation"]).meta.voxel_size
        return TypesStep(tables, out_dir, self.params.classifier, vs)

    def global_step(self) -> TypesStep:
        return self.step

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "lut": os.path.basename(self.step.lut)}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        keys, values = load_lut(self.step.lut)
        seg = volumes["segmentation"].read(block.write_box).astype(np.uint64)
        volumes["neurite_classes"].write(block.write_box, relabel(seg, keys, values).astype(np.uint8))
        return {}

"""The FFN chain's stages: `ffn` (flood filling per overlapping subvolume) -> `ffn_relabel`
(reconciliation as a global step, then block ids -> final ids).

Blocks run independently (`reads_neighbours` False): each segments its whole read box, so the
result does not depend on the order blocks finish, and every block runs in parallel; the overlap
the blocks share is what reconciliation matches. A voxel's final label comes from the block whose
write box holds it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from connectome.affinity.blank import (
    BLANK_SIDE,
    FILL_BLANK,
    blank_reach,
    blank_voxels,
    fingerprint_fill,
    read_filled,
)
from connectome.affinity.masking import MASK_DTYPES
from connectome.core.errors import UserError
from connectome.core.geometry import Block, Context, vec3
from connectome.core.ids import globalise
from connectome.engine.registry import register
from connectome.engine.stage import IMAGE, BlockStage, Input, Output, OutputSpec, StageParams, Table
from connectome.ffn.canvas import fill_unsegmented
from connectome.ffn.consensus import consensus
from connectome.ffn.merge_step import MERGES_FORMAT, FFNMergeStep
from connectome.ffn.reconcile import OVERLAPS_FORMAT, ReconcileStep
from connectome.ffn.scale import ONE, downsample_image, downsample_mask, scale_for, upsample_labels
from connectome.ffn.shells import shell_arrays
from connectome.io import Volume, VolumeMeta
from connectome.io.lookup import load_lut, relabel
from connectome.io.tables import save_table
from connectome.models.registry import BLANK_BAND, DEVICE_PATTERN
from connectome.models.run_precision import OnePrecision
from connectome.models.voxel_size import check_voxel_size

if TYPE_CHECKING:
    from connectome.ffn.model import FFNInfo


@functools.lru_cache(maxsize=2)
def cached_model(name: str, device: str):
    """The network and info of a model, loaded once per worker process."""
    import torch

    from connectome.ffn.registry import load_model

    torch.set_num_threads(1)
    return load_model(name, device)


AFFINITY_INPUT = Input("affinities", dtypes=("uint8",), channels=3, optional=True)


def check_image_input(stage: BlockStage, info, inputs: dict[str, VolumeMeta]) -> None:
    """An `affinities:MODEL` network needs the `affinities` input, a raw-image network must not get it."""
    from connectome.core.errors import UserError
    from connectome.ffn.inputs import affinity_model

    wants = affinity_model(info.input)
    if wants and "affinities" not in inputs:
        raise UserError(f"stage {stage.name!r}: FFN model {info.name!r} reads the affinities of {wants!r}; give "
                        f"the stage the input `affinities` (`segment --method ffn` adds the `affinities` stage)")
    if not wants and "affinities" in inputs:
        raise UserError(f"stage {stage.name!r}: FFN model {info.name!r} reads the raw image, not the input "
                        f"`affinities` ({stage.input_addresses['affinities']})")


def read_image(volumes: dict[str, Volume], box, fill: int) -> np.ndarray:
    """What the network reads in `box`: the raw image, its blank voxels filled from `fill` sections above and below
    (`affinity.blank.read_filled`; 0: as stored), or the mean of the stored affinities (ffn.inputs; the affinities
    stage filled its own input)."""
    from connectome.ffn.inputs import mean_affinity

    if "affinities" in volumes:
        return mean_affinity(volumes["affinities"].read(box))
    return read_filled(volumes["raw"], box, fill)


FILL_FIELD = Field(FILL_BLANK, ge=0, le=16, description="the network reads a blank voxel with tissue within this many "
                   "sections above and below it as the image interpolated between the two (a missing section as the "
                   "blend of its neighbours, segmented through; affinity.blank), and such a voxel is not masked; "
                   "0: blank voxels are masked as other blank regions")


class FFNParams(StageParams):
    model: str = Field("ffn-synthetic", description="shipped FFN model name or path to a .pt file")
    device: str = Field("cpu", pattern=DEVICE_PATTERN, description="cpu, cuda or cuda:N")
    overlap: tuple[int, int, int] | None = Field(None, description="context each side (default: the model's FOV)")
    batch: int | None = Field(None, ge=1, description="objects filled together in one forward batch (default 1: "
                                                      "batching adds FOV evaluations, and on CPU and on an H100 "
                                                      "lowers voxels/s; benchmarks/results/gpu_session.md)")
    move_threshold: float | None = Field(None, gt=0, lt=1, description="default: the model's")
    segment_threshold: float | None = Field(None, gt=0, lt=1, description="default: the model's")
    min_size: int | None = Field(None, ge=1, description="smallest object kept, voxels (default: the model's)")
    reverse: bool = Field(False, description="seeds in reverse order")
    weak_seed: Literal["stop", "reject", "continue"] = Field(
        "stop", description="when an object's seed falls below the move threshold: stop moving (stop), stop and "
                            "discard the object (reject), or keep moving (continue, the behaviour before the option)")
    seed_margin: int = Field(1, ge=0, description="a seed with an accepted object's voxel within this many voxels "
                                                  "(each axis) does not start (0: only a seed on one)")
    moves: Literal["connected", "face"] = Field(
        "connected", description="where the FOV moves: only through face voxels joined inside the FOV to what the "
                                 "object reached from its seed (connected), or through any face voxel at the move "
                                 "threshold (face: the reference's rule, the behaviour before the option)")
    step_budget: float = Field(20.0, ge=0, allow_inf_nan=False,
                               description="FOV steps a block's canvas may take, as a multiple of the FOV positions "
                                           "that tile it; once spent no new object starts (blocks that reach it are "
                                           "reported). 0: no limit")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the network's arithmetic (auto: bfloat16 on a GPU and on a CPU with native "
                            "bfloat16, else float32); the object maps stay float32")
    consensus: bool = Field(False, description="fill twice (seeds in forward and reverse order) and keep voxels "
                                               "together only where both runs agree (ffn.consensus)")
    fill: bool = Field(True, description="unsegmented voxels take the nearest object's label")
    find_blank: bool = Field(True, description="mask blank regions (image exactly 0 over a "
                             f"{BLANK_SIDE} x {BLANK_SIDE} square of a section) and a band of tissue beside them, as "
                             "the mask input is (affinity.blank)")
    blank_band: int = Field(BLANK_BAND, ge=0, description="that band's width in voxels")
    fill_blank: int = FILL_FIELD
    scale: tuple[int, int, int] | None = Field(
        None, description="run the network on the image downsampled by these whole factors (z, y, x) and upsample "
                          "its objects (ffn.scale); default: the model's voxel size over the data's, rounded, so a "
                          "40 x 8 x 8 nm model runs on 40 x 4 x 4 nm data at 1 2 2")
    consensus_model: str | None = Field(
        None, description="a second FFN model (e.g. one of twice the voxel size, run on the downsampled image) whose "
                          "objects join the consensus: voxels stay together only where its run agrees too")
    consensus_scale: tuple[int, int, int] | None = Field(None, description="as `scale`, for the consensus model")
    allow_voxel_mismatch: bool = Field(False)
    guards = ("allow_voxel_mismatch",)

    @field_validator("scale", "consensus_scale")
    @classmethod
    def _whole_factors(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError(f"scale factors must be at least 1, got {list(v)}")
        return v

    @field_validator("overlap")
    @classmethod
    def _shared_voxels(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError(f"blocks are reconciled where they overlap: {list(v)} leaves neighbouring blocks no "
                             "voxel to match (every object would end at the block faces); give 1 or more per axis, "
                             "or leave it out (the model's FOV)")
        return v


@register
class FFNStage(OnePrecision, BlockStage):
    name = "ffn"
    Params = FFNParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),
              Input("mask", dtypes=MASK_DTYPES, optional=True), AFFINITY_INPUT)
    outputs = (Output("ffn_fragments", OutputSpec(dtype="uint64")),)
    tables = (Table("ffn_overlaps", OVERLAPS_FORMAT),)

    @cached_property
    def model_info(self):
        from connectome.ffn.registry import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.model))

    @cached_property
    def consensus_info(self):
        from connectome.ffn.registry import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.consensus_model)) if self.params.consensus_model else None

    @property
    def scale(self) -> tuple[int, int, int]:
        """The factors the image is downsampled by (resolved from the voxel sizes by `check_inputs`)."""
        return tuple(self.params.scale or ONE)  # type: ignore[return-value]

    def _models(self) -> list[tuple[str, FFNInfo, tuple[int, int, int]]]:
        """(name, info, scale) of the model and of the consensus model, if any."""
        models = [(self.params.model, self.model_info, self.scale)]
        if self.consensus_info is not None:
            models.append((self.params.consensus_model, self.consensus_info,
                           tuple(self.params.consensus_scale or ONE)))
        return models  # type: ignore[return-value]

    def weight_files(self) -> dict[str, tuple[str, str]]:
        files = {"weights": ("model", self.model_info.path)}
        if self.consensus_info is not None:
            files["consensus_weights"] = ("consensus_model", self.consensus_info.path)
        return files

    def block_multiple(self) -> tuple[int, int, int]:
        """Every model's factors divide it, so coarse voxels never straddle blocks."""
        return tuple(math.lcm(*axis) for axis in zip(*(s for _, _, s in self._models())))  # type: ignore[return-value]

    def context(self) -> Context:
        """The overlap (default: the largest FOV at its model's voxel size; at least what finding blank regions
        reads), rounded up to whole coarse voxels."""
        m = self.block_multiple()
        c = self.params.overlap or [max(f) for f in zip(*([v * k for v, k in zip(i.config.fov, s)]
                                                            for _, i, s in self._models()))]
        if self.params.find_blank:  # and what finding blank regions reads in plane (`blank_reach`)
            reach = blank_reach(self.params.blank_band) + 1
            c = [c[0], max(c[1], reach), max(c[2], reach)]
        c = tuple(-(-v // k) * k for v, k in zip(c, m))
        return Context(c, c)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        """Also resolves `scale` (and `consensus_scale`) from the voxel sizes and checks each model's voxel size
        against the data's times its factors."""
        super().check_inputs(inputs)
        if self.consensus_info is not None and self.consensus_info.input != self.model_info.input:
            raise UserError(f"--consensus-model {self.params.consensus_model}: it reads {self.consensus_info.input!r}, "
                            f"but {self.params.model} reads {self.model_info.input!r}; both must read the same image")
        data_nm = inputs["raw"].voxel_size
        update = {}
        for key, model, info in (("scale", self.params.model, self.model_info),
                                 ("consensus_scale", self.params.consensus_model, self.consensus_info)):
            if info is None:
                continue
            scale = tuple(getattr(self.params, key) or scale_for(info.voxel_size, data_nm))
            update[key] = scale
            coarse = [d * k for d, k in zip(data_nm, scale)]
            where = self.input_addresses["raw"] + (f" downsampled by {list(scale)}" if scale != ONE else "")
            check_voxel_size(model, info.voxel_size, where, coarse, self.params.allow_voxel_mismatch)
            check_image_input(self, info, inputs)
            fov = [f * k for f, k in zip(info.config.fov, scale)]
            shape = inputs["raw"].shape
            if any(s < f for s, f in zip(shape, fov)):  # (one section of a 2-d image, a thin crop)
                print(f"connectome: warning: {self.input_addresses['raw']} is {' x '.join(map(str, shape))} voxels, "
                      f"smaller than {model}'s field of view ({' x '.join(map(str, fov))}) along an axis: it sees "
                      "no object whole there and tends to fill the volume as one segment", file=sys.stderr)
        self.params = self.params.model_copy(update=update)

    def fingerprint(self) -> dict:
        """Without consensus, at precision auto and at scale 1 1 1, the one from before those options existed, so
        earlier runs resume (as the affinities stage's; what auto resolves to is kept in the done-markers,
        models.run_precision). The seed rules are left out only at the behaviour from before them (continue,
        margin 0): a run made before them does not resume under the new defaults, which fill differently. The
        step budget is left out at its default: it changes only the blocks that spend it, and those are
        reported. On a GPU an unset batch is recorded as the 1 it resolves to: until 2026-12-05 it meant 8 there,
        so a GPU run started then is reported as changed rather than finished at another batch."""
        fp = super().fingerprint()
        if self.params.batch is None and self.params.device != "cpu":
            fp["params"]["batch"] = 1
        if not self.params.find_blank:  # as before the option existed
            fp["params"].pop("blank_band", None)
        fingerprint_fill(fp, self.fill_sections)
        defaults = {"find_blank": False, "consensus": False, "precision": "auto", "scale": [1, 1, 1],
                    "consensus_model": None,
                    "consensus_scale": None, "weak_seed": "continue", "seed_margin": 0, "moves": "face",
                    "step_budget": FFNParams.model_fields["step_budget"].default}
        fp["params"] = {k: v for k, v in fp["params"].items() if k not in defaults or v != defaults[k]}
        return fp

    @property
    def fill_sections(self) -> int:
        """Sections a blank voxel's fill reaches (`fill_blank`); 0 where blank regions are not looked for."""
        return self.params.fill_blank if self.params.find_blank else 0

    def settings(self, info=None):
        """The canvas settings for the stage's model (or `info`'s): the stage's overrides, else the model's own."""
        from connectome.ffn.canvas import CanvasSettings

        p, i = self.params, info or self.model_info
        return CanvasSettings(p.move_threshold or i.move_threshold, p.segment_threshold or i.segment_threshold,
                              p.min_size or i.min_size, batch=p.batch or 1,
                              reverse=p.reverse, precision=self.block_precision(),
                              weak_seed=p.weak_seed, seed_margin=p.seed_margin, step_budget=p.step_budget,
                              moves=p.moves)

    def _fill(self, name: str, scale, settings, raw: np.ndarray, mask: np.ndarray | None, block: Block):
        """One canvas pass of model `name` over the read box at `scale`: labels of the read box, and stats."""
        from connectome.ffn.canvas import Canvas

        net, info = cached_model(name, self.params.device)
        if any(o % k for o, k in zip(block.read_box.offset, scale)):
            raise ValueError(f"block {block.index}: read box at {list(block.read_box.offset)} is not on the "
                             f"{list(scale)} grid of the coarse voxels")
        origin = tuple(o // k for o, k in zip(block.read_box.offset, scale))
        canvas = Canvas(net, info, downsample_image(raw, scale), settings, self.params.device, origin=origin,
                        mask=downsample_mask(mask, scale))
        labels = upsample_labels(canvas.segment(), scale, raw.shape)  # a partly masked coarse voxel stays 0
        return labels, canvas.stats

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        mask = volumes["mask"].read(block.read_box) != 0 if "mask" in volumes else None
        raw = read_image(volumes, block.read_box, self.fill_sections)
        blank = None
        if self.params.find_blank:  # found in the filled image (a model that reads affinities reads the raw for it)
            image = read_filled(volumes["raw"], block.read_box, self.fill_sections) if "affinities" in volumes else raw
            blank = blank_voxels(image, self.params.blank_band)
        if blank is not None:
            mask = blank if mask is None else mask | blank
        settings, scale = self.settings(), self.scale
        labels, stats = self._fill(self.params.model, scale, settings, raw, mask, block)
        summary = {"objects": stats["objects"], "steps": stats["steps"], "over_budget": stats["over_budget"],
                   "precision": settings.precision}
        runs = [labels]
        if self.params.consensus:
            reverse, stats = self._fill(self.params.model, scale, dataclasses.replace(settings,
                                        reverse=not settings.reverse), raw, mask, block)
            runs.append(reverse)
            summary.update(objects_reverse=stats["objects"], steps=summary["steps"] + stats["steps"],
                           over_budget=summary["over_budget"] + stats["over_budget"])
        if self.consensus_info is not None:
            other_scale = tuple(self.params.consensus_scale or ONE)
            other, stats = self._fill(self.params.consensus_model, other_scale, self.settings(self.consensus_info),
                                      raw, mask, block)
            runs.append(other)
            summary.update(objects_consensus_model=stats["objects"], steps=summary["steps"] + stats["steps"],
                           over_budget=summary["over_budget"] + stats["over_budget"])
        if len(runs) > 1:
            labels = consensus(runs, settings.min_size * math.prod(scale))  # min_size counts the model's voxels
            summary["pieces"] = int(labels.max())
        if self.params.fill:
            labels = fill_unsegmented(labels, mask)
        inner = labels[block.write_box.relative_to(block.read_box)]
        volumes["ffn_fragments"].write(block.write_box, globalise(inner, block.index))
        ids = np.unique(inner)
        save_table(self.table_dirs["ffn_overlaps"], block.index, ids=ids[ids != 0].astype(np.uint64),
                   read_box=np.array([block.read_box.offset, block.read_box.shape]),
                   write_box=np.array([block.write_box.offset, block.write_box.shape]),
                   position=np.array(block.grid_position), **shell_arrays(labels.astype(np.uint32), block.read_box,
                                                                          block.write_box))
        return summary


class FFNRelabelParams(StageParams):
    threshold: float = Field(0.5, gt=0, le=1, description="match when the overlap holds this of the smaller object")
    min_overlap: int = Field(20, ge=1, description="fewest shared voxels for a match")


class LookupRelabelStage(BlockStage):
    """A stage whose global step writes a lookup table (`step.path`) that its blocks apply to the input
    `source`, writing `segmentation`."""

    source: ClassVar[str]
    step: ReconcileStep | FFNMergeStep  # a cached_property in each subclass

    def global_step(self) -> ReconcileStep | FFNMergeStep:
        """Run once before the blocks."""
        return self.step

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "lut": self.step.fingerprint()["lut"]}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        keys, values = load_lut(self.step.path)
        seg = relabel(volumes[self.source].read(block.write_box), keys, values)
        volumes["segmentation"].write(block.write_box, seg)
        return {"segments": int(np.unique(seg[seg != 0]).size)}


@register
class FFNRelabelStage(LookupRelabelStage):
    """Reconciliation of the blocks' objects (a global step), then block ids -> final ids."""

    name = "ffn_relabel"
    Params = FFNRelabelParams
    source = "ffn_fragments"
    inputs = (Input("ffn_fragments", dtypes=("uint64",)),)
    outputs = (Output("segmentation", OutputSpec(dtype="uint64")),)
    reads_tables = (Table("ffn_overlaps", OVERLAPS_FORMAT),)

    @cached_property
    def step(self) -> ReconcileStep:  # type: ignore[override]
        return ReconcileStep(self.table_dirs["ffn_overlaps"], self.input_addresses["ffn_fragments"],
                             self.params.threshold, self.params.min_overlap)


class FFNAgglomerateParams(StageParams):
    model: str = Field("ffn-synthetic", description="shipped FFN model name or path to a .pt file")
    device: str = Field("cpu", pattern=DEVICE_PATTERN, description="cpu, cuda or cuda:N")
    radius: tuple[int, int, int] | None = Field(None, description="half-size of the subvolume around a contact "
                                                                  "(default: the model's FOV)")
    agree: float | None = Field(None, gt=0, le=1, description="share of the other segment the object from each "
                                                              "side must cover (default: the model's, 0.8 where its "
                                                              "json gives none)")
    min_contact: int = Field(10, ge=1, description="fewest contact voxel pairs (in one block) for a pair to be tested")
    precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description="as the ffn stage's")
    fill_blank: int = FILL_FIELD
    allow_voxel_mismatch: bool = Field(False)
    guards = ("allow_voxel_mismatch",)


@register
class FFNAgglomerateStage(OnePrecision, BlockStage[FFNAgglomerateParams]):
    """FFN agglomeration decisions per block (`ffn.agglomeration`): a table of tested pairs, no volume."""

    name = "ffn_agglomerate"
    Params = FFNAgglomerateParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),
              Input("ffn_segments", dtypes=("uint64",)), AFFINITY_INPUT)
    tables = (Table("ffn_merges", MERGES_FORMAT),)

    @cached_property
    def model_info(self):
        from connectome.ffn.registry import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.model))

    def weight_files(self) -> dict[str, tuple[str, str]]:
        return {"weights": ("model", self.model_info.path)}

    def fingerprint(self) -> dict:
        """At precision auto, the one from before the option existed, so earlier runs resume; `agree` as it
        resolves (the model's by default), so a run made before the models chose theirs resumes where it is 0.8."""
        fp = super().fingerprint()
        fp["params"]["agree"] = self.agree
        if self.params.precision == "auto":
            fp["params"] = {k: v for k, v in fp["params"].items() if k != "precision"}
        return fingerprint_fill(fp, self.params.fill_blank)

    @property
    def radius(self) -> tuple[int, int, int]:
        return tuple(self.params.radius or self.model_info.config.fov)  # type: ignore[return-value]

    @property
    def agree(self) -> float:
        return self.params.agree or self.model_info.agree

    def context(self) -> Context:
        return Context(vec3([r + 1 for r in self.radius]), self.radius)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        check_voxel_size(self.params.model, self.model_info.voxel_size, self.input_addresses["raw"],
                         inputs["raw"].voxel_size, self.params.allow_voxel_mismatch,
                         hint="FFN agglomeration runs the model at the data's voxel size (a model of a coarser one "
                              "runs in the `ffn` stage only): leave out --ffn-agglomerate")
        check_image_input(self, self.model_info, inputs)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        from connectome.ffn.agglomeration import AgglomerationSettings, block_decisions, fill_from_seed
        from connectome.ffn.canvas import CanvasSettings

        net, info = cached_model(self.params.model, self.params.device)
        # the pair fills keep moving while their seed weakens, through any face, as when the agreement threshold was
        # chosen (benchmarks/results/ffn_agglomeration_threshold.md)
        canvas = CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size,
                                precision=self.block_precision(), weak_seed="continue", moves="face")
        settings = AgglomerationSettings(self.radius, self.agree, self.params.min_contact)
        table = block_decisions(fill_from_seed(net, info, canvas, self.params.device),
                                read_image(volumes, block.read_box, self.params.fill_blank),
                                volumes["ffn_segments"].read(block.read_box),
                                block.read_box, block.write_box, settings)
        save_table(self.table_dirs["ffn_merges"], block.index, **table)
        return {"pairs": int(len(table["pairs"])), "agree": int(table["agree"].sum()), "precision": canvas.precision}


@register
class FFNMergeStage(LookupRelabelStage):
    """The agreed FFN merges joined by union-find (a global step), then segments -> merged segments."""

    name = "ffn_merge"
    source = "ffn_segments"
    inputs = (Input("ffn_segments", dtypes=("uint64",)),)
    outputs = (Output("segmentation", OutputSpec(dtype="uint64")),)
    reads_tables = (Table("ffn_merges", MERGES_FORMAT),)

    @cached_property
    def step(self) -> FFNMergeStep:  # type: ignore[override]
        return FFNMergeStep(self.table_dirs["ffn_merges"], self.input_addresses["ffn_segments"])

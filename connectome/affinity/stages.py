"""The affinity chain's stages: affinities -> [mask_affinities] -> fragments -> agglomerate -> (merge) -> relabel.

- `affinities`: a U-Net, resident on each worker, predicts nearest-neighbour affinities; each block
  reads its write box padded to the model's downsampling factor and grown by its context, mirrored
  past the volume's faces, so a block's output equals the whole-volume prediction (seam-free).
- `mask_affinities` (with a mask): edges touching masked voxels set to 0, read by the next two stages.
- `fragments`: the steepest-ascent watershed per block, ids `(block << 32) | local`.
- `agglomerate`: one region-graph table per block (edges across its lower faces included).
- `relabel`: the global merge (a global step: a tree of partial merges on the cluster, `merge_tree`)
  into a lookup table sharded by block, then fragments -> segments, each block reading its shard;
  with `min_voxels`, small segments then join the neighbour they touch most (`absorb`).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from connectome.affinity.absorb import absorb_small, context_for
from connectome.affinity.agglomerate import EDGES_FORMAT, block_graph
from connectome.affinity.blank import (
    BLANK_SIDE,
    FILL_BLANK,
    blank_reach,
    blank_voxels,
    read_network_input,
    with_fill_margin,
)
from connectome.affinity.encoding import affinities_as_uint8
from connectome.affinity.fragments import block_edges
from connectome.affinity.masking import MASK_DTYPES, excluded_edges, mask_affinities, mask_read_box
from connectome.affinity.relabel import MergeStep, relabel_block
from connectome.affinity.watershed import basins, pointers, within_sections
from connectome.core.errors import UserError
from connectome.core.geometry import Block, Context, Vec, vec3
from connectome.core.ids import globalise
from connectome.engine.registry import register
from connectome.engine.stage import (
    AFFINITIES,
    IMAGE,
    BlockStage,
    Input,
    Output,
    OutputSpec,
    StageParams,
    Table,
    file_record,
)
from connectome.io import Volume, VolumeMeta
from connectome.io.tables import save_table
from connectome.models.context import unet_context
from connectome.models.registry import DEVICE_PATTERN
from connectome.models.run_precision import OnePrecision
from connectome.models.voxel_size import check_voxel_size


class AffinitiesParams(StageParams):
    model: str = Field("synthetic", description="shipped model name or path to a .pt file")
    device: str | None = Field(None, pattern=DEVICE_PATTERN,
                                description="cpu, cuda, cuda:N; default: the worker's GPU if any")
    allow_voxel_mismatch: bool = Field(False, description="run a model on data of another voxel size")
    guards = ("allow_voxel_mismatch",)
    tta: int | None = Field(None, ge=1, le=8, description="test-time augmentation: average the predictions on this "
                            "many flipped copies of each block (1: none; 4: x, y and z flips too; 8: every flip; "
                            "default: the model's validated value, its json's inference.tta)")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the network's arithmetic: auto = bfloat16 on a GPU and on a CPU with native bfloat16 "
        "(AMX, AVX512-BF16), else float32")
    find_blank: bool = Field(True, description="set to 0 the edges touching a blank region (image exactly 0 over a "
                             f"{BLANK_SIDE} x {BLANK_SIDE} square of a section) or the band of tissue beside it "
                             "(affinity.blank)")
    blank_band: int | None = Field(None, ge=0, description="that band's width in voxels (default: the model's, its "
                                   "json's inference.blank_band, else 4)")
    fill_blank: int | None = Field(None, ge=0, le=16, description="the network reads a blank voxel with tissue within "
                                   "this many sections above and below it as the image interpolated between the two "
                                   "(a missing section as the blend of its neighbours); 0: as black (affinity.blank; "
                                   f"default: the model's, its json's inference.fill_blank, else {FILL_BLANK})")


@register
class AffinitiesStage(OnePrecision, BlockStage[AffinitiesParams]):
    name = "affinities"
    reads_only_read_box = True
    Params = AffinitiesParams
    inputs = (Input("raw", dtypes=("uint8",), channels=1, description=IMAGE),)
    outputs = (Output("affinities", OutputSpec(dtype="uint8", channels=3)),)
    resources = {"GPU": 1}  # asked for only where the cluster has GPU workers

    @cached_property
    def model_info(self):
        from connectome.models.registry import read_info, resolve_model_path

        return read_info(resolve_model_path(self.params.model))

    def network_context(self) -> Context:
        """What the network reads beyond the write box: its reach, more on the axes that test-time augmentation
        flips (`flip_reach`), and at least what finding blank regions needs (`blank_reach`, and one voxel below each
        face for the edges there), rounded as `flip_reach` rounds."""
        from connectome.models.inference import flip_reach

        info = self.model_info
        reach = vec3(flip_reach(info.context, info.divisor, self.tta))
        if self.blank_band is not None:
            need = (1, blank_reach(self.blank_band) + 1, blank_reach(self.blank_band) + 1)
            step = [d // math.gcd(d, 2) for d in vec3(info.divisor)]  # a read box on both sides stays a multiple
            reach = tuple(max(r, -(-n // s) * s) for r, n, s in zip(reach, need, step))  # type: ignore
        return unet_context(reach, info.divisor)

    def context(self) -> Context:
        """The network's context and the margin that filling its input's blank voxels reads (`fill_margin`)."""
        return with_fill_margin(self.network_context(), self.fill_sections)

    def block_multiple(self) -> Vec:
        return vec3(self.model_info.divisor)

    def block_multiple_reason(self) -> str:
        return f"the downsampling factor of model {self.params.model}"

    @property
    def blank_band(self) -> int | None:
        """Voxels of tissue left out beside a blank region: the `blank_band` param, else the model's; None: no
        blank regions looked for."""
        if not self.params.find_blank:
            return None
        return self.params.blank_band if self.params.blank_band is not None else self.model_info.blank_band

    @property
    def fill_sections(self) -> int:
        """Sections a blank voxel's fill reaches above and below (`fill_blank`, else the model's); 0 where blank regions
        are not looked for."""
        if self.blank_band is None:
            return 0
        return self.params.fill_blank if self.params.fill_blank is not None else self.model_info.fill_blank

    @property
    def tta(self) -> int:
        """Flipped copies averaged: the `tta` param, else the model's validated value."""
        return self.params.tta if self.params.tta is not None else self.model_info.tta

    def fingerprint(self) -> dict:
        """With the tta actually used (the model's, unless given), and left out at 1 and at precision auto as
        before those options existed, so earlier runs without test-time augmentation resume."""
        fp = super().fingerprint()
        params = {k: v for k, v in fp["params"].items() if k != "tta"}  # type: ignore[union-attr]
        if self.tta != 1:
            params["tta"] = self.tta
        if params.get("precision") == "auto":
            del params["precision"]
        params.pop("find_blank", None)  # as before the option existed where off; else the band actually used
        params.pop("blank_band", None)
        if self.blank_band is not None:
            params["blank_band"] = self.blank_band
        params.pop("fill_blank", None)
        if self.fill_sections:
            params["fill_blank"] = self.fill_sections  # none filled: as before the option
        fp["params"] = params
        return fp

    def weight_files(self) -> dict[str, tuple[str, str]]:
        return {"weights": ("model", self.model_info.path)}

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        check_voxel_size(self.params.model, self.model_info.voxel_size, self.input_addresses["raw"],
                         inputs["raw"].voxel_size, self.params.allow_voxel_mismatch)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        from connectome.cluster.model_cache import get_model
        from connectome.models import predict_affinities

        model = get_model(self.params.model, self.params.device)
        raw, net = read_network_input(volumes["raw"], block.read_box, self.fill_sections)
        precision = self.block_precision()
        affs = predict_affinities(model, raw, self.tta, precision)
        inner = block.write_box.relative_to(net)
        out = affinities_as_uint8(affs[(slice(0, 3), *inner)])
        blank = None if self.blank_band is None else blank_voxels(raw, self.blank_band)  # what the fill left blank
        if blank is not None:
            read, has_lower = mask_read_box(block.write_box, volumes["raw"].box)
            out[excluded_edges(blank[read.relative_to(net)], has_lower)] = 0
            blank = blank[inner]
        volumes["affinities"].write(block.write_box, out)
        return {"precision": precision, "blank_voxels": 0 if blank is None else int(np.count_nonzero(blank))}


class MaskAffinitiesParams(StageParams):
    pass


@register
class MaskAffinitiesStage(BlockStage[MaskAffinitiesParams]):
    """Affinities with every edge that touches a masked voxel set to 0 (`affinity.masking`)."""

    name = "mask_affinities"
    Params = MaskAffinitiesParams
    inputs = (Input("affinities", dtypes=("uint8",), channels=3), Input("mask", dtypes=MASK_DTYPES, channels=1))
    outputs = (Output("masked_affinities", OutputSpec(dtype="uint8", channels=3)),)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        read, has_lower = mask_read_box(block.write_box, volumes["mask"].box)
        mask = volumes["mask"].read(read)
        affs = volumes["affinities"].read(block.write_box)
        volumes["masked_affinities"].write(block.write_box, mask_affinities(affs, mask, has_lower))
        start = tuple(int(h) for h in has_lower)
        return {"masked_voxels": int(np.count_nonzero(mask[tuple(slice(s, None) for s in start)]))}


class WatershedParams(StageParams):
    aff_low: float = Field(0.5 / 255, ge=0, lt=1, description="voxels whose best affinity is below this stay 0")
    aff_high: float = Field(0.99, gt=0, le=1, description="edges at or above this always join their voxels")
    in_plane: bool = Field(False, description="basins stay within one section (serial-section data; the merge "
                           "joins them across sections)")


@register
class FragmentsStage(BlockStage[WatershedParams]):
    name = "fragments"
    Params = WatershedParams
    inputs = (Input("affinities", dtypes=("uint8",), channels=3, description=AFFINITIES),)
    outputs = (Output("fragments", OutputSpec(dtype="uint64")),)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        edges = block_edges(volumes["affinities"], block.write_box)
        if self.params.in_plane:
            within_sections(edges)
        local = basins(pointers(edges, self.params.aff_low), edges, self.params.aff_high)
        volumes["fragments"].write(block.write_box, globalise(local, block.index))
        return {"fragments": int(local.max(initial=0))}

    def fingerprint(self) -> dict:
        """Without in_plane, the one from before the option existed, so earlier runs resume."""
        return without_false(super().fingerprint(), "in_plane")


def without_false(fp: dict, key: str) -> dict:
    """`fp` with params[key] left out when it is False or None (an option added later, at its default)."""
    if not fp["params"].get(key):
        fp["params"] = {k: v for k, v in fp["params"].items() if k != key}
    return fp


class AgglomerateParams(StageParams):
    aff_low: float | None = Field(None, ge=0, lt=1, description="the fragments stage's (default: taken from it)")
    aff_high: float | None = Field(None, gt=0, le=1, description="the fragments stage's (default: taken from it)")
    in_plane: bool | None = Field(None, description="the fragments stage's (default: taken from it)")
    scoring: Literal["mean", "learned"] = Field("mean", description="edge statistic the merge averages: the "
                                                "affinity, or an edge classifier's p(merge) (learned)")
    edge_model: str | None = Field(None, description="learned: the classifier (a shipped name or a .json path; "
                                   "default: <affinity model>-edges)")
    fill_blank: int | None = Field(None, ge=0, le=16, description="an edge classifier that reads the image reads it "
                                   "as the affinities stage's network does (its fill_blank; default: taken from it, "
                                   f"else {FILL_BLANK})")


@register
class AgglomerateStage(BlockStage[AgglomerateParams]):
    name = "agglomerate"
    Params = AgglomerateParams
    inputs = (Input("affinities", dtypes=("uint8",), channels=3, description=AFFINITIES),
              Input("fragments", dtypes=("uint64",)),
              # read only by an edge classifier with the image's features (`EdgeClassifier.reads_image`)
              Input("raw", dtypes=("uint8",), channels=1, optional=True, description=IMAGE))
    tables = (Table("edges", EDGES_FORMAT),)

    def context(self) -> Context:
        return Context(lower=(1, 1, 1))  # the fragments one voxel below each inner lower face

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        """Also refuse, in one line, a classifier that reads the EM image where the stage is not given it."""
        super().check_inputs(inputs)
        classifier = self.classifier
        if classifier is None or not classifier.reads_image:
            return
        if "raw" not in inputs:
            raise UserError(f"stage 'agglomerate': edge classifier {classifier.path} reads the EM image; give the "
                            "stage the image its affinities were predicted from (inputs: {raw: raw})")

    def check_upstream(self, upstream: dict[str, BlockStage | None]) -> AgglomerateParams:
        """The watershed thresholds are the fragments stage's: taken from it, or refused when they differ."""
        producer = upstream.get("fragments")
        source = producer.params if isinstance(producer, FragmentsStage) else WatershedParams()
        values = {}
        for key in ("aff_low", "aff_high", "in_plane"):
            given, wanted = getattr(self.params, key), getattr(source, key)
            if given is not None and given != wanted:
                raise UserError(f"stage 'agglomerate': {key} {given} differs from the fragments stage's {wanted}; "
                                "set it on the fragments stage only")
            values[key] = wanted
        if self.params.scoring == "learned":
            values["edge_model"] = self._edge_model(upstream.get("affinities"))
        if self.params.fill_blank is None:
            producer = upstream.get("affinities")
            values["fill_blank"] = producer.fill_sections if isinstance(producer, AffinitiesStage) else FILL_BLANK
        return self.params.model_copy(update=values)

    def _edge_model(self, producer) -> str:
        """The classifier's path: given, or the affinity model's `<model>-edges.json`; checked now."""
        from connectome.affinity.edge_classifier import edges_path_for, load_classifier, resolve_edge_model

        name = self.params.edge_model
        if name is None:
            if not isinstance(producer, AffinitiesStage):
                raise UserError("stage 'agglomerate': scoring 'learned' needs edge_model when the affinities "
                                "are not made in this run")
            default = edges_path_for(producer.params.model)
            if not default.is_file():
                raise UserError(f"stage 'agglomerate': model {producer.params.model} has no edge classifier "
                                f"({default.name}); train one with `connectome train edges` or use scoring 'mean'")
            name = str(default)
        path = resolve_edge_model(name)
        load_classifier(path)
        return path

    def fingerprint(self) -> dict:
        """With learned scoring, the classifier by its file name and content, not its folder: retraining it in
        place re-runs the stage, while the same file from another checkout, venv or container resumes.
        Mean scoring's is the one from before learned scoring existed, so earlier runs resume."""
        fp = without_false(super().fingerprint(), "in_plane")
        fill = fp["params"].pop("fill_blank", None)  # type: ignore[union-attr]
        if self.classifier is not None and self.classifier.reads_image and fill:
            fp["params"]["fill_blank"] = fill  # type: ignore[index]  # none filled: as before the option
        if self.params.scoring == "mean":
            fp["params"] = {k: v for k, v in fp["params"].items() if k not in ("scoring", "edge_model")}
        elif self.params.edge_model is not None:
            record = file_record(self.params.edge_model)
            fp["params"] = {**fp["params"], "edge_model": record["name"]}
            fp["edge_model_sha1"] = record["sha1"]
        return fp

    @cached_property
    def classifier(self):
        from connectome.affinity.edge_classifier import load_classifier

        if self.params.scoring != "learned":
            return None
        if self.params.edge_model is None:
            raise RuntimeError("stage 'agglomerate': edge_model unset (the plan's check_upstream sets it)")
        return load_classifier(self.params.edge_model)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        p = self.params
        if p.aff_low is None or p.aff_high is None or p.in_plane is None or p.fill_blank is None:
            raise RuntimeError("stage 'agglomerate': aff_low, aff_high, in_plane, fill_blank unset (check_upstream "
                               "sets them)")
        image = volumes.get("raw") if self.classifier is not None and self.classifier.reads_image else None
        table = block_graph(volumes["fragments"], volumes["affinities"], block.read_box, block.write_box,
                            p.aff_low, p.aff_high, self.classifier, p.in_plane, image, p.fill_blank)
        table["grid"] = np.array(grid_shape(block, volumes["fragments"].shape), np.int64)  # for the merge tree
        save_table(self.table_dirs["edges"], block.index, **table)
        return {"nodes": int(table["nodes"].size), "edges": int(table["u"].size), "links": int(table["link_u"].size)}


def grid_shape(block: Block, volume_shape) -> tuple[int, int, int]:
    """Blocks per axis of the grid `block` belongs to (from its position, write box and the volume)."""
    out = []
    for p, begin, size, extent in zip(block.grid_position, block.write_box.offset, block.write_box.shape,
                                      volume_shape):
        side = begin // p if p > 0 else size  # a block's side, from the blocks before it (or itself, when first)
        out.append(-(-extent // side))
    return tuple(out)  # type: ignore[return-value]


class RelabelParams(StageParams):
    threshold: float = Field(0.5, ge=0, le=1, description="merge while the edge score is below this")
    scoring: Literal["mean", "quantile"] = Field("mean", description="score = 1 - mean or 1 - quantile affinity")
    quantile: float = Field(0.5, gt=0, lt=1, description="the quantile, for quantile scoring")
    merge: Literal["tree", "serial"] = Field("tree", description="the global merge as a tree of tasks on the "
                                             "cluster, or as one task (the same table); quantile scoring "
                                             "always runs as one task")
    fanout: int = Field(4, ge=2, le=64, description="merge tree: blocks (then super-blocks) per axis of a super-block")
    tree_levels: int = Field(2, ge=1, le=16, description="merge tree: levels run as one task per super-block; "
                             "above them, rounds of tasks per super-block of the last level (merge_rounds), so "
                             "no task grows with the volume (the same table)")
    min_voxels: int = Field(0, ge=0, description="after the merge, segments under this many voxels whose bounding "
                            "box fits max_extent join the neighbour they touch most (affinity.absorb; 0 = none)")
    max_extent: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (16, 16, 16), description="voxels (z, y, x): the largest bounding box of a segment min_voxels absorbs; "
        "blocks read twice this beyond their write box")
    min_share: float = Field(0.0, ge=0, le=1, description="a small segment joins its neighbour only when that "
                             "one holds at least this share of its faces with other segments")


@register
class RelabelStage(BlockStage[RelabelParams]):
    name = "relabel"
    Params = RelabelParams
    inputs = (Input("fragments", dtypes=("uint64",)),)
    outputs = (Output("segmentation", OutputSpec(dtype="uint64")),)
    reads_tables = (Table("edges", EDGES_FORMAT),)

    @cached_property
    def merge(self) -> MergeStep:
        p = self.params
        return MergeStep(self.table_dirs["edges"], p.threshold, p.scoring, p.quantile, p.merge, p.fanout,
                         p.tree_levels)

    def global_step(self) -> MergeStep:
        """The merge, run once before the blocks."""
        return self.merge

    def context(self) -> Context:
        """Absorbing small segments reads twice `max_extent` around the write box (affinity.absorb)."""
        if not self.params.min_voxels:
            return Context()
        grow = context_for(self.params.max_extent)
        return Context(lower=grow, upper=grow)

    def fingerprint(self) -> dict:
        """Without tree_levels (the table is the same whatever it is), and without the absorb parameters when
        nothing is absorbed, so runs from before the option resume."""
        fp = super().fingerprint()
        drop = {"tree_levels"} | ({"min_voxels", "max_extent", "min_share"} if not self.params.min_voxels else set())
        fp["params"] = {k: v for k, v in fp["params"].items() if k not in drop}
        return {**fp, "lut": self.merge.fingerprint()["lut"]}

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        """Relabel the read box (the write box unless small segments are absorbed), absorb, write the write box."""
        p = self.params
        read, volume = block.read_box, volumes["fragments"].box
        grown = relabel_block(self.merge.path, volumes["fragments"].read(read))
        origin = [r - v for r, v in zip(read.offset, volume.offset)]
        grown, absorbed = absorb_small(grown, p.min_voxels, p.max_extent, p.min_share, origin, volume.shape)
        seg = np.ascontiguousarray(grown[block.write_box.relative_to(read)])
        volumes["segmentation"].write(block.write_box, seg)
        return {"segments": int(np.unique(seg[seg != 0]).size), **({"absorbed": absorbed} if p.min_voxels else {})}

"""The alignment chain's stages: `align_match` -> (global solve) -> `align`.

- `align_match`: per block (a tile of sections), the displacements from each section to the next
  one and the one after on a grid of patches (`patches`), and each section's intensity statistics,
  saved as a per-block table. A block handles the nodes inside its write box and reads two
  sections above it and a patch's reach around it, so its table is the same in any block layout.
- `section_normalize`: per-section percentile stretch and CLAHE (`contrast`), seam-free.
- `footprint_mask`: the padding of sections smaller than the stack's plane (`footprints`), for a segmentation.
- `reorder_sections` / `restore_section_order`: the sections in their physical order and back (`section_order`).
- `align_labels` / `unalign_labels`: a label volume (ground truth, a mask, a segmentation) carried with an
  alignment's transforms from the raw frame into the aligned one, or back, nearest neighbour, ids exact (`carry`).
- `align`: its global step (`solve_step.SolveStep`) flags defects, rejects outlier patches (opt-in,
  `refine`: after refining each pair's affine on intensities over the pair's whole overlap, read
  there section by section, and searching the patches that disagree with it again near it:
  `overlap`), and solves one displacement field per section over the whole stack (stored in
  OUT/alignment/transforms.npz); then each block renders its write box of the aligned volume and of
  the defect mask.
"""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from connectome.alignment.carry import carry_section, uncarry_section
from connectome.alignment.contrast import LevelsStep, equalize, stretch
from connectome.alignment.defects import OUTSIDE_FLAG, REGION_FLAG, SECTION_FLAG
from connectome.alignment.footprints import outside_footprints, permuted
from connectome.alignment.mesh import interpolate
from connectome.alignment.patches import PatchSettings, SectionPair, match_sections, node_axis
from connectome.alignment.section_order import positions
from connectome.alignment.solve_step import MATCHES_FORMAT, OFF_AT_ZERO, SolveSettings, SolveStep
from connectome.alignment.warp import source_positions, warp_section
from connectome.core.errors import UserError
from connectome.core.geometry import Block, Box, Context
from connectome.engine.registry import register
from connectome.engine.stage import BlockStage, Input, Output, OutputSpec, StageParams, Table
from connectome.io import Volume, VolumeMeta
from connectome.io.tables import save_table

OFFSETS = (1, 2)  # each section is matched to the next one and the one after (to skip a bad one)


class AlignMatchParams(StageParams):
    patch: int = Field(64, ge=16, le=1024, description="template side at full resolution, pixels")
    stride: int = Field(64, ge=8, le=4096, description="spacing of the patch grid (mesh nodes), pixels")
    search: int = Field(80, ge=2, le=2048, description="largest displacement searched between sections, pixels")
    levels: int = Field(3, ge=1, le=5, description="resolutions searched, each half the one before")

    def settings(self) -> PatchSettings:
        return PatchSettings(self.patch, self.search, self.levels)


@register
class AlignMatchStage(BlockStage[AlignMatchParams]):
    name = "align_match"
    Params = AlignMatchParams
    inputs = (Input("raw", dtypes=("uint8", "uint16", "float32")),)
    tables = (Table("matches", MATCHES_FORMAT),)

    def context(self) -> Context:
        r = self.params.settings().reach()
        return Context(lower=(0, r, r), upper=(max(OFFSETS), r, r))

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        meta = inputs["raw"]
        if meta.channels:
            raise UserError(f"stage 'align_match': {self.input_addresses['raw']} has {meta.channels} channels, "
                            "expected a single-channel image volume")
        _, height, width = meta.shape
        if min(height, width) < self.params.patch:
            raise UserError(f"stage 'align_match': sections of {self.input_addresses['raw']} are {height}x{width} "
                            f"pixels, smaller than params.patch {self.params.patch}")
        if meta.shape[0] < 2:
            raise UserError(f"stage 'align_match': {self.input_addresses['raw']} has {meta.shape[0]} section, "
                            "expected at least 2 to align")

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        raw = volumes["raw"]
        depth, height, width = raw.shape
        p = self.params
        ys, xs = node_axis(height, p.patch, p.stride), node_axis(width, p.patch, p.stride)
        w = block.write_box
        iy = np.nonzero((ys >= w.offset[1]) & (ys < w.end[1]))[0]
        ix = np.nonzero((xs >= w.offset[2]) & (xs < w.end[2]))[0]
        data = raw.read(block.read_box).astype(np.float32)
        origin = block.read_box.offset
        inner = w.relative_to(block.read_box)
        rows: dict[str, list] = {"z": [], "k": [], "iy": [], "ix": [], "d": [], "corr": []}
        stats = []
        padding = outside_footprints(raw.section_footprints(), w)  # not counted: a smaller section is not 'missing'
        for z in range(w.offset[0], w.end[0]):
            section = data[z - origin[0]]
            tile = section[inner[1], inner[2]].astype(np.float64)[~padding[z - w.offset[0]]]
            stats.append((z, tile.size, tile.sum(), np.square(tile).sum(), np.count_nonzero(tile == 0)))
            for k in OFFSETS:
                if z + k >= depth or not (len(iy) and len(ix)):
                    continue
                pair = SectionPair(section, data[z + k - origin[0]], (origin[1], origin[2]), (height, width))
                d, corr = match_sections(pair, ys[iy], xs[ix], p.settings())
                gy, gx = np.meshgrid(iy, ix, indexing="ij")
                rows["z"].append(np.full(gy.size, z))
                rows["k"].append(np.full(gy.size, k))
                rows["iy"].append(gy.ravel())
                rows["ix"].append(gx.ravel())
                rows["d"].append(d.reshape(-1, 2))
                rows["corr"].append(corr.ravel())
        empty = {"d": np.zeros((0, 2)), "corr": np.zeros(0)}
        table = {key: np.concatenate(v) if v else empty.get(key, np.zeros(0, np.int64)) for key, v in rows.items()}
        st = np.array(stats, dtype=np.float64).reshape(-1, 5)
        save_table(self.table_dirs["matches"], block.index, **table, stat_z=st[:, 0].astype(np.int64),
                   stat_count=st[:, 1], stat_sum=st[:, 2], stat_sum_sq=st[:, 3], stat_zeros=st[:, 4],
                   nodes_y=ys, nodes_x=xs, shape=np.array(raw.shape), patch=np.array(p.patch))
        return {"matches": int(table["z"].size)}


class AlignParams(StageParams):
    model: Literal["translation", "rigid", "affine"] = Field(
        "affine", description="per-pair robust fit that rejects outlier patches, and the per-section transform stored")
    min_corr: float = Field(0.15, ge=-1, le=1, description="patches correlating less are not used")
    max_residual: float = Field(8.0, gt=0, description="patches farther from the pair's fit are outliers (px)")
    max_deviation: float = Field(3.0, gt=0, description="patches farther from their neighbours' median are outliers")
    stretch: float = Field(0.001, ge=0, description="in-plane spring weight (a measured displacement weighs 1)")
    fill_weight: float = Field(0.05, ge=0, le=1,
                               description="weight of the pair's robust fit at patches without a good match")
    skip_weight: float = Field(0.05, gt=0, le=1, description="weight of a match to the section after next where "
                               "good matches through the section between already chain the two")
    bend: float = Field(0.01, ge=0, description="in-plane bending weight")
    anchor: float = Field(0.01, ge=0, description="weight pulling each section's field towards its affine part")
    z_smooth: float = Field(1e-6, gt=0, description="weight carrying fields across sections (and flagged ones)")
    rounds: int = Field(3, ge=1, le=10, description="re-linearisations of the global solve")
    min_std: float = Field(1.0, ge=0, description="sections with a smaller deviation are blank, in grey levels of "
                           "8-bit data (of other data: 1/255 of the stack's range)")
    max_zero_fraction: float = Field(0.5, gt=0, le=1, description="sections with more zero pixels are missing")
    min_good_fraction: float = Field(
        0.25, ge=0, le=1, description="sections matching no neighbour on this fraction of patches are flagged")
    refine: bool = Field(False, description="refine each pair's fit on intensities over the pair's whole overlap "
                         "(whole sections read at the global step) and search the patches that disagree with it "
                         "again near it (opt-in: see benchmarks/results/alignment.md for what it does on real stacks)")
    max_disagreement: float = Field(4.0, gt=0, description="patches farther than this from the refined pair "
                                    "transform are searched again within a few pixels of it (px)")
    ambiguity: float = Field(0.1, ge=0, le=2, description="a patch's match found again near the refined pair "
                             "transform replaces its own unless its own correlates better by this much")
    hold: float = Field(0.0, ge=0, description="a neighbour pair whose robust fit moves the section by at most this "
                        "many times the scatter of its good patches about the fit (RMS over the nodes) is held as "
                        "registered: no displacement, so a stack registered already is left as it is instead of "
                        "following the content that differs between real sections (e.g. 3; 0, the default: every "
                        "pair's fit is followed)")
    strain: float = Field(0.1, ge=0, description="weight holding each section's affine scale and shear (not its "
                          "rotation) at none, per node, as a measured displacement weighs 1: real sections differ in "
                          "content, and the pairs' fits, followed, add up to a drift of scale along the stack")
    outside: bool = Field(True, description="flag the aligned pixels whose source lies outside their section (the "
                          "margins the warp leaves, and the padding of a smaller section: no tissue imaged) as 3 in "
                          "`defects`, so `segment --mask` leaves them out (false: unflagged, as before the option)")

    blank: bool = Field(True, description="flag the blank regions inside an aligned section (exactly 0 over an 11 x "
                        "11 square: a blacked-out corner, a hole) as 3 in `defects` too (affinity.blank; false: as "
                        "before the option)")

    def settings(self) -> SolveSettings:
        return SolveSettings(**self.model_dump(exclude={"outside", "blank"}))


@register
class AlignStage(BlockStage[AlignParams]):
    name = "align"
    Params = AlignParams
    inputs = (Input("raw", dtypes=("uint8", "uint16", "float32")),)
    outputs = (Output("aligned"), Output("defects", OutputSpec(dtype="uint8")))
    reads_tables = (Table("matches", MATCHES_FORMAT),)

    @property
    def transforms_path(self) -> str:
        tables = self.table_dirs["matches"]
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(tables))), "alignment", "transforms.npz")

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {"aligned": OutputSpec(dtype=inputs["raw"].dtype.name), "defects": OutputSpec(dtype="uint8")}

    def fingerprint_params(self) -> dict:
        """Without `hold` and `strain` at 0 and `blank` off, so runs from before those options resume (with
        `strain` 0: the default since 2026-12-07 is 0.1)."""
        params = super().fingerprint_params()
        for option in OFF_AT_ZERO:
            if not params.get(option):
                params.pop(option, None)
        if not params.get("blank"):
            params.pop("blank", None)
        return params

    def global_step(self) -> SolveStep:
        return SolveStep(self.table_dirs["matches"], self.transforms_path, self.params.settings(),
                         self.input_addresses["raw"])

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        """Render the write box; each section reads the raw region its write box maps from (its
        extent depends on the solved fields, so the stage declares no context)."""
        t = _load(self.transforms_path, os.path.getmtime(self.transforms_path))
        nodes = (t["nodes_y"], t["nodes_x"])
        w = block.write_box
        yx = (slice(w.offset[1], w.end[1]), slice(w.offset[2], w.end[2]))
        aligned = np.zeros(w.shape, dtype=volumes["aligned"].dtype)
        mask = np.zeros(w.shape, dtype=np.uint8)
        footprints = volumes["raw"].section_footprints()  # smaller sections padded to the stack's size
        for i, z in enumerate(range(w.offset[0], w.end[0])):
            field = t["fields"][z].astype(np.float64)
            aligned[i], inside = warp_section(volumes["raw"], z, field, nodes, yx, footprint=footprints.get(z))
            if t["section_flags"][z]:
                mask[i] = SECTION_FLAG
                continue
            if t["regions"][z].any():
                qy, qx = source_positions(field, nodes, yx)
                near = interpolate(t["regions"][z][..., None].astype(np.float64), nodes, qy, qx)[..., 0]
                mask[i][near >= 0.5] = REGION_FLAG
            if self.params.outside:
                mask[i][~inside] = OUTSIDE_FLAG
            if self.params.blank and (aligned[i][inside] == 0).any():
                blank = blank_in_section(volumes["raw"], z, field, nodes, w, footprints.get(z))
                mask[i][blank & inside] = OUTSIDE_FLAG  # (the margins are `outside`'s to flag)
        volumes["aligned"].write(w, aligned)
        volumes["defects"].write(w, mask)
        return {"flagged_voxels": int(np.count_nonzero(mask))}


def blank_in_section(raw: Volume, z: int, field: np.ndarray, nodes, write: Box, footprint) -> np.ndarray:
    """(y, x) bool over the write box: the blank pixels of aligned section z (`affinity.blank`, no band), from the
    section warped over the write box grown by what finding them reads (cut at the plane's faces, taken there as
    extended), so a block finds what one block over the whole plane finds."""
    from connectome.affinity.blank import blank_reach, blank_voxels

    r = blank_reach(0)
    lo = [max(o - r, 0) for o in write.offset[1:]]
    hi = [min(e + r, n) for e, n in zip(write.end[1:], raw.shape[1:])]
    section, _ = warp_section(raw, z, field, nodes, (slice(lo[0], hi[0]), slice(lo[1], hi[1])), footprint=footprint)
    blank = blank_voxels(section[None], 0)
    inner = (slice(write.offset[1] - lo[0], write.end[1] - lo[0]), slice(write.offset[2] - lo[1], write.end[2] - lo[1]))
    return np.zeros(write.shape[1:], bool) if blank is None else blank[0][inner]


@lru_cache(maxsize=2)
def _load(path: str, mtime: float) -> dict:
    with np.load(path) as f:
        return {key: f[key] for key in f.files}



class SectionNormalizeParams(StageParams):
    low: float = Field(0.5, ge=0, lt=100, description="percentile of each section mapped to 0")
    high: float = Field(99.5, gt=0, le=100, description="percentile of each section mapped to 255")
    tile: int = Field(128, ge=8, le=4096, description="CLAHE tile side in pixels (blocks: a multiple of it)")
    clip_limit: float = Field(0.01, ge=0, le=1, description="CLAHE clip limit (0: no local equalisation)")


@register
class SectionNormalizeStage(BlockStage[SectionNormalizeParams]):
    """Per-section percentile stretch, then CLAHE (blockwise exact: see `contrast`)."""

    name = "section_normalize"
    Params = SectionNormalizeParams
    inputs = (Input("raw", dtypes=("uint8", "uint16", "float32")),)
    outputs = (Output("normalized_sections", OutputSpec(dtype="uint8")),)

    @property
    def levels_path(self) -> str:
        out = os.path.abspath(self.output_addresses["normalized_sections"])
        return os.path.join(os.path.dirname(out), "alignment", f"levels-{os.path.basename(out)}.npz")

    def context(self) -> Context:
        t = self.params.tile
        return Context((0, 2 * t, 2 * t), (0, 2 * t, 2 * t))

    def block_multiple(self) -> tuple[int, int, int]:
        return (1, self.params.tile, self.params.tile)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        if self.params.low >= self.params.high:
            raise UserError(f"stage 'section_normalize': params.low {self.params.low} must be below "
                            f"params.high {self.params.high}")

    def global_step(self) -> LevelsStep:
        return LevelsStep(self.input_addresses["raw"], self.levels_path, self.params.low, self.params.high)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        levels = _load(self.levels_path, os.path.getmtime(self.levels_path))["levels"]
        data = volumes["raw"].read(block.read_box)
        inner = block.write_box.relative_to(block.read_box)
        out = np.zeros(block.write_box.shape, np.uint8)
        for i, z in enumerate(range(block.write_box.offset[0], block.write_box.end[0])):
            unit = stretch(data[z - block.read_box.offset[0]], *levels[z])
            if self.params.clip_limit > 0:
                unit = equalize(unit, self.params.tile, self.params.clip_limit)
            source = data[z - block.read_box.offset[0]][inner[1], inner[2]]
            # exact 0 (margins a warp leaves, padding, blank sections) stays 0 ("no data" downstream), and the
            # image is kept at 1 or more so that none of it reads as "no data"
            out[i] = np.where(source == 0, 0, np.maximum(np.rint(unit[inner[1], inner[2]] * 255), 1))
        volumes["normalized_sections"].write(block.write_box, out)
        return {}


def sections_read_together(volume: Volume) -> int:
    """How many sections a read should take at once: its chunks' depth; 1 for an image stack, whose sections are
    files read one by one (its chunk shape is nominal)."""
    from connectome.io.image_stack import ImageStackVolume
    from connectome.io.sections import SectionRange

    inner = volume
    while isinstance(inner, SectionRange):
        inner = inner.inner
    return 1 if isinstance(inner, ImageStackVolume) else max(1, int(volume.meta.chunk_shape[0]))


class SectionPermutationParams(StageParams):
    order: tuple[int, ...] = Field(description="stored index of each section, physical first to last "
                                               "(`section_order`)")


class _SectionPermutation(BlockStage[SectionPermutationParams]):
    """Write each section of the write box from one section of the input (`sources`)."""

    Params = SectionPermutationParams
    source: str
    target: str
    inverse: bool  # False: output section k is input section order[k]; True: the other way round

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        m = inputs[self.source]
        return {self.target: OutputSpec(dtype=m.dtype.name, channels=m.channels)}

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        n = inputs[self.source].shape[0]
        if sorted(self.params.order) != list(range(n)):
            raise UserError(f"stage {self.name!r}: params.order must list each of the {n} sections of "
                            f"{self.input_addresses[self.source]} once (a permutation of 0..{n - 1}); found "
                            f"{len(self.params.order)} entries, {len(set(self.params.order))} distinct")

    def sources(self) -> np.ndarray:
        """The input section of each output section."""
        return positions(self.params.order) if self.inverse else np.asarray(self.params.order, np.int64)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        """The sections of each input chunk are read once, together (a section read alone would decompress its
        whole chunk), from the first to the last one needed; the files of an image stack one at a time."""
        w = block.write_box
        src = volumes[self.source]
        lead = (src.meta.channels,) if src.meta.channels else ()
        out = np.empty(lead + tuple(w.shape), src.meta.dtype)
        sources = self.sources()[w.offset[0]:w.end[0]]
        slabs = sources // sections_read_together(src)
        for slab in np.unique(slabs).tolist():
            wanted = np.flatnonzero(slabs == slab)
            z0, z1 = int(sources[wanted].min()), int(sources[wanted].max()) + 1
            data = src.read(Box.from_corners((z0, w.offset[1], w.offset[2]), (z1, *w.end[1:])))
            for i in wanted.tolist():
                out[..., i, :, :] = data[..., int(sources[i]) - z0, :, :]
        volumes[self.target].write(w, out)
        return {}


@register
class ReorderSectionsStage(_SectionPermutation):
    """The raw volume with its sections in their physical order (`connectome.alignment.section_order`)."""

    name = "reorder_sections"
    inputs = (Input("raw"),)
    outputs = (Output("ordered_raw"),)
    source, target, inverse = "raw", "ordered_raw", False
    shown_as = {"ordered_raw": ("raw", "its sections in the recovered order")}

    @cached_property
    def footprints(self) -> dict:
        """The footprints of the ordered copy (`Volume.section_footprints` of the raw volume, permuted)."""
        from connectome.io import open_volume

        return permuted(open_volume(self.input_addresses["raw"]).section_footprints(), self.params.order)

    def fingerprint(self) -> dict:
        """With the footprints the copy records, where there are any: a copy made before it recorded them (a run
        before 2026-12-05) is reported as changed instead of leaving the padding unmasked."""
        fp = super().fingerprint()
        if self.footprints:
            fp["footprints"] = {str(z): list(f) for z, f in sorted(self.footprints.items())}
        return fp

    def before_blocks(self, on_worker, finished) -> None:
        """The ordered copy records its sections' footprints, so the stages that read it mask or flag the padding
        of smaller sections as they would on the stored stack."""
        from connectome.io import open_volume
        from connectome.io.zarr_store import ZarrVolume

        target = open_volume(self.output_addresses["ordered_raw"], "r+")
        if self.footprints and isinstance(target, ZarrVolume):
            target.record_footprints(self.footprints)


class FootprintMaskParams(StageParams):
    pass


@register
class FootprintMaskStage(BlockStage[FootprintMaskParams]):
    """1 in the padding of sections smaller than the stack's plane (`footprints`) and where the optional `mask` is
    nonzero, else 0: the mask a segmentation chain excludes (`segment` adds this stage where the raw volume has
    footprints)."""

    name = "footprint_mask"
    Params = FootprintMaskParams
    inputs = (Input("raw"), Input("mask", dtypes=("uint8", "bool"), optional=True))
    outputs = (Output("footprint_mask", OutputSpec(dtype="uint8")),)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        out = outside_footprints(volumes["raw"].section_footprints(), block.write_box)
        padding = int(np.count_nonzero(out))
        if "mask" in volumes:
            out |= volumes["mask"].read(block.write_box) != 0
        volumes["footprint_mask"].write(block.write_box, out.astype(np.uint8))
        return {"padding_voxels": padding, "masked_voxels": int(np.count_nonzero(out))}


class MaskValuesParams(StageParams):
    values: list[int] = Field(min_length=1, description="the mask values that exclude a voxel (e.g. 2 3 of `align`'s "
                                                         "defects: flagged regions and outside, not flagged sections)")


@register
class MaskValuesStage(BlockStage[MaskValuesParams]):
    """1 where the mask holds one of `values`, else 0: a mask that excludes by some of its codes only
    (`--mask-values`; the `footprint_mask` and `mask_affinities` stages, the FFN and the clefts then read it)."""

    name = "mask_values"
    Params = MaskValuesParams
    inputs = (Input("mask", dtypes=("uint8",)),)
    outputs = (Output("selected_mask", OutputSpec(dtype="uint8")),)

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        out = np.isin(volumes["mask"].read(block.write_box), np.asarray(self.params.values, np.uint8))
        volumes["selected_mask"].write(block.write_box, out.astype(np.uint8))
        return {"masked_voxels": int(np.count_nonzero(out))}


@register
class RestoreSectionOrderStage(_SectionPermutation):
    """A volume computed in the physical order (`reorder_sections`) put back in the stored order."""

    name = "restore_section_order"
    inputs = (Input("ordered"),)
    outputs = (Output("restored"),)
    source, target, inverse = "ordered", "restored", True


# the dtypes of a label volume or mask that `align_labels` / `unalign_labels` carry (values indexed, never converted)
LABEL_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "bool")


class CarryLabelsParams(StageParams):
    transforms: str = Field("", description="the alignment's transforms.npz (default: alignment/transforms.npz in "
                                            "the folder the output is written into, the `align` output directory)")
    order: tuple[int, ...] | None = Field(None, description="stored index of each aligned section, where the stack "
                                          "was aligned in the order recovered from its images (`reorder_sections` "
                                          "params.order; `connectome align` passes it); none: the stored order")


class _CarryLabels(BlockStage[CarryLabelsParams]):
    """Carry a label volume between the raw frame and the aligned frame (`carry`), write box by write box of the
    target frame, with the geometry the `align` stage renders `aligned` with: its transforms, its nodes, and the
    footprints of the raw volume's smaller sections (the run's `raw`, which is not read)."""

    Params = CarryLabelsParams
    inputs = (Input("raw"), Input("labels", dtypes=LABEL_DTYPES,
                                  description="a label volume or mask: ids or classes, not an image"))
    target: str
    frame: str  # the frame the output is in, recorded in its metadata (`connectome.frame`)

    def __init__(self, params, input_addresses, output_addresses, table_dirs=None):
        super().__init__(params, input_addresses, output_addresses, table_dirs)
        # resolved where the stage is made (the client), so that a worker elsewhere reads the same file
        out = os.path.abspath(self.output_addresses[self.target])
        self.transforms_file = (os.path.abspath(self.params.transforms) if self.params.transforms
                                else os.path.join(os.path.dirname(out), "alignment", "transforms.npz"))

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {self.target: OutputSpec(dtype=inputs["labels"].dtype.name)}

    def weight_files(self) -> dict[str, tuple[str, str]]:
        """The transforms, by content: labels carried with other transforms are not resumed (once they exist)."""
        path = self.transforms_file
        return {"transforms_file": ("transforms", path)} if os.path.isfile(path) else {}

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        super().check_inputs(inputs)
        meta = inputs["labels"]
        if meta.channels:
            raise UserError(f"stage {self.name!r}: input labels ({self.input_addresses['labels']}) has "
                            f"{meta.channels} channels, expected a single-channel label volume")
        n = meta.shape[0]
        if self.params.order is not None and sorted(self.params.order) != list(range(n)):
            raise UserError(f"stage {self.name!r}: params.order must list each of the {n} sections once (a "
                            f"permutation of 0..{n - 1}); found {len(self.params.order)} entries")
        if os.path.isfile(self.transforms_file):
            self.check_transforms(n)
        elif self.params.transforms:
            raise UserError(f"stage {self.name!r}: params.transforms {self.params.transforms}: no such file; "
                            "expected an alignment's transforms.npz (OUT/alignment/transforms.npz of "
                            "`connectome align`)")

    def check_transforms(self, sections: int) -> None:
        """One line where the transforms are not a readable alignment of `sections` sections."""
        path = self.transforms_file
        try:
            t = _load(path, os.path.getmtime(path))
            found = t["fields"].shape
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"stage {self.name!r}: {path}: not an alignment's transforms ({type(e).__name__}: {e}); "
                            "expected the transforms.npz that `connectome align` writes") from None
        if len(found) != 4 or found[0] != sections:
            raise UserError(f"stage {self.name!r}: {path} holds fields of {found[0] if found else 0} sections, "
                            f"expected {sections} (those of {self.input_addresses['labels']}): the transforms of "
                            "another stack")

    def before_blocks(self, on_worker, finished) -> None:
        """Check the transforms now that the alignment has run, and record in the output's metadata which frame it
        is in and how it was made (`connectome evaluate` reads it: `frames.volume_frame`)."""
        from connectome.alignment.frames import record_frame
        from connectome.io import open_volume

        if not os.path.isfile(self.transforms_file):
            raise UserError(f"stage {self.name!r}: {self.transforms_file}: no such file; expected the transforms of "
                            "an alignment (run `connectome align` first)")
        labels = self.input_addresses["labels"]
        self.check_transforms(open_volume(labels).shape[0])
        record_frame(self.output_addresses[self.target], self.frame, self.name, labels,
                     os.path.dirname(os.path.dirname(self.transforms_file)))

    def sources(self, sections: int) -> np.ndarray:
        """The section of the input each output section is carried from (the transforms' index: `carry`)."""
        raise NotImplementedError

    def carry(self, labels: Volume, z: int, source: int, fields: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
              yx: tuple[slice, slice], footprints: dict) -> tuple[np.ndarray, int]:
        """Output section z over the (y, x) slices `yx` from section `source` of `labels`, and how many of its
        pixels were not found."""
        raise NotImplementedError

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        t = _load(self.transforms_file, os.path.getmtime(self.transforms_file))
        nodes = (t["nodes_y"], t["nodes_x"])
        w = block.write_box
        yx = (slice(w.offset[1], w.end[1]), slice(w.offset[2], w.end[2]))
        out = np.zeros(w.shape, dtype=volumes[self.target].dtype)
        footprints = volumes["raw"].section_footprints()  # stored z -> the part of the raw section holding data
        sources = self.sources(volumes["labels"].shape[0])
        missed = 0
        for i, z in enumerate(range(w.offset[0], w.end[0])):
            out[i], n = self.carry(volumes["labels"], z, int(sources[z]), t["fields"], nodes, yx, footprints)
            missed += n
        volumes[self.target].write(w, out)
        return {"not_found": missed} if missed else {}


@register
class AlignLabelsStage(_CarryLabels):
    """A label volume of the raw frame (ground truth, annotations, a mask) in the aligned frame, as `aligned`."""

    name = "align_labels"
    outputs = (Output("aligned_labels"),)
    target, frame = "aligned_labels", "aligned"

    def sources(self, sections: int) -> np.ndarray:
        """Aligned section z shows stored section order[z] (the stored order where none)."""
        return np.arange(sections) if self.params.order is None else np.asarray(self.params.order, np.int64)

    def carry(self, labels, z, source, fields, nodes, yx, footprints) -> tuple[np.ndarray, int]:
        """Aligned section z: raw section `source` warped with field z."""
        return carry_section(labels, source, fields[z].astype(np.float64), nodes, yx, footprints.get(source)), 0


@register
class UnalignLabelsStage(_CarryLabels):
    """A label volume of the aligned frame (a segmentation of `aligned`) in the raw frame, section by section."""

    name = "unalign_labels"
    outputs = (Output("unaligned_labels"),)
    target, frame = "unaligned_labels", "raw"

    def sources(self, sections: int) -> np.ndarray:
        """Stored section z is aligned section k with order[k] = z."""
        return np.arange(sections) if self.params.order is None else positions(self.params.order)

    def carry(self, labels, z, source, fields, nodes, yx, footprints) -> tuple[np.ndarray, int]:
        """Raw (stored) section z: from aligned section `source`, the one it was warped to with its field."""
        return uncarry_section(labels, source, fields[source].astype(np.float64), nodes, yx, footprints.get(z))

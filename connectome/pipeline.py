"""Plan a chain of stages from a RunConfig (validating everything first), then execute it."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import zarr
from pydantic import ValidationError

from connectome.cluster import available_resources, is_remote, task_resources
from connectome.config import RunConfig, format_validation_error
from connectome.errors import UserError, unwritable
from connectome.geometry import Box, BlockGrid
from connectome.runner import StageReport, check_resumable, run_stage, starts_afresh
from connectome.stages import BlockStage, stage_class
from connectome.volumes import VolumeMeta, create_volume, open_volume


def resolve(name_or_address: str, config: RunConfig) -> str:
    """`raw` is the run's input; a bare name is a dataset in the output directory."""
    if name_or_address == "raw":
        return config.input
    if "/" in name_or_address or "://" in name_or_address or "#" in name_or_address:
        return name_or_address
    return os.path.join(config.output, name_or_address)


@dataclass
class PlannedStage:
    stage: BlockStage
    grid: BlockGrid
    creates: dict[str, tuple[str, VolumeMeta]] = field(default_factory=dict)


@dataclass
class Plan:
    config: RunConfig
    input_meta: VolumeMeta
    stages: list[PlannedStage]

    @property
    def work_dir(self) -> str:
        return self.config.output


def input_voxel_size(address: str, meta: VolumeMeta, wanted) -> tuple[float, float, float]:
    """The input's voxel size, checked against the one the user gave."""
    if wanted is not None:
        wanted = tuple(float(v) for v in wanted)
        if meta.voxel_size_known and not np.allclose(meta.voxel_size, wanted):
            raise UserError(
                f"voxel_size: {address} has voxel size {list(meta.voxel_size)} nm, "
                f"but {list(wanted)} was given"
            )
        return wanted
    if not meta.voxel_size_known:
        raise UserError(f"voxel_size: {address} carries no voxel size; give it (z y x, nm)")
    return meta.voxel_size


def fit_blocks(block_shape, chunk_shape, volume_shape):
    """Check that blocks are whole chunks, then shrink both to a volume smaller than them."""
    chunk_shape = tuple(chunk_shape or block_shape)
    BlockGrid.for_chunks(Box.from_shape(volume_shape), block_shape, chunk_shape)  # refuses a misfit
    chunks = tuple(min(c, s) for c, s in zip(chunk_shape, volume_shape))
    blocks = tuple(b if b < s else -(-s // c) * c for b, s, c in zip(block_shape, volume_shape, chunks))
    return blocks, chunks


def plan_run(config: RunConfig) -> Plan:
    """Check every input, stage, parameter and shape; write nothing."""
    raw = open_volume(config.input)
    raw_meta = raw.meta
    voxel_size = input_voxel_size(config.input, raw_meta, config.voxel_size)
    raw_meta = VolumeMeta(raw_meta.shape, raw_meta.dtype, raw_meta.chunk_shape, voxel_size,
                          raw_meta.offset, raw_meta.channels)
    block_shape, chunk_shape = fit_blocks(config.blocks.shape, config.blocks.chunk_shape, raw_meta.shape)
    known: dict[str, VolumeMeta] = {config.input: raw_meta}
    planned = []
    for i, sc in enumerate(config.stages):
        cls = stage_class(sc.stage)
        try:
            params = cls.Params.model_validate(sc.params)
        except ValidationError as e:
            raise UserError(format_validation_error(f"stages.{i}.params ({sc.stage})", e)) from None
        unknown = (set(sc.inputs) - set(cls.inputs)) | (set(sc.outputs) - set(cls.outputs))
        if unknown:
            raise UserError(
                f"stages.{i} ({sc.stage}): unknown input/output {sorted(unknown)}; "
                f"expected inputs {list(cls.inputs)} and outputs {list(cls.outputs)}"
            )
        inputs = {name: resolve(sc.inputs.get(name, name), config) for name in cls.inputs}
        outputs = {name: resolve(sc.outputs.get(name, name), config) for name in cls.outputs}
        tables = {name: os.path.join(config.output, "tables", name) for name in cls.tables + cls.reads_tables}
        metas = {}
        for name, address in inputs.items():
            if address not in known:
                known[address] = open_volume(address).meta
            metas[name] = known[address]
            if metas[name].shape != raw_meta.shape:
                raise UserError(f"stages.{i} ({sc.stage}): input {address} has shape {list(metas[name].shape)}, "
                                f"expected the raw volume's {list(raw_meta.shape)}")
        stage = cls(params, inputs, outputs, tables)
        stage.check_inputs(metas)
        multiple = stage.block_multiple()
        if any(b % m and b < s for b, m, s in zip(block_shape, multiple, raw_meta.shape)):
            raise UserError(f"block shape {list(block_shape)}: stage {sc.stage!r} needs a multiple of {list(multiple)}")
        grid = BlockGrid.for_chunks(Box.from_shape(raw_meta.shape), block_shape, chunk_shape, stage.context())
        creates = {}
        for name, spec in stage.output_specs(metas).items():
            meta = VolumeMeta(raw_meta.shape, np.dtype(spec.dtype), chunk_shape, voxel_size,
                              raw_meta.offset, spec.channels)
            creates[name] = (outputs[name], meta)
            known[outputs[name]] = meta
        planned.append(PlannedStage(stage, grid, creates))
    return Plan(config, raw_meta, planned)


def check_plan_resumable(plan: Plan, overwrite: bool) -> None:
    """Refuse (before any cluster starts) a re-run whose layout or parameters changed."""
    for planned in plan.stages:
        check_resumable(planned.stage, planned.grid, plan.work_dir, overwrite)


def create_outputs(planned: PlannedStage, overwrite: bool) -> None:
    for address, meta in planned.creates.values():
        create_volume(address, meta.shape, meta.dtype, meta.chunk_shape, meta.voxel_size,
                      meta.offset, meta.channels, overwrite=overwrite)


def _remote(client) -> bool:
    """A scheduler we did not start (tcp://): its workers, not our settings, say what it offers."""
    config = getattr(client, "_connectome_cluster_config", None)
    return config is None or is_remote(config.kind)


def execute(plan: Plan, client, *, overwrite: bool = False, progress: bool = True) -> list[StageReport]:
    """Create the output group and volumes, then run each stage (resuming finished blocks)."""
    out = plan.config.output
    try:
        if "://" not in out:
            os.makedirs(out, exist_ok=True)
            zarr.open_group(store=out, mode="a")
            with open(os.path.join(out, "run.json"), "w") as f:
                json.dump(plan.config.model_dump(mode="json"), f, indent=1)
    except OSError as e:
        raise unwritable(e, out) from None
    reports = []
    for planned in plan.stages:
        try:
            # finished blocks that are kept keep their output volumes: only a fresh start recreates them
            create_outputs(planned, overwrite and starts_afresh(planned.stage, planned.grid, plan.work_dir))
            for name in planned.stage.tables:
                os.makedirs(planned.stage.table_dirs[name], exist_ok=True)
            planned.stage.prepare(plan.work_dir)
        except OSError as e:
            raise unwritable(e, out) from None
        resources = task_resources(planned.stage.resources, available_resources(client))
        if planned.stage.resources and resources is None and _remote(client):
            print(f"connectome: {planned.stage.name}: no worker of this scheduler offers "
                  f"{', '.join(planned.stage.resources)} now; its blocks run on any worker", file=sys.stderr)
        reports.append(run_stage(planned.stage, planned.grid, client, plan.work_dir, overwrite=overwrite,
                                 retries=plan.config.retries, progress=progress, resources=resources))
    return reports

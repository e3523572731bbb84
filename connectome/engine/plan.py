"""Plan a chain of stages from a RunConfig (validating everything first, writing nothing), then
execute it: create the outputs, and run each stage's global step (if any) and its blocks."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import zarr
from pydantic import ValidationError

from connectome.cluster.client import available_resources, is_remote, task_resources
from connectome.cluster.session import config_of
from connectome.core.address import is_dataset_name
from connectome.core.errors import UserError, unwritable
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.config import RunConfig, format_validation_error
from connectome.engine.global_step import GlobalStep
from connectome.engine.markers import DoneMarkers
from connectome.engine.registry import stage_class
from connectome.engine.runner import (
    StageReport,
    check_resumable,
    check_step_resumable,
    producer_record,
    run_global_step,
    run_stage,
    starts_afresh,
)
from connectome.engine.stage import BlockStage, Table
from connectome.io import VolumeMeta, create_volume, open_volume
from connectome.io.tables import check_format, read_format


def resolve(name_or_address: str, config: RunConfig) -> str:
    """`raw` is the run's input; a bare name is a dataset in the output directory."""
    if name_or_address == "raw":
        return config.input
    if not is_dataset_name(name_or_address):
        return name_or_address
    return os.path.join(config.output, name_or_address)


@dataclass
class PlannedStage:
    stage: BlockStage
    grid: BlockGrid
    creates: dict[str, tuple[str, VolumeMeta]] = field(default_factory=dict)
    table_producers: dict[str, dict] = field(default_factory=dict)  # read table -> its producer in this plan

    def step(self) -> GlobalStep | None:
        return self.stage.global_step()


@dataclass
class Plan:
    config: RunConfig
    input_meta: VolumeMeta
    stages: list[PlannedStage]
    work_dir: str = ""  # where done-markers live; default: the output directory
    record_config: bool = True  # write run.json and an OME-Zarr group in the output directory

    def __post_init__(self) -> None:
        self.work_dir = self.work_dir or self.config.output


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


def plan_run(config: RunConfig, work_dir: str = "", record_config: bool = True) -> Plan:
    """Check every input, stage, parameter and shape; write nothing."""
    raw = open_volume(config.input)
    raw_meta = raw.meta
    voxel_size = input_voxel_size(config.input, raw_meta, config.voxel_size)
    raw_meta = VolumeMeta(raw_meta.shape, raw_meta.dtype, raw_meta.chunk_shape, voxel_size,
                          raw_meta.offset, raw_meta.channels)
    block_shape, chunk_shape = fit_blocks(config.blocks.shape, config.blocks.chunk_shape, raw_meta.shape)
    known: dict[str, VolumeMeta] = {config.input: raw_meta}
    writers: dict[str, BlockStage] = {}  # address -> the stage of this plan that writes it
    table_writers: dict[str, PlannedStage] = {}  # table name -> the planned stage that writes it
    planned: list[PlannedStage] = []
    for i, sc in enumerate(config.stages):
        cls = stage_class(sc.stage)
        where = f"stages.{i} ({sc.stage})"
        try:
            params = cls.Params.model_validate(sc.params)
        except ValidationError as e:
            raise UserError(format_validation_error(f"stages.{i}.params ({sc.stage})", e)) from None
        unknown = (set(sc.inputs) - set(cls.input_names())) | (set(sc.outputs) - set(cls.output_names()))
        if unknown:
            raise UserError(
                f"{where}: unknown input/output {sorted(unknown)}; "
                f"expected inputs {list(cls.input_names())} and outputs {list(cls.output_names())}"
            )
        inputs = {name: resolve(sc.inputs.get(name, name), config) for name in cls.input_names()}
        outputs = {name: resolve(sc.outputs.get(name, name), config) for name in cls.output_names()}
        read_tables = [t if isinstance(t, str) else t.name for t in cls.reads_tables]
        tables = {name: os.path.join(config.output, "tables", name) for name in cls.table_names() + tuple(read_tables)}
        metas = {}
        for name, address in inputs.items():
            if address not in known:
                known[address] = open_volume(address).meta
            metas[name] = known[address]
            if metas[name].shape != raw_meta.shape:
                raise UserError(f"{where}: input {address} has shape {list(metas[name].shape)}, "
                                f"expected the raw volume's {list(raw_meta.shape)}")
        stage = cls(params, inputs, outputs, tables)
        stage.params = stage.check_upstream({name: writers.get(address) for name, address in inputs.items()})
        stage.check_inputs(metas)
        multiple = stage.block_multiple()
        if any(b % m and b < s for b, m, s in zip(block_shape, multiple, raw_meta.shape)):
            raise UserError(f"block shape {list(block_shape)}: stage {sc.stage!r} needs a multiple of {list(multiple)}")
        grid = BlockGrid.for_chunks(Box.from_shape(raw_meta.shape), block_shape, chunk_shape, stage.context())
        creates = {}
        for name, spec in stage.output_specs(metas).items():
            meta = VolumeMeta(spec.shape or raw_meta.shape, np.dtype(spec.dtype), spec.chunk_shape or chunk_shape,
                              spec.voxel_size or voxel_size, raw_meta.offset, spec.channels)
            creates[name] = (outputs[name], meta)
            known[outputs[name]] = meta
            writers[outputs[name]] = stage
        producers = {t: producer_record(table_writers[t].stage, table_writers[t].grid)
                     for t in read_tables if t in table_writers}
        entry = PlannedStage(stage, grid, creates, producers)
        for t in cls.table_names():
            table_writers[t] = entry
        planned.append(entry)
    return Plan(config, raw_meta, planned, work_dir, record_config)


def step_fingerprint(planned: PlannedStage, step: GlobalStep) -> dict:
    """A global step's fingerprint: its own, plus the producer of each table its stage reads."""
    tables = {}
    for name in planned.stage.reads_tables:
        name = name if isinstance(name, str) else name.name
        tables[name] = planned.table_producers.get(name) or (read_format(planned.stage.table_dirs[name]) or {}).get(
            "producer")
    return {**step.fingerprint(), "input_tables": tables, "blocks": 1}


def check_plan_resumable(plan: Plan, overwrite: bool) -> None:
    """Refuse (before any cluster starts) a re-run whose layout or parameters changed."""
    for planned in plan.stages:
        step = planned.step()
        if step is not None:
            check_step_resumable(step.name, step_fingerprint(planned, step), plan.work_dir, overwrite)
        check_resumable(planned.stage, planned.grid, plan.work_dir, overwrite)


def create_outputs(planned: PlannedStage, overwrite: bool) -> None:
    for address, meta in planned.creates.values():
        create_volume(address, meta.shape, meta.dtype, meta.chunk_shape, meta.voxel_size,
                      meta.offset, meta.channels, overwrite=overwrite)


def _record_config(plan: Plan) -> None:
    out = plan.config.output
    if "://" in out:
        return
    os.makedirs(out, exist_ok=True)
    zarr.open_group(store=out, mode="a")
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(plan.config.model_dump(mode="json"), f, indent=1)


def execute(plan: Plan, client, *, overwrite: bool = False, progress: bool = True) -> list[StageReport]:
    """Create the output group and volumes, then run each stage (resuming finished blocks)."""
    try:
        if plan.record_config:
            _record_config(plan)
    except OSError as e:
        raise unwritable(e, plan.config.output) from None
    offered = available_resources(client)
    cluster_config = config_of(client)
    remote = cluster_config is None or is_remote(cluster_config.kind)  # its workers say what it offers
    reports: list[StageReport] = []
    for planned in plan.stages:
        stage = planned.stage
        try:
            # finished blocks that are kept keep their output volumes: only a fresh start recreates them
            create_outputs(planned, overwrite and starts_afresh(stage, planned.grid, plan.work_dir))
            for name in stage.table_names():
                os.makedirs(stage.table_dirs[name], exist_ok=True)
        except OSError as e:
            raise unwritable(e, plan.work_dir) from None
        for t in stage.reads_tables:
            if isinstance(t, Table):
                check_format(stage.table_dirs[t.name], t.name, t.version)
        resources = task_resources(stage.resources, offered)
        if stage.resources and resources is None and remote:
            print(f"connectome: {stage.name}: no worker of this scheduler offers "
                  f"{', '.join(stage.resources)} now; its blocks run on any worker", file=sys.stderr)
        step = planned.step()
        if step is not None:
            rerun = any(r.ran for r in reports)  # its inputs were (partly) rewritten in this run
            step_report = run_global_step(step, step_fingerprint(planned, step), client, plan.work_dir,
                                          overwrite=overwrite, rerun=rerun, retries=plan.config.retries,
                                          resources=task_resources({}, offered))
            reports.append(step_report)
            if step_report.ran:  # blocks finished before came from an older result of the step
                DoneMarkers(plan.work_dir, stage.name).clear()
        reports.append(run_stage(stage, planned.grid, client, plan.work_dir, overwrite=overwrite,
                                 retries=plan.config.retries, progress=progress, resources=resources))
    return reports

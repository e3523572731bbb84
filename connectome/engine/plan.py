"""Plan a chain of stages from a RunConfig (validating everything first, writing nothing), then
execute it: create the outputs, and run each stage's global step (if any) and its blocks."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np
import zarr
from pydantic import ValidationError

from connectome.cluster.client import available_resources, connect, is_remote, task_resources
from connectome.cluster.session import config_of
from connectome.core.address import is_dataset_name, lies_within
from connectome.core.errors import StageFailed, UserError, unwritable
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.config import RunConfig, format_validation_error
from connectome.engine.global_step import GlobalStep
from connectome.engine.inputs import check_input_chunks as check_input_chunks  # (commands import it from here)
from connectome.engine.inputs import input_voxel_size
from connectome.engine.litter import remove_litter
from connectome.engine.lock import lock_path, output_lock
from connectome.engine.markers import DoneMarkers, relative_paths
from connectome.engine.registry import stage_class
from connectome.engine.run_record import record_run
from connectome.engine.runner import (
    StageReport,
    check_resumable,
    check_step_resumable,
    fingerprint,
    producer_record,
    run_global_step,
    run_stage,
    starts_afresh,
)
from connectome.engine.stage import BlockStage, Table
from connectome.engine.stage_list import write_stage_list
from connectome.engine.staleness import forget_stale
from connectome.io import VolumeMeta, address_kind, create_volume, open_volume, same_voxel_size
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
    # the same as connectome named them before 2026-12 (by the hash of paths in full: `producer_record`)
    legacy_producers: dict[str, dict] = field(default_factory=dict)

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


def fit_blocks(block_shape, chunk_shape, volume_shape):
    """Check that blocks are whole chunks, then shrink both to a volume smaller than them."""
    chunk_shape = tuple(chunk_shape or block_shape)
    BlockGrid.for_chunks(Box.from_shape(volume_shape), block_shape, chunk_shape)  # refuses a misfit
    chunks = tuple(min(c, s) for c, s in zip(chunk_shape, volume_shape))
    blocks = tuple(b if b < s else -(-s // c) * c for b, s, c in zip(block_shape, volume_shape, chunks))
    return blocks, chunks


def check_output_path(out: str) -> None:
    """Refuse an output directory that is a file or lies under one."""
    if "://" in out:
        return
    path = os.path.abspath(out)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    if path and not os.path.isdir(path):
        where = "is a file" if path == os.path.abspath(out) else f"lies under {path}, which is a file"
        raise UserError(f"output: {out} {where}; expected a folder (or a path where one can be created)")


def shown(message: str, addresses: dict[str, str]) -> str:
    """`message` with each address of `addresses` (longest first) replaced by how it is shown, where it stands
    whole (not the start of a longer path, such as a file inside it)."""
    import re

    for address in sorted(addresses, key=len, reverse=True):
        pattern = re.escape(address) + r"(?![\w/.\-\[])"
        message = re.sub(pattern, addresses[address].replace("\\", "\\\\"), message)
    return message


def plan_run(config: RunConfig, work_dir: str = "", record_config: bool = True) -> Plan:
    """Check every input, stage, parameter and shape; write nothing."""
    check_output_path(config.output)
    if work_dir:
        check_output_path(work_dir)
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
    shown_addresses: dict[str, str] = {}  # an address a stage writes -> how messages name it (`BlockStage.shown_as`)
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
        optional = cls.optional_input_names()
        inputs = {name: resolve(sc.inputs.get(name, name), config) for name in cls.input_names()
                  if name in sc.inputs or name not in optional}
        outputs = {name: resolve(sc.outputs.get(name, name), config) for name in cls.output_names()}
        read_tables = [t if isinstance(t, str) else t.name for t in cls.reads_tables]
        tables = {name: os.path.join(config.output, "tables", name) for name in cls.table_names() + tuple(read_tables)}
        metas = {}
        for name, address in inputs.items():
            if address not in known:
                if not os.path.exists(address) and "://" not in address and "#" not in address \
                        and not address.endswith("]") and lies_within(address, config.output):
                    made = sorted(os.path.relpath(a, config.output) for a in writers
                                  if lies_within(a, config.output))
                    raise UserError(f"{where}: input {name}: {sc.inputs.get(name, name)!r} is neither a volume on "
                                    f"disk ({address}) nor written by an earlier stage; earlier stages write "
                                    f"{made or 'nothing'}")
                known[address] = open_volume(address).meta
            metas[name] = known[address]
            if metas[name].shape != raw_meta.shape:
                raise UserError(f"{where}: input {address} has shape {list(metas[name].shape)}, "
                                f"expected the raw volume's {list(raw_meta.shape)}")
            if metas[name].voxel_size_known and not same_voxel_size(metas[name].voxel_size, raw_meta.voxel_size):
                raise UserError(f"{where}: input {address} has voxel size {list(metas[name].voxel_size)} nm, "
                                f"expected the raw volume's {list(raw_meta.voxel_size)} nm (a segmentation of other "
                                f"data, or the wrong --voxel-size)")
        for name in cls.writes_into:
            if not lies_within(inputs[name], config.output) and not getattr(params, "in_place", False):
                raise UserError(f"{where}: {inputs[name]} lies outside the output directory {config.output}, and "
                                f"{sc.stage} would write into it; give params {{in_place: true}} to add to it there, "
                                "or `connectome ingest` it into the output directory first")
        stage = cls(params, inputs, outputs, tables)
        # the inputs no stage of this run writes, this one included (the raw, wherever it lies): their blocks record the
        # files they read
        stage.recorded_inputs = frozenset(name for name, address in inputs.items() if address not in writers
                                          and address not in outputs.values() and name not in cls.writes_into)
        try:
            stage.params = stage.check_upstream({name: writers.get(address) for name, address in inputs.items()})
            stage.check_inputs(metas)
        except UserError as e:
            raise UserError(shown(str(e), shown_addresses)) from None
        stage.check_table_producers({t: table_writers[t].stage for t in read_tables if t in table_writers})
        for name, (source, how) in cls.shown_as.items():
            shown_addresses[outputs[name]] = f"{shown_addresses.get(inputs[source], inputs[source])} ({how})"
        multiple = stage.block_multiple()
        if any(b % m and b < s for b, m, s in zip(block_shape, multiple, raw_meta.shape)):
            why = stage.block_multiple_reason()
            raise UserError(f"block shape {list(block_shape)}: stage {sc.stage!r} needs a multiple of {list(multiple)}"
                            + (f" ({why})" if why else ""))
        grid = BlockGrid.for_chunks(Box.from_shape(raw_meta.shape), block_shape, chunk_shape, stage.context())
        creates = {}
        for name, spec in stage.output_specs(metas).items():
            meta = VolumeMeta(spec.shape or raw_meta.shape, np.dtype(spec.dtype), spec.chunk_shape or chunk_shape,
                              spec.voxel_size or voxel_size, raw_meta.offset, spec.channels)
            creates[name] = (outputs[name], meta)
            known[outputs[name]] = meta
            writers[outputs[name]] = stage
        producers = {t: producer_record(table_writers[t].stage, table_writers[t].grid, work_dir or config.output)
                     for t in read_tables if t in table_writers}
        legacy = {t: producer_record(table_writers[t].stage, table_writers[t].grid)
                  for t in read_tables if t in table_writers}
        entry = PlannedStage(stage, grid, creates, producers, legacy)
        for t in cls.table_names():
            table_writers[t] = entry
        planned.append(entry)
    return Plan(config, raw_meta, planned, work_dir, record_config)


def step_fingerprint(planned: PlannedStage, step: GlobalStep, legacy: bool = False) -> dict:
    """A global step's fingerprint: its own, plus the producer of each table its stage reads (`legacy`: named as
    connectome named them before 2026-12, which the steps of outputs made then recorded; `producer_record`)."""
    producers = planned.legacy_producers if legacy else planned.table_producers
    tables = {}
    for name in planned.stage.reads_tables:
        name = name if isinstance(name, str) else name.name
        tables[name] = producers.get(name) or (read_format(planned.stage.table_dirs[name]) or {}).get("producer")
    return {**step.fingerprint(), "input_tables": tables, "blocks": 1}


def check_plan_resumable(plan: Plan, overwrite: bool) -> None:
    """Refuse (before any cluster starts) a re-run whose layout or parameters changed, whose stages would
    write over what a stage this plan does not run wrote (another `--method` on a finished output), or whose
    stages read tables that no stage of the plan writes and that are not on disk (`check_read_tables`)."""
    check_read_tables(plan)
    if not overwrite:
        check_other_writers(plan)
    for planned in plan.stages:
        step = planned.step()
        if step is not None:
            check_step_resumable(step.name, step_fingerprint(planned, step), plan.work_dir, overwrite,
                                 step_fingerprint(planned, step, legacy=True))
        check_resumable(planned.stage, planned.grid, plan.work_dir, overwrite)


def check_read_tables(plan: Plan) -> None:
    """One line where a stage reads tables (of a format version) that no earlier stage of the plan writes and that
    are missing or of another format on disk; checked before anything is written (it was checked only once the
    output group, run.json and the stage's output volumes had been created)."""
    for planned in plan.stages:
        for t in planned.stage.reads_tables:
            if isinstance(t, Table) and t.name not in planned.table_producers:
                try:
                    check_format(planned.stage.table_dirs[t.name], t.name, t.version)
                except UserError as e:
                    raise UserError(f"stage {planned.stage.name!r}: {e}") from None


def other_writers(plan: Plan) -> list[tuple[str, str, str]]:
    """(recorded stage, address, this plan's stage) for each volume this plan writes that a stage recorded in the
    work directory, which this plan does not run, finished blocks of. Addresses are compared as fingerprints store
    them: relative to the work directory where they lie inside it (`markers.relative_paths`); named in full."""
    ours = {p.stage.name for p in plan.stages}
    base = os.path.abspath(plan.work_dir)
    writes = {relative_paths(address, base): (address, p.stage.name)
              for p in plan.stages for address in p.stage.output_addresses.values()}
    done = os.path.join(plan.work_dir, ".connectome", "done")
    found: list[tuple[str, str, str]] = []
    for name in sorted(os.listdir(done)) if os.path.isdir(done) else []:
        if name in ours:
            continue
        markers = DoneMarkers(plan.work_dir, name)
        try:
            recorded = (markers.fingerprint() or {}).get("outputs") or {}
        except UserError:  # an unreadable fingerprint of a stage this plan does not run: nothing to compare
            continue
        stored = [relative_paths(a, base) for a in (recorded.values() if isinstance(recorded, dict) else [])]
        clashes = [a for a in stored if isinstance(a, str) and a in writes]
        if clashes and markers.count() > 0:
            found.extend((name, *writes[a]) for a in clashes)
    return found


def check_other_writers(plan: Plan) -> None:
    """One line where this plan would write over a volume another stage finished blocks of (`other_writers`)."""
    for name, address, ours in other_writers(plan)[:1]:
        raise UserError(f"{address}: written by stage {name!r} of an earlier run, which this run does not run; its "
                        f"stage {ours!r} would write over it. Pass --overwrite to replace it (the earlier stage's "
                        f"finished blocks are then forgotten), or choose another output directory")


def changed_outputs(plan: Plan) -> list[tuple[PlannedStage, str, str]]:
    """(planned stage, address, what differs) for each existing output volume (zarr, local precomputed) that does
    not match the plan (another shape, dtype, chunk shape, channel count, voxel size or offset): it must be
    recreated."""
    from connectome.io.precomputed import local_path

    out = []
    for planned in plan.stages:
        for address, meta in planned.creates.values():
            kind = address_kind(address)
            marker = (os.path.join(address, "zarr.json") if kind == "zarr"
                      else os.path.join(local_path(address) or "", "info") if kind == "precomputed" else "")
            if not marker or not os.path.isfile(marker) or (kind == "precomputed" and local_path(address) is None):
                continue
            try:
                have = open_volume(address).meta
            except (UserError, ValueError) as e:  # its metadata damaged (not an I/O error): only recreating it helps
                why = str(e).splitlines()[0] if str(e) else repr(e)
                out.append((planned, address, f"metadata that cannot be read ({why})"))
                continue
            chunks = tuple(min(c, s) for c, s in zip(meta.chunk_shape, meta.shape))
            want = (tuple(meta.shape), np.dtype(meta.dtype), chunks, meta.channels, tuple(meta.offset))
            found = (have.shape, have.dtype, have.chunk_shape, have.channels, tuple(have.offset))
            names = ("shape", "dtype", "chunk shape", "channels", "offset")
            diff = [f"{n} {list(f) if isinstance(f, tuple) else f} (now {list(w) if isinstance(w, tuple) else w})"
                    for n, f, w in zip(names, found, want) if f != w]
            if have.voxel_size_known and not same_voxel_size(have.voxel_size, meta.voxel_size):
                diff.append(f"voxel size {list(have.voxel_size)} nm (now {list(meta.voxel_size)})")
            if diff:
                out.append((planned, address, ", ".join(diff)))
    return out


def check_outputs(plan: Plan, overwrite: bool) -> None:
    """Refuse, before anything is written, outputs that exist with another layout (unless overwrite)."""
    if overwrite:
        return
    for planned, address, diff in changed_outputs(plan)[:1]:
        raise UserError(f"{address}: exists with {diff}; pass --overwrite to discard it and its finished "
                        f"blocks of stage {planned.stage.name!r}")


def create_outputs(planned: PlannedStage, overwrite: bool) -> None:
    for address, meta in planned.creates.values():
        try:
            create_volume(address, meta.shape, meta.dtype, meta.chunk_shape, meta.voxel_size,
                          meta.offset, meta.channels, overwrite=overwrite)
        except OSError as e:  # the store names a file by its key (`zarr.json`): the line names it in full
            if isinstance(e.filename, str) and "://" not in address and not os.path.isabs(e.filename):
                e.filename = os.path.join(address, e.filename)
            raise unwritable(e, address) from None


def _create_group(plan: Plan) -> None:
    """The output directory as an OME-Zarr group (before its volumes are created)."""
    out = plan.config.output
    if "://" in out:
        return
    os.makedirs(out, exist_ok=True)
    zarr.open_group(store=out, mode="a")


def _record_config(plan: Plan) -> None:
    """Write run.json, the record of the last run, and keep it in runs.json beside the records of the other runs
    that wrote into the directory (`engine.run_record`): only once every stage of the run has finished, so they
    never name parameters whose outputs are not (all) written (a refused or failed run leaves the earlier records)."""
    out = plan.config.output
    if "://" in out:
        return
    record_run(out, plan.config.model_dump(mode="json"))


def stage_complete(planned: PlannedStage, work_dir: str, checked: bool = False) -> bool:
    """Every block of the stage (and its global step) finished with this plan's fingerprints, and their output
    chunks as they wrote them (`checked`: this run's `forget_stale` compared them already)."""
    markers = DoneMarkers(work_dir, planned.stage.name)
    if not markers.resumes(fingerprint(planned.stage, planned.grid)):
        return False
    step = planned.step()
    if step is not None:
        step_markers = DoneMarkers(work_dir, step.name)
        if not step_markers.same(step_fingerprint(planned, step), step_fingerprint(planned, step, legacy=True)):
            return False
        if not step_markers.is_done(0):
            return False
    return markers.count() == len(planned.grid) and (checked or not markers.lost_blocks())


def execute(plan: Plan, client, *, overwrite: bool = False, progress: bool = True) -> list[StageReport]:
    """Take the output's lock, reach the cluster where a stage has work, create the output group and volumes,
    run each stage (resuming finished blocks), and record the run in run.json once all of them are done. A run
    with nothing left to do does not touch `client` (which may be lazy). A refused run (UserError) into an output
    directory that did not exist before it, with no block finished, leaves no directory behind."""
    made = [d for d in dict.fromkeys((plan.work_dir, plan.config.output)) if "://" not in d and not os.path.exists(d)]
    try:
        lock = output_lock(plan.work_dir)
        lock.__enter__()
    except OSError as e:
        raise unwritable(e, plan.work_dir) from None
    try:
        return _execute_locked(plan, client, overwrite, progress)
    except StageFailed as e:
        e.log_file = _failure_log(plan.work_dir, e)
        raise
    except UserError:
        if plan.work_dir in made and not _any_block_finished(plan):  # a refused run leaves no new output behind
            _remove_new_output([plan.work_dir], lock_path(plan.work_dir))  # (only the directory it holds the lock of)
        raise
    finally:
        lock.__exit__(None, None, None)
        for directory in (os.path.join(plan.work_dir, ".connectome"), *made) if made else ():
            with contextlib.suppress(OSError):  # only where empty (another run may hold the lock by now)
                os.rmdir(directory)


def _any_block_finished(plan: Plan) -> bool:
    """Whether a stage (or global step) of the plan has a finished block recorded in the work directory."""
    done = os.path.join(plan.work_dir, ".connectome", "done")
    try:
        names = os.listdir(done)
    except OSError:
        return False
    try:
        return any(DoneMarkers(plan.work_dir, name).count() for name in names)
    except (OSError, UserError):
        return True


def _remove_new_output(made: list[str], lock: str) -> None:
    """Remove what a refused run created in output directories that did not exist before it, but the lock it
    holds (its folder and the directories go once the lock is released, where empty)."""
    for directory in made:
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                if path == os.path.dirname(lock):
                    for inner in os.listdir(path):
                        if os.path.join(path, inner) != lock:
                            _remove(os.path.join(path, inner))
                    continue
            _remove(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _failure_log(work_dir: str, error: StageFailed) -> str | None:
    """Write a failed block's traceback to `<work_dir>/.connectome/logs/failure.log`; its path, or None where it
    cannot be written (a full disk: the reason is added to `error` as a note, for its one line). The log is written
    aside and renamed into place, so a write that fails keeps the previous run's log whole and leaves no temporary
    file (one a killed write leaves is litter: `engine.litter`)."""
    path = os.path.join(work_dir, ".connectome", "logs", "failure.log")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            f.write(f"{error}\n\n{error.traceback_text}\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        error.add_note(f"the traceback could not be saved in {os.path.dirname(path)}: {e.strerror or e}")
        return None
    return path


def _execute_locked(plan: Plan, client, overwrite: bool, progress: bool) -> list[StageReport]:
    check_plan_resumable(plan, overwrite)  # again: another run may have finished meanwhile
    if "://" not in plan.work_dir:
        remove_litter(plan.work_dir)  # temporary files of a killed run's writes (the directory whose lock is held)
    check_outputs(plan, overwrite)
    checked = "://" not in plan.work_dir  # the output chunks of every stage's finished blocks: once, here
    if checked:
        try:  # blocks whose output was lost or whose input changed, and the later blocks that read them
            forget_stale(plan)
        except OSError as e:
            raise unwritable(e, plan.work_dir) from None
    changed = {id(p) for p, _, _ in changed_outputs(plan)} if overwrite else set()
    complete: dict[int, bool] = {}  # planned stage -> finished before this run (asked until one is not)
    work = changed or not all(complete.setdefault(id(p), _complete(p, plan.work_dir, checked)) for p in plan.stages)
    if work:
        connect(client)  # there is work: the cluster is reached (or refused) before anything is written
    try:
        if plan.record_config:
            _create_group(plan)
        if work and "://" not in plan.work_dir:  # what `status` lists should this run be killed
            write_stage_list(plan.work_dir, _stage_list(plan))
    except OSError as e:
        raise unwritable(e, plan.config.output) from None
    facts: dict = {}

    def offered() -> dict:
        if not facts:  # asked only when a stage has work: a re-run with nothing to do starts no cluster
            cluster_config = config_of(client)
            facts["offered"] = available_resources(client)
            facts["remote"] = cluster_config is None or is_remote(cluster_config.kind)
        return facts["offered"]

    if overwrite:  # what another stage wrote is replaced: its finished blocks and tables no longer describe it
        for name in {name for name, _, _ in other_writers(plan)}:
            DoneMarkers(plan.work_dir, name).clear()
            with contextlib.suppress(UserError):  # (a stage of another version of connectome: markers only)
                for table in stage_class(name).table_names():
                    shutil.rmtree(os.path.join(plan.config.output, "tables", table), ignore_errors=True)
    reports: list[StageReport] = []
    for planned in plan.stages:
        stage = planned.stage
        afresh = id(planned) in changed
        if afresh:  # an output of another layout: its finished blocks go with it, and so do their tables
            DoneMarkers(plan.work_dir, stage.name).clear()
            for name in stage.table_names():
                shutil.rmtree(stage.table_dirs[name], ignore_errors=True)
        try:
            # finished blocks that are kept keep their output volumes: only a fresh start recreates them
            create_outputs(planned, afresh or (overwrite and starts_afresh(stage, planned.grid, plan.work_dir)))
            for name in stage.table_names():
                os.makedirs(stage.table_dirs[name], exist_ok=True)
        except OSError as e:
            raise unwritable(e, plan.work_dir) from None
        for t in stage.reads_tables:
            if isinstance(t, Table):
                check_format(stage.table_dirs[t.name], t.name, t.version)
        rerun = any(r.ran for r in reports)  # inputs of a global step were (partly) rewritten in this run
        idle = not rerun and not afresh and (complete[id(planned)] if id(planned) in complete
                                             else stage_complete(planned, plan.work_dir, checked))
        resources = None if idle else task_resources(stage.resources, offered())
        if not idle and stage.resources and resources is None and facts["remote"]:
            print(f"connectome: {stage.name}: no worker of this scheduler offers "
                  f"{', '.join(stage.resources)} now; its blocks run on any worker", file=sys.stderr)
        step = planned.step()
        if step is not None:
            step_report = run_global_step(step, step_fingerprint(planned, step), client, plan.work_dir,
                                          overwrite=overwrite, rerun=rerun, retries=plan.config.retries,
                                          resources=None if idle else task_resources({}, offered()),
                                          legacy=step_fingerprint(planned, step, legacy=True))
            reports.append(step_report)
            if step_report.ran:  # blocks finished before came from an older result of the step
                DoneMarkers(plan.work_dir, stage.name).clear()
                if "://" not in plan.work_dir:  # and so did the later stages' blocks that read them
                    after = plan.stages.index(planned) + 1
                    forget_stale(plan, {a: None for a in stage.output_addresses.values()}, after)
        reports.append(run_stage(stage, planned.grid, client, plan.work_dir, overwrite=overwrite,
                                 retries=plan.config.retries, progress=progress, resources=resources,
                                 checked=checked))
    if plan.record_config:
        _record_config(plan)
    return reports


def _stage_list(plan: Plan) -> list[tuple[str, int]]:
    """(name, blocks) of each global step and stage of the plan, in the order they run."""
    out = []
    for planned in plan.stages:
        step = planned.step()
        if step is not None:
            out.append((step.name, 1))
        out.append((planned.stage.name, len(planned.grid)))
    return out


def _complete(planned: PlannedStage, work_dir: str, checked: bool) -> bool:
    """`stage_complete`, False where the stage's fingerprint cannot be read (an --overwrite run starts it again)."""
    try:
        return stage_complete(planned, work_dir, checked)
    except UserError:
        return False


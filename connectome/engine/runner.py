"""Run a blockwise stage on a Dask cluster: bounded windows, adaptive batching, resume, retries.

One Dask task runs a batch of blocks (consecutive ones, or, for a stage whose blocks read their
earlier neighbours' output, blocks whose dependencies are done: `engine.order`): a super-block
that the task walks itself, so the scheduler holds one task per super-block and at most a window
of them at once. The task records its finished blocks in a few marker files (`engine.markers`),
so a retried or re-run batch redoes only the blocks without a marker. Batch sizes adapt to the
measured time per block (about `target_task_seconds` per task, but always several tasks per
worker thread), which keeps the scheduler's overhead per block far below one task's. A stage's
global step (`run_global_step`) runs as one task before its blocks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np
from distributed import Client, as_completed
from distributed.scheduler import KilledWorker

from connectome.cluster.pools import raise_pool_failure
from connectome.cluster.session import scaler_of
from connectome.core.errors import StageFailed, UserError, unwritable
from connectome.core.geometry import BlockGrid
from connectome.engine.global_step import GlobalStep
from connectome.engine.markers import DoneMarkers, chunk_record, input_record, relative_paths
from connectome.engine.order import BlockOrder
from connectome.engine.stage import BlockStage
from connectome.io.tables import remove_litter, write_format

COMPACT_EVERY = 1024  # finished tasks between two compactions of the marker files


@dataclass
class StageReport:
    stage: str
    blocks: int
    skipped: int
    ran: int
    tasks: int
    seconds: float
    summaries: dict[int, dict] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("stage", "blocks", "skipped", "ran", "tasks", "seconds")}


def fingerprint(stage: BlockStage, grid: BlockGrid) -> dict:
    """What a stage's done-markers are valid for: its parameters, volumes and block layout."""
    return {**stage.fingerprint(), "layout": grid.layout(), "blocks": len(grid)}


def producer_record(stage: BlockStage, grid: BlockGrid, work_dir: str | None = None) -> dict:
    """Names the run of `stage` that writes a table: readers' fingerprints depend on it. It hashes the stage's
    fingerprint with its paths inside `work_dir` relative to it (as its done-markers store it), so a moved output
    directory names the same run; without `work_dir`, with every path in full, as connectome did before 2026-12
    (the tables and global steps of outputs made then name their producer so: `legacy` fingerprints)."""
    record = DoneMarkers.normalised(fingerprint(stage, grid))
    if work_dir is not None:
        record = relative_paths(record, os.path.abspath(work_dir))
    text = json.dumps(record, sort_keys=True)
    return {"stage": stage.name, "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16]}


def left_out_params(stage: BlockStage, recorded: dict) -> dict:
    """The parameters that the stage's fingerprint `recorded` leaves out (at a default, so that runs from before
    them resume: `tta` at 1, `precision` at auto, ...), at the value asked (`fingerprint_params`; None where not
    given): a refusal names them so (`tta 4 -> 1`, not `tta 4 -> unset`; `DoneMarkers.check`)."""
    params = recorded.get("params")
    kept = params if isinstance(params, dict) else {}
    return {k: v for k, v in stage.fingerprint_params().items() if k not in kept}


def check_resumable(stage: BlockStage, grid: BlockGrid, work_dir: str, overwrite: bool) -> None:
    recorded = fingerprint(stage, grid)
    DoneMarkers(work_dir, stage.name).check(recorded, overwrite, left_out=left_out_params(stage, recorded))


def starts_afresh(stage: BlockStage, grid: BlockGrid, work_dir: str) -> bool:
    """True when no finished block of this stage would be kept (so its outputs may be recreated)."""
    markers = DoneMarkers(work_dir, stage.name)
    return not markers.resumes(fingerprint(stage, grid)) or not markers.count()


def _written_chunks(stage: BlockStage, volumes: dict, box) -> tuple[dict, dict]:
    """What a block wrote, per output: [key, size, mtime_ns, crc32] of each chunk, and the roots."""
    chunks, roots = {}, {}
    for name in stage.output_names():
        volume = volumes.get(name)
        stored = volume.stored_chunks(box) if volume is not None else None
        if not stored:
            continue
        root, keys = stored
        roots[name] = root
        chunks[name] = [[key, *chunk_record(os.path.join(root, key))] for key in keys]
    return chunks, roots


def _read_files(stage: BlockStage, volumes: dict, box) -> tuple[dict, dict]:
    """What a block reads of the inputs whose files it records (`BlockStage.recorded_inputs`): key -> [size,
    mtime_ns] of each local file holding `box`, and their directories."""
    records, roots = {}, {}
    for name in stage.recorded_inputs:
        volume = volumes.get(name)
        source = volume.source_files(box) if volume is not None else None
        if source and source[0]:
            roots[name], keys = source
            records[name] = {key: input_record(os.path.join(roots[name], key)) for key in keys}
    return records, roots


def run_batch(stage: BlockStage, grid: BlockGrid, indices: list[int], work_dir: str, task: str = "") -> dict:
    """Worker side: process the blocks of one batch (a super-block of consecutive or ready blocks)
    that an earlier attempt of this task did not finish; their markers are written as they go."""
    markers = DoneMarkers(work_dir, stage.name)
    task = task or uuid.uuid4().hex[:12]
    writer = markers.writer(task)
    finished = markers.task_done(task)
    volumes = None
    start = time.perf_counter()
    ran = 0
    try:
        for i in indices:
            if i in finished:
                continue
            if volumes is None:
                volumes = stage.open_volumes()
            block = grid.block(i)
            read, read_roots = _read_files(stage, volumes, block.read_box)  # (as they are when read)
            try:
                summary = stage.process(block, volumes)
            except Exception as e:
                text = traceback.format_exc() + _unnamed_output(e, stage)
                raise StageFailed(stage.name, i, str(block.write_box), text) from None
            chunks, roots = _written_chunks(stage, volumes, block.write_box)
            writer.add(i, summary, chunks, roots, read, read_roots)
            ran += 1
    finally:
        writer.flush()  # what finished before a failure stays finished
    return {"ran": ran, "seconds": time.perf_counter() - start}


def _unnamed_output(error: Exception, stage: BlockStage) -> str:
    """For a full, read-only or over-quota output that the error does not name (zarr's and numcodecs' writes do
    not): a last traceback line that names the stage's outputs, since the failure's one line is that line."""
    if not isinstance(error, OSError) or error.filename or error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return ""
    where = ", ".join(sorted(set(stage.output_addresses.values())))
    return f"OSError: [Errno {error.errno}] {error.strerror}: writing {where}\n" if where else ""


def _total_threads(client: Client) -> int:
    return max(1, sum(client.nthreads().values()))


def run_stage(
    stage: BlockStage,
    grid: BlockGrid,
    client: Client,
    work_dir: str,
    *,
    overwrite: bool = False,
    retries: int = 2,
    progress: bool = True,
    target_task_seconds: float = 1.0,
    max_batch: int | None = None,
    window: int | None = None,
    collect_summaries: bool = False,
    resources: dict[str, float] | None = None,
    checked: bool = False,
) -> StageReport:
    """Run `stage` on every block of `grid` that is not done yet; raise StageFailed on failure.

    `resources` (e.g. {"GPU": 1}) restricts the tasks to workers that advertise them; pass it only
    for clusters that have such workers. `checked`: the run's plan compared the finished blocks' output chunks
    with the disk already (`engine.staleness.forget_stale`, under the output's lock), so they are not again.
    """
    from tqdm import tqdm

    markers = DoneMarkers(work_dir, stage.name)
    try:
        recorded = fingerprint(stage, grid)
        if markers.claim(recorded, overwrite, left_out=left_out_params(stage, recorded)):
            for name in stage.table_names():  # tables of discarded blocks go with their markers
                shutil.rmtree(stage.table_dirs[name], ignore_errors=True)
                os.makedirs(stage.table_dirs[name])
        for name, version in stage.table_versions().items():
            write_format(stage.table_dirs[name], name, version, producer_record(stage, grid, work_dir))
        for name in stage.table_names():
            remove_litter(stage.table_dirs[name])
        markers.compact()  # the task files of an earlier, stopped run
        lost = {} if checked else markers.lost_blocks()  # (a run's plan forgot them, and those of changed inputs)
        if lost:
            first = min(lost)
            print(f"connectome: {stage.name}: {len(lost)} finished block(s) lost their output "
                  f"(block {first}: {lost[first]} changed or is gone); running them again", file=sys.stderr)
            markers.forget(lost)
    except OSError as e:
        raise unwritable(e, work_dir) from None
    n = len(grid)
    todo = np.flatnonzero(~markers.done_mask(n))
    if not len(todo):
        report = StageReport(stage.name, n, n, 0, 0, 0.0)
        if collect_summaries:
            report.summaries = markers.summaries()
        return report
    start = time.perf_counter()
    stage.before_blocks(lambda fn: _on_worker(stage, client, fn, resources), markers.summaries)
    order = BlockOrder(grid, todo, stage.reads_neighbours)
    run_id = uuid.uuid4().hex[:8]

    seconds_per_block: float | None = None
    tasks = 0
    in_flight: dict[str, list[int]] = {}
    futures: dict[str, object] = {}
    pending = as_completed(loop=client.loop)  # (starts a lazy client: there is work)

    def next_batch_size() -> int:
        remaining = order.remaining()
        if seconds_per_block is None:
            return 1
        spread = math.ceil(remaining / (2 * _total_threads(client)))
        want = int(target_task_seconds / max(seconds_per_block, 1e-7))
        size = max(1, min(want, spread))
        return min(size, max_batch) if max_batch else size

    def submit_ready(limit: int) -> None:
        while order.remaining() and len(in_flight) < limit:
            batch = order.take(next_batch_size())
            if not batch:
                return  # the rest wait for blocks in flight
            submit(batch)

    def submit(batch: list[int]) -> None:
        nonlocal tasks
        task = f"{batch[0]}.{len(batch)}.{run_id}"
        key = f"{stage.name}-{batch[0]}-{len(batch)}-{run_id}"
        fut = client.submit(
            run_batch, stage, grid, batch, work_dir, task,
            key=key, retries=retries, pure=False, resources=resources or None,
        )
        in_flight[key] = batch  # fut.key is `key`
        futures[key] = fut
        pending.add(fut)
        tasks += 1

    scaler = scaler_of(client)  # SLURM/PBS clusters (one pool or two) and two-pool local ones
    pool_resource = next(iter(resources or {}), None)
    bar = tqdm(total=len(todo), desc=stage.name, unit="block", disable=not progress, file=sys.stderr,
               leave=False, dynamic_ncols=True)
    try:
        submit_ready(window or 4 * _total_threads(client))
        measured_blocks, measured_seconds = 0, 0.0
        finished_tasks = 0
        if scaler is not None:  # the pool that runs these blocks can ask for all its jobs at once
            scaler.set_backlog(pool_resource, len(todo))
        for fut in _finished(pending, lambda: raise_pool_failure(client)):
            if scaler is not None:
                scaler.set_backlog(pool_resource, order.remaining() + len(in_flight))
            batch = in_flight.pop(fut.key)
            futures.pop(fut.key, None)
            if fut.status == "error":
                raise _failure(stage, grid, batch, fut)
            result = fut.result()
            if result["ran"]:
                measured_blocks += result["ran"]
                measured_seconds += result["seconds"]
                seconds_per_block = measured_seconds / measured_blocks
            order.finished(batch)
            bar.update(len(batch))
            finished_tasks += 1
            if finished_tasks % COMPACT_EVERY == 0:  # keep the marker files few while a long stage runs
                markers.compact()
            submit_ready(window or 4 * _total_threads(client))
    except BaseException:
        client.cancel(list(futures.values()))
        raise
    finally:
        bar.close()
        if scaler is not None:
            scaler.set_backlog(pool_resource, 0)

    try:
        markers.compact()
    except OSError as e:
        raise unwritable(e, work_dir) from None
    missing = n - markers.count()
    if missing:
        raise RuntimeError(f"stage {stage.name!r}: {missing} of {n} blocks have no done-marker after the run")
    report = StageReport(stage.name, n, n - len(todo), len(todo), tasks, time.perf_counter() - start)
    if collect_summaries:
        report.summaries = markers.summaries()
    return report


def check_step_resumable(name: str, step_fingerprint: dict, work_dir: str, overwrite: bool,
                         legacy: dict | None = None) -> None:
    DoneMarkers(work_dir, name).check(step_fingerprint, overwrite, legacy)


def _run_step(step: GlobalStep) -> dict:
    """Worker side of a global step."""
    try:
        return step.run()
    except Exception:
        raise StageFailed(step.name, 0, "all blocks", traceback.format_exc()) from None


def run_global_step(step: GlobalStep, step_fingerprint: dict, client: Client, work_dir: str, *,
                    overwrite: bool = False, rerun: bool = False, retries: int = 2,
                    resources: dict[str, float] | None = None, legacy: dict | None = None) -> StageReport:
    """Run `step` as one task on a worker unless its done-marker says it ran with this fingerprint (or with
    `legacy`, the same as an earlier version of connectome built it: `DoneMarkers.resumes`).

    `rerun`: the tables it reads were rewritten in this run, so an earlier result is discarded.
    """
    markers = DoneMarkers(work_dir, step.name)
    start = time.perf_counter()
    try:
        if rerun:
            markers.clear()
        markers.claim(step_fingerprint, overwrite, legacy)
    except OSError as e:
        raise unwritable(e, work_dir) from None
    if markers.is_done(0):
        return StageReport(step.name, 1, 1, 0, 0, time.perf_counter() - start)
    fut = client.submit(_run_step, step, key=f"{step.name}-{uuid.uuid4().hex[:8]}", retries=retries,
                        pure=False, resources=resources or None)
    try:
        for done in _finished(as_completed([fut]), lambda: raise_pool_failure(client)):
            if done.status == "error":
                raise _as_failure(step.name, 0, "all blocks", done.exception(), done.traceback(), done,
                                  f"the global step {step.name!r}")
    except BaseException:
        fut.cancel()
        raise
    summary = fut.result()
    markers.mark(0, summary)
    report = StageReport(step.name, 1, 0, 1, 1, time.perf_counter() - start)
    report.summaries = {0: summary}
    return report


def _on_worker(stage: BlockStage, client, fn, resources: dict[str, float] | None):
    """`fn()` run on a worker for the stage's set-up (`BlockStage.before_blocks`); a failure there stops the stage as
    a block's would, in one line (workers that die for memory: the same advice)."""
    fut = client.submit(fn, resources=resources or None, pure=False)
    try:
        return _result(client, fut)
    except UserError:
        raise
    except Exception as e:
        name = getattr(getattr(fn, "func", fn), "__name__", "a task")
        raise _as_failure(stage.name, 0, "before its blocks", e, e.__traceback__, fut, f"its set-up ({name})") from None


def _result(client, fut):
    """`fut.result()`, raising meanwhile the failure of worker jobs that cannot start (else it would wait forever)."""
    for done in _finished(as_completed([fut], loop=client.loop), lambda: raise_pool_failure(client)):
        return done.result()
    return fut.result()


def _finished(pending: as_completed, check, every: float = 1.0):
    """The futures of `pending` as they finish; while none does, `check()` runs about every `every`
    seconds and may raise (worker jobs that cannot start would otherwise leave the run waiting)."""
    last = time.monotonic()
    while pending.has_ready() or not pending.is_empty():
        ready = pending.next_batch(block=False)
        if ready:
            yield from ready
            continue
        if time.monotonic() - last >= every:
            check()
            last = time.monotonic()
        condition = getattr(pending, "thread_condition", None)
        if condition is not None:
            with condition:  # woken when a future finishes (what as_completed's own iterator waits on)
                condition.wait(timeout=0.1)
        else:
            time.sleep(0.005)


def _failure(stage: BlockStage, grid: BlockGrid, batch: list[int], fut) -> StageFailed:
    return _as_failure(stage.name, batch[0], str(grid.block(batch[0]).write_box), fut.exception(), fut.traceback(),
                       fut, f"blocks {batch[:8]}{'...' if len(batch) > 8 else ''}")


def _as_failure(name: str, index: int, box: str, exc: BaseException, tb, fut, what: str) -> StageFailed:
    """A worker task's exception (`tb`: its traceback) as the StageFailed of stage or step `name`: workers that
    died while running `what` say so with the likely cause (`_killed`), anything else with its traceback."""
    if isinstance(exc, StageFailed):
        return exc
    if isinstance(exc, KilledWorker):
        return StageFailed(name, index, box, _killed(exc, fut, what))
    return StageFailed(name, index, box, "".join(traceback.format_exception(type(exc), exc, tb)))


def _killed(exc: KilledWorker, fut, what: str) -> str:
    """The failure text of a task whose workers died (`what` it was running), with the likely cause where the
    workers had a memory limit; Dask's message (the task, its last worker) then goes to the log only."""
    from connectome.cluster.client import memory_advice

    died = f"workers died repeatedly while running {what}"
    advice = memory_advice(fut.client, getattr(exc.last_worker, "memory_limit", None))
    return f"{exc}\n{died}; {advice}" if advice else f"{died}: {exc}"

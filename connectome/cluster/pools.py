"""Pools of worker jobs under one scheduler: CPU jobs for CPU stages, GPU jobs for GPU stages.

Each pool's workers advertise one resource ("CPU" slots or "GPU"s) and each stage's tasks ask for
the one they need, so a CPU stage never occupies a GPU job and the reverse. A PoolScaler grows
and shrinks each pool's job count with the tasks only that pool may run (the pending blocks), between
the pool's minimum and maximum; a job is given back only once all its workers are idle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from tornado.ioloop import PeriodicCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pool:
    """One kind of worker job: its spec (SpecCluster worker spec), resource and job bounds."""

    name: str  # job names are NAME-<i>; their worker processes NAME-<i> or NAME-<i>-<k>
    spec: dict = field(hash=False, compare=False)
    resource: str  # advertised by its workers, asked for by the tasks only it runs
    slots_per_job: int  # tasks one job runs at once
    minimum_jobs: int = 0
    maximum_jobs: int = 1

    def owns(self, name: str) -> bool:
        return str(name).startswith(self.name + "-")


def job_of(worker_name: str, jobs) -> str | None:
    """The job (a worker-spec name) a worker process belongs to."""
    name = str(worker_name)
    if name in jobs:
        return name
    head = name.rsplit("-", 1)[0]
    return head if head in jobs else None


def pool_demand(scheduler, pools: list[Pool]) -> dict[str, int]:
    """Tasks each pool is wanted for: those running on its workers plus the waiting ones that need it.

    A waiting task goes to the pool whose resource it asks for, else to the first pool (the CPU one).
    """
    counts = {p.name: 0 for p in pools}
    for ws in scheduler.workers.values():
        for pool in pools:
            if pool.owns(ws.name):
                counts[pool.name] += len(ws.processing)
    by_resource = {p.resource: p.name for p in pools}
    waiting = list(scheduler.unrunnable) + list(getattr(scheduler, "queued", ()))
    for ts in waiting:
        wanted = [by_resource[r] for r in (ts.resource_restrictions or {}) if r in by_resource]
        counts[wanted[0] if wanted else pools[0].name] += 1
    return counts


def target_jobs(pool: Pool, demand: int) -> int:
    return min(pool.maximum_jobs, max(pool.minimum_jobs, math.ceil(demand / pool.slots_per_job)))


class PoolScaler:
    """Adapts every pool of a SpecCluster (a dask-jobqueue or Local cluster) to its pending tasks.

    A pool's demand is the larger of the tasks it runs or could run now and the backlog of blocks
    a running stage declared for its resource (`set_backlog`), so a long stage asks for all its
    jobs at once. Surplus jobs go once idle for `idle_seconds`: first those whose workers have not
    arrived, then those whose workers are all idle. A job whose workers all left (walltime,
    pre-emption) is replaced after `lost_seconds`. `alive_jobs()` (batch-system job ids still
    queued or running) lets jobs that ended before their workers connected be replaced too.
    Submissions that fail `max_failures` times in a row with no live worker in the pool set
    `failure`, which the runner raises.
    """

    def __init__(self, cluster, pools: list[Pool], interval: float = 0.5, idle_seconds: float = 60.0,
                 lost_seconds: float = 10.0, alive_jobs=None, max_failures: int = 3, check_every: float = 15.0):
        self.cluster = cluster
        self.pools = pools
        self.interval = interval
        self.wait_count = max(1, math.ceil(idle_seconds / interval))
        self.lost_count = max(1, math.ceil(lost_seconds / interval))
        self.alive_jobs = alive_jobs
        self.max_failures = max_failures
        self.check_every = check_every
        self.close_counts: Counter[str] = Counter()
        self.missing_counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.failure: str | None = None
        self.backlog: dict[str, int] = {}
        self.arrived: set[str] = set()
        self._submitted_at: dict[str, float] = {}
        self._last_alive_check = 0.0
        self._retry_at = 0.0
        self._numbers = Counter({p.name: 0 for p in pools})
        self._adapting = False
        self.log: list[tuple[str, str, str]] = []  # (pool, "up" | "down" | "lost" | "failed", job name)
        self._callback = PeriodicCallback(self.adapt, interval * 1000)
        cluster.loop.add_callback(self._callback.start)

    def stop(self) -> None:
        self.cluster.loop.add_callback(self._callback.stop)

    def set_backlog(self, resource: str | None, blocks: int) -> None:
        """Blocks a stage still has to run on the pool with `resource` (None: the first pool)."""
        self.backlog[resource or self.pools[0].resource] = blocks

    def pool_named(self, job: str) -> Pool | None:
        return next((p for p in self.pools if p.owns(job)), None)

    def jobs(self, pool: Pool) -> list[str]:
        return [name for name in list(self.cluster.worker_spec) if pool.owns(name)]

    def _new_job_name(self, pool: Pool) -> str:
        while True:
            name = f"{pool.name}-{self._numbers[pool.name]}"
            self._numbers[pool.name] += 1
            if name not in self.cluster.worker_spec:
                return name

    def _workers_of(self) -> dict[str, list]:
        workers_of: dict[str, list] = {job: [] for job in list(self.cluster.worker_spec)}
        for ws in list(self.cluster.scheduler.workers.values()):
            job = job_of(ws.name, workers_of)
            if job is not None:
                workers_of[job].append(ws)
        return workers_of

    def _removable(self, pool: Pool, workers_of: dict[str, list]) -> list[str]:
        """Jobs that may go without losing work: not yet arrived first, then all-idle ones."""
        jobs = self.jobs(pool)
        pending = [job for job in jobs if not workers_of.get(job)]
        idle = [job for job in jobs if workers_of.get(job) and not any(ws.processing for ws in workers_of[job])]
        return pending + idle

    async def adapt(self) -> None:
        status = self.cluster.status.name
        if status in ("closing", "closed", "failed"):
            self._callback.stop()
        if self._adapting or status != "running":
            return
        self._adapting = True
        try:
            await self._adapt()
        except Exception:  # the scaler must keep running; submission failures are handled in _correct
            logger.warning("connectome: adapting the worker pools failed", exc_info=True)
        finally:
            self._adapting = False

    async def _adapt(self) -> None:
        demand = pool_demand(self.cluster.scheduler, self.pools)
        workers_of = self._workers_of()
        changed = self._forget_lost_jobs(workers_of)
        to_retire: list[str] = []
        for pool in self.pools:
            jobs = self.jobs(pool)
            target = target_jobs(pool, max(demand[pool.name], self.backlog.get(pool.resource, 0)))
            if target > len(jobs):
                for job in jobs:
                    self.close_counts.pop(job, None)
                for _ in range(target - len(jobs)):
                    name = self._new_job_name(pool)
                    self.cluster.worker_spec[name] = pool.spec
                    self.log.append((pool.name, "up", name))
                changed = True
            elif target < len(jobs):
                candidates = self._removable(pool, workers_of)[: len(jobs) - target]
                for job in list(self.close_counts):
                    if pool.owns(job) and job not in candidates:
                        del self.close_counts[job]
                for job in candidates:
                    self.close_counts[job] += 1
                    if self.close_counts[job] >= self.wait_count:
                        del self.close_counts[job]
                        to_retire.append(job)
            else:
                for job in jobs:
                    self.close_counts.pop(job, None)
        if to_retire:
            names = [ws.name for job in to_retire for ws in workers_of.get(job, [])]
            if names:  # hand their data (if any) to others, then stop them cleanly
                await self.cluster.scheduler_comm.retire_workers(names=names, remove=True, close_workers=True)
            for job in to_retire:
                self.cluster.worker_spec.pop(job, None)
                owner = self.pool_named(job)
                self.log.append((owner.name if owner else "?", "down", job))
            changed = True
        # submit new jobs, cancel removed ones, and resubmit replaced ones (after a failure: backing off)
        if changed or set(self.cluster.worker_spec) != set(self.cluster.workers):
            if time.monotonic() >= self._retry_at:
                await self._correct()

    def _forget_lost_jobs(self, workers_of: dict[str, list]) -> bool:
        """Drop jobs that are gone (their workers left, or the batch system no longer lists them), so
        that `_correct` submits a replacement under the same name."""
        alive = self._alive_job_ids()
        lost = []
        for job, workers in workers_of.items():
            if workers:
                self.arrived.add(job)
                self.missing_counts.pop(job, None)
                pool = self.pool_named(job)
                if pool is not None:
                    self.failures.pop(pool.name, None)
                continue
            handle = self.cluster.workers.get(job)
            job_id = getattr(handle, "job_id", None)
            if job in self.arrived:
                self.missing_counts[job] += 1
                if self.missing_counts[job] >= self.lost_count:
                    lost.append(job)
            elif alive is not None and job_id is not None and job_id not in alive:
                lost.append(job)  # ended before its workers connected (a failing prologue, a bad venv)
                self._count_failure(job, f"job {job_id} ended before its workers connected; see its log in "
                                         f"{getattr(handle, 'log_directory', None) or 'the job log directory'}")
        for job in lost:
            handle = self.cluster.workers.pop(job, None)
            if handle is not None:
                asyncio.ensure_future(handle.close())  # cancels the job if the batch system still has it
            self.arrived.discard(job)
            self.missing_counts.pop(job, None)
            pool = self.pool_named(job)
            self.log.append((pool.name if pool else "?", "lost", job))
        return bool(lost)

    def _alive_job_ids(self) -> set[str] | None:
        """Job ids the batch system still lists, checked at most every `check_every` seconds."""
        if self.alive_jobs is None or time.monotonic() - self._last_alive_check < self.check_every:
            return None
        self._last_alive_check = time.monotonic()
        try:
            return self.alive_jobs()
        except Exception:
            logger.warning("connectome: could not list batch jobs", exc_info=True)
            return None

    def _count_failure(self, job: str, message: str) -> None:
        pool = self.pool_named(job)
        if pool is None:  # a job of no pool: no pool's failures to count
            return
        self.failures[pool.name] += 1
        self.log.append((pool.name, "failed", job))
        live = any(self.arrived & set(self.jobs(pool)))
        if self.failures[pool.name] >= self.max_failures and not live:
            self.failure = f"{pool.name} worker jobs failed {self.failures[pool.name]} times in a row: {message}"

    async def _correct(self) -> None:
        try:
            await asyncio.ensure_future(self.cluster._correct_state())
        except Exception as e:  # a refused submission: forget the job, retry on a later check
            message = " ".join(str(e).split())[:400]
            for name, handle in list(self.cluster.workers.items()):
                if getattr(handle, "job_id", "started") is None:  # never got a job id: sbatch/qsub failed
                    self.cluster.workers.pop(name, None)
                    getattr(self.cluster, "_created", set()).discard(handle)  # nothing to close at exit
                    if any(p.owns(name) for p in self.pools):
                        self._count_failure(name, message)
            self._retry_at = time.monotonic() + min(60.0, 2.0 ** max(self.failures.values(), default=1))
            logger.warning("connectome: submitting worker jobs failed: %s", message)


def raise_pool_failure(client) -> None:
    """Raise, as one line, a failure the cluster's PoolScaler recorded (jobs that cannot start)."""
    from connectome.cluster.session import scaler_of
    from connectome.core.errors import UserError

    scaler = scaler_of(client)
    if scaler is not None and scaler.failure:
        raise UserError(f"cluster: {scaler.failure}")

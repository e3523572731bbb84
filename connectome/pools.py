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
import sys
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

    Surplus jobs go after `wait_count` consecutive checks: first those whose workers have not
    arrived yet (still queued at the batch system), then those whose workers are all idle.
    """

    def __init__(self, cluster, pools: list[Pool], interval: float = 0.5, wait_count: int = 6):
        self.cluster = cluster
        self.pools = pools
        self.wait_count = wait_count
        self.close_counts: Counter[str] = Counter()
        self._numbers = Counter({p.name: 0 for p in pools})
        self._adapting = False
        self._reported: set[str] = set()
        self.log: list[tuple[str, str, str]] = []  # (pool, "up" | "down", job name)
        self._callback = PeriodicCallback(self.adapt, interval * 1000)
        cluster.loop.add_callback(self._callback.start)

    def stop(self) -> None:
        self.cluster.loop.add_callback(self._callback.stop)

    def jobs(self, pool: Pool) -> list[str]:
        return [name for name in self.cluster.worker_spec if pool.owns(name)]

    def _new_job_name(self, pool: Pool) -> str:
        while True:
            name = f"{pool.name}-{self._numbers[pool.name]}"
            self._numbers[pool.name] += 1
            if name not in self.cluster.worker_spec:
                return name

    def _removable(self, pool: Pool) -> list[str]:
        """Jobs that may go without losing work: not yet arrived first, then all-idle ones."""
        jobs = self.jobs(pool)
        workers_of: dict[str, list] = {job: [] for job in jobs}
        for ws in self.cluster.scheduler.workers.values():
            job = job_of(ws.name, workers_of)
            if job is not None:
                workers_of[job].append(ws)
        pending = [job for job in jobs if not workers_of[job]]
        idle = [job for job in jobs if workers_of[job] and not any(ws.processing for ws in workers_of[job])]
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
        except Exception as e:  # a failed submission must not stop the scaler; say it once
            message = f"connectome: scaling worker jobs failed: {e}"
            logger.warning(message, exc_info=True)
            if message not in self._reported:
                self._reported.add(message)
                print(message, file=sys.stderr)
        finally:
            self._adapting = False

    async def _adapt(self) -> None:
        demand = pool_demand(self.cluster.scheduler, self.pools)
        changed = False
        to_retire: list[str] = []
        for pool in self.pools:
            jobs = self.jobs(pool)
            target = target_jobs(pool, demand[pool.name])
            if target > len(jobs):
                for job in jobs:
                    self.close_counts.pop(job, None)
                for _ in range(target - len(jobs)):
                    name = self._new_job_name(pool)
                    self.cluster.worker_spec[name] = pool.spec
                    self.log.append((pool.name, "up", name))
                changed = True
            elif target < len(jobs):
                candidates = self._removable(pool)[: len(jobs) - target]
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
            names = [ws.name for ws in self.cluster.scheduler.workers.values()
                     if job_of(ws.name, to_retire) is not None]
            if names:  # hand their data (if any) to others, then stop them cleanly
                await self.cluster.scheduler_comm.retire_workers(names=names, remove=True, close_workers=True)
            for job in to_retire:
                del self.cluster.worker_spec[job]
                self.log.append((job.rsplit("-", 1)[0], "down", job))
            changed = True
        # submit new jobs, cancel removed ones, and replace jobs that ended (walltime, pre-emption)
        if changed or set(self.cluster.worker_spec) != set(self.cluster.workers):
            await asyncio.ensure_future(self.cluster._correct_state())

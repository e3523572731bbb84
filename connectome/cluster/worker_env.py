"""The settings of worker processes, set before they start: malloc's and Dask's memory thresholds.

Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting any glibc malloc
threshold also freezes the mmap threshold at 128 KiB, so every block-sized array becomes a fresh
mmap whose pages fault in and are zeroed again on each block: a blockwise zarr copy ran 2.3x
slower in a worker than in a plain process (benchmarks/results/copy_throughput.md). These are
glibc's own steady-state values for large buffers instead: arrays under 32 MiB come from the heap,
and free memory over 64 MiB at its top still goes back to the system. Variables already set in
the environment (a user's own choice) win.

Dask pauses a worker whose process memory passes 80% of its memory limit and spills task results
to disk from 70%: both are made for results held in memory until another task reads them. A
connectome task writes its arrays to storage and returns a small summary, so there is nothing to
spill, and a paused worker waits for memory that no result it holds will give back: with every
worker of a small memory limit over 80% (the imported libraries alone can be that much), a run
waited forever without a word. Workers neither pause nor spill (`MEMORY_CONFIG`); the nanny's
terminate threshold (95%) stays, so a worker over its limit is restarted, its task retried on
another, and a task that kills every worker it runs on fails the run with a message
(`engine.runner`). The SLURM/PBS job scripts set the same through Dask's environment variables,
unless the job's environment sets them already.
"""

from __future__ import annotations

PRELOAD = "connectome.cluster.preload"  # the module every worker starts with (`dask worker --preload`)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}
MEMORY_CONFIG = {"distributed.worker.memory.pause": False, "distributed.worker.memory.spill": False}


def _variable(key: str) -> str:
    """The environment variable that sets Dask config `key` (DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE)."""
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def use_for_local_workers() -> None:
    """Make every nanny this process starts from now on give its worker these settings (a nanny hands its worker
    the Dask config of the process that made it; threads of this process read it themselves)."""
    import dask

    dask.config.set({**{f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in MALLOC_ENV.items()},
                     **MEMORY_CONFIG})


def job_script_lines() -> list[str]:
    """Shell lines for a worker job's script, ahead of the user's own prologue."""
    env = {**MALLOC_ENV, **{_variable(k): str(v) for k, v in MEMORY_CONFIG.items()}}
    return [f'export {k}="${{{k}:-{v}}}"' for k, v in env.items()]

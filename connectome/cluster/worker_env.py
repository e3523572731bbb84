"""The malloc settings of worker processes, set before they start.

Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting any glibc malloc
threshold also freezes the mmap threshold at 128 KiB, so every block-sized array becomes a fresh
mmap whose pages fault in and are zeroed again on each block: a blockwise zarr copy ran 2.3x
slower in a worker than in a plain process (benchmarks/results/copy_throughput.md). These are
glibc's own steady-state values for large buffers instead: arrays under 32 MiB come from the heap,
and free memory over 64 MiB at its top still goes back to the system. Variables already set in
the environment (a user's own choice) win.
"""

from __future__ import annotations

PRELOAD = "connectome.cluster.preload"  # the module every worker starts with (`dask worker --preload`)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}


def use_for_local_workers() -> None:
    """Make every nanny this process starts from now on give its worker these settings."""
    import dask

    dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in MALLOC_ENV.items()})


def job_script_lines() -> list[str]:
    """Shell lines for a worker job's script, ahead of the user's own prologue."""
    return [f'export {k}="${{{k}:-{v}}}"' for k, v in MALLOC_ENV.items()]

"""Local worker processes fork from one server process that has already imported what workers run.

A spawned worker imports torch, scipy and the stage modules on its first task: about 2 s of both cores on a
laptop, paid again by every local cluster a process starts (each command run from Python, a notebook's every
`segment`, a test suite's every run). Forked from a server that imported them once, a worker starts in a tenth of
a second.

The server starts with the environment a spawned worker would get: this process's, with the nanny's
`pre-spawn-environ` on top (one OpenMP/MKL thread, the malloc thresholds of `worker_env`, a fixed hash seed), so
that settings read when a library loads (the OpenMP thread count, glibc's malloc thresholds) are what they were.
Each cluster then hands its nannies the environment as it is now (`worker_environment`), so a variable set after
the server started still reaches the workers. Where the platform has no forkserver (Windows), workers spawn as
before.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator

# Imported once by the server: what nearly every stage's worker imports (all stage modules: +0.3 s over the first).
PRELOADED = ("distributed", "numpy", "scipy.ndimage", "torch", "zarr", "connectome.affinity.stages",
             "connectome.ffn.stages", "connectome.synapses.stages", "connectome.alignment.stages")

_started: list[bool] = []


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def pre_spawn_environment() -> dict[str, str]:
    """The variables a nanny sets before it starts a worker (Dask's rule, hash seed included)."""
    import dask

    env = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"
    return env


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_server() -> bool:
    """Start the preloaded server (once per process); False where workers spawn instead (no forkserver here, or a
    server someone else started first: its environment is not ours to know)."""
    if _started:
        return _started[0]
    if not available():
        _started.append(False)
        return False
    import multiprocessing.forkserver as server

    import dask
    from distributed.utils import get_mp_context

    if getattr(server._forkserver, "_forkserver_pid", None) is not None:  # started by someone else
        _started.append(False)
        return False
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context().set_forkserver_preload(list(PRELOADED))  # (after Dask's own list, which this replaces)
    with _environment(pre_spawn_environment()):
        server.ensure_running()  # its imports run in the background until the first worker is asked for
    _started.append(True)
    return True


@contextlib.contextmanager
def forking_workers() -> Iterator[dict[str, str] | None]:
    """Within it, the nannies a LocalCluster starts fork their workers from the server; yields the `env` to hand
    them, None where workers spawn. Outside it (a worker restarted later, a user's own LocalCluster) they spawn."""
    if not start_server():
        yield None
        return
    import dask

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        yield worker_environment()


def worker_environment() -> dict[str, str]:
    """The variables a nanny hands its forked worker: this process's now, less those set before spawning."""
    before_start = pre_spawn_environment()
    return {k: v for k, v in os.environ.items() if k not in before_start}

"""Where Dask's own messages go during a run: a log file beside the done-markers, not the terminal.

`worker_logs(work_dir)` sends the logs of the distributed library (client, scheduler) to
`<work_dir>/.connectome/logs/dask.log` and names that file to local worker processes, which
(started with `--preload connectome.cluster.worker_logs`) write their output there too and ignore
Ctrl-C: the client stops them, and the terminal shows one line instead of every worker's traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import TextIO

ENV = "CONNECTOME_WORKER_LOG"
PRELOAD = "connectome.cluster.worker_logs"


def log_file(work_dir: str) -> str:
    return os.path.join(work_dir, ".connectome", "logs", "dask.log")


@contextlib.contextmanager
def worker_logs(work_dir: str) -> Iterator[str | None]:
    """Send Dask's logs to the run's log file while the block runs (nothing changes when the
    work directory is not a local folder that can be written)."""
    path = log_file(work_dir)
    if "://" in work_dir:
        yield None
        return
    handler = _FolderMakingHandler(path)  # nothing is created before the first message
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("distributed")
    saved_handlers, saved_propagate, saved_level = list(logger.handlers), logger.propagate, logger.level
    for h in saved_handlers:
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)  # a nanny says so when its worker was killed, at INFO
    before = os.environ.get(ENV)
    os.environ[ENV] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
        logger.removeHandler(handler)
        handler.close()
        for h in saved_handlers:
            logger.addHandler(h)
        logger.propagate = saved_propagate
        logger.setLevel(saved_level)


class _FolderMakingHandler(logging.Handler):
    """Appends to its file, opened (its folder made) at the first message; a message that cannot be written (a
    full disk) is dropped rather than raised or printed. Not a StreamHandler: Dask's `silence_logs` sets every
    StreamHandler of its loggers to ERROR while a cluster lives, which dropped the INFO line of a killed worker."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.stream: TextIO | None = None
        self.closed = False

    def emit(self, record) -> None:  # (called under the handler's lock)
        if self.closed:
            return  # (a thread of Dask's still logging as the run ends)
        try:
            if self.stream is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self.stream = open(self.path, "a")  # noqa: SIM115  (closed by close())
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.acquire()  # (emit runs under the same lock: none is half way through a write)
        try:
            self.closed = True
            with contextlib.suppress(OSError):
                if self.stream is not None:
                    self.stream.close()
            self.stream = None
        finally:
            self.release()
        super().close()


def redirect_this_process() -> None:
    """In a local worker process: output to the run's log file, Ctrl-C ignored (the client stops it)."""
    path = os.environ.get(ENV)
    if not path:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


async def dask_setup(worker) -> None:
    redirect_this_process()

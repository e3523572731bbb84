"""The rise of this process's resident memory while a piece of code runs, sampled every 2 ms (benchmarks only)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def peak_rise_mb() -> Iterator[list[float]]:
    """Yields a one-item list that holds, once the block has run, the peak RSS above the RSS at entry (MB)."""
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rise = [0.0]
    try:
        yield rise
    finally:
        done.set()
        sampler.join()
        rise[0] = max(peak[0], process.memory_info().rss / 2**20) - before

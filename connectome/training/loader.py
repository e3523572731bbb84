"""Training batches made in worker processes, so that a GPU does not wait for the numpy that cuts, augments
and labels each patch (about 46 ms a batch for `fib-10nm`, against a few ms for its step on a GPU).

`make(rng=..., augmenter=...)` builds one batch from a patch generator and an augmenter. With `workers` = 0 the
batches are made here from the run's own generators, one per `next`, which is the sequence of a run made
before workers existed. With N workers, worker k draws from generators seeded by (seed, k), and the batches
arrive in a fixed round-robin order over the workers (torch's DataLoader keeps that order), so the batches
repeat for a given seed and N; another N gives another (equally random) sequence.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from connectome.training.augment import AugmentConfig, Augmenter

Make = Callable[..., Any]  # make(rng=Generator, augmenter=Augmenter) -> one batch


def worker_seeds(seed: int, worker: int) -> tuple[int, int]:
    """(patch generator seed, augmenter seed) of worker `worker`, independent streams for every worker."""
    a, b = np.random.SeedSequence([seed, worker]).generate_state(2)
    return int(a), int(b)


class _Batches(IterableDataset):
    """An endless stream of `make`'s batches from the generators of the worker it runs in."""

    def __init__(self, make: Make, augment: AugmentConfig, seed: int):
        self.make, self.augment, self.seed = make, augment, seed

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        rng_seed, augment_seed = worker_seeds(self.seed, info.id if info is not None else 0)
        rng, augmenter = np.random.default_rng(rng_seed), Augmenter(self.augment, augment_seed)
        while True:
            yield self.make(rng=rng, augmenter=augmenter)


def _to_arrays(batch):
    """The batch's tensors as numpy views (no copy): the DataLoader turned each numpy array into a tensor
    (`default_convert`), which crosses to the training process in shared memory (pickled, a batch of two of
    `fib-10nm`'s, about 6 MB, cost 17 ms in the pipe on a 2-core CPU)."""
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_arrays(b) for b in batch)
    return batch


def available_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """0 on the CPU (workers would take its cores from the training step); on a GPU, the available cores less
    two (the training process and the GPU's feeding), at most 16: on an H100 12 workers still left the GPU
    waiting (benchmarks/results/gpu_session.md)."""
    if device.type == "cpu":
        return 0
    return max(0, min(16, available_cores() - 2))


def batch_stream(make: Make, workers: int, rng: np.random.Generator, augmenter: Augmenter, seed: int,
                 prefetch: int = 2) -> Generator:
    """Batches of `make`: here from `rng` and `augmenter` (`workers` = 0), or from `workers` processes. Close
    the generator when done (`close()`): that stops the workers and frees their shared memory."""
    if workers == 0:
        return (make(rng=rng, augmenter=augmenter) for _ in iter(int, 1))
    # fork where there is one: the workers share the training volumes instead of receiving pickled copies
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    loader = DataLoader(_Batches(make, augmenter.config, seed), batch_size=None, num_workers=workers,
                        prefetch_factor=prefetch, multiprocessing_context=context)  # a worker runs one torch thread
    return _from_workers(loader)


def _from_workers(loader: DataLoader) -> Generator:
    batches = iter(loader)
    try:
        for batch in batches:
            yield _to_arrays(batch)
    finally:
        del batches  # its finaliser shuts the workers down

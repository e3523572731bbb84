"""Training batches made in worker processes, so that a GPU does not wait for the numpy that cuts, augments
and labels each patch (about 46 ms a batch for `fib-10nm`, against a few ms for its step on a GPU).

`make(rng=..., augmenter=...)` builds one batch from a patch generator and an augmenter. With `workers` = 0 the
batches are made here from the run's own generators, one per `next`, which is the sequence of a run made
before workers existed. With N workers, worker k draws from generators seeded by (seed, k), and the batches
arrive in a fixed round-robin order over the workers (torch's DataLoader keeps that order), so a run repeats
itself for a given N; another N gives another (equally random) sequence.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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


def _to_tensors(batch):
    """numpy arrays (in tuples and lists) as tensors, which cross to the training process in shared memory
    (a pickled batch of `fib-10nm`'s, 12 MB, cost 17 ms in the pipe on a 2-core CPU)."""
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_tensors(b) for b in batch)
    return batch


def _to_arrays(batch):
    """`_to_tensors` undone: numpy views of the shared tensors (no copy)."""
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_arrays(b) for b in batch)
    return batch


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # a worker runs numpy; torch threads would only compete with the training step


def default_workers(device: torch.device) -> int:
    """0 on the CPU (workers would take its cores from the training step); on a GPU, the CPU cores less two
    (the training process and the GPU's feeding), at most 8."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def batch_stream(make: Make, workers: int, rng: np.random.Generator, augmenter: Augmenter, seed: int,
                 prefetch: int = 4) -> Iterator:
    """Batches of `make`: here from `rng` and `augmenter` (`workers` = 0), or from `workers` processes."""
    if workers == 0:
        return (make(rng=rng, augmenter=augmenter) for _ in iter(int, 1))
    loader = DataLoader(_Batches(make, augmenter.config, seed), batch_size=None, num_workers=workers,
                        collate_fn=_to_tensors, prefetch_factor=prefetch, worker_init_fn=_one_thread,
                        persistent_workers=True)
    return map(_to_arrays, loader)

"""Which device a worker process computes on: its own GPU when the job has GPUs, else the CPU."""

from __future__ import annotations

import os
import re


def gpu_slot(worker_name: str, n_gpus: int) -> int:
    """This worker process's GPU among the job's: `dask worker --nworkers N` names them NAME-0..N-1."""
    match = re.search(r"-(\d+)$", str(worker_name))
    return int(match.group(1)) % n_gpus if match and n_gpus else 0


def pin_gpu(worker_name: str, gpus_per_worker: int = 1) -> str | None:
    """Restrict CUDA_VISIBLE_DEVICES to this worker's share of the job's GPUs (before CUDA starts).

    SLURM sets CUDA_VISIBLE_DEVICES to the job's GPUs; with several worker processes per job each
    takes its own. Returns the new value, or None when the job has no GPU list.
    """
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible or gpus_per_worker < 1:
        return None
    n_slots = max(1, len(visible) // gpus_per_worker)
    slot = gpu_slot(worker_name, n_slots)
    mine = visible[slot * gpus_per_worker : (slot + 1) * gpus_per_worker]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return os.environ["CUDA_VISIBLE_DEVICES"]


def worker_device() -> str:
    """"cuda:0" (the first GPU this process sees) when torch has CUDA, else "cpu"."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"

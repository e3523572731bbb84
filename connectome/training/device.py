"""The torch device a training run names (`--device`), refused in one line when it is not usable here."""

from __future__ import annotations

import torch

from connectome.core.errors import UserError

CPU_DEVICE = torch.device("cpu")


def training_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch device; one line when unknown or when no such GPU is here."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev

"""Affinity targets from label volumes (waterz convention), and class-balancing weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

Offset = tuple[int, int, int]


def _shifted(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices `here` and `there` such that array[there] is the neighbour at `offset` of array[here]."""
    here, there = [], []
    for s, o in zip(shape, offset):
        if o <= 0:
            here.append(slice(-o, s))
            there.append(slice(0, s + o))
        else:
            here.append(slice(0, s - o))
            there.append(slice(o, s))
    return tuple(here), tuple(there)


def affinities_from_labels(
    labels: np.ndarray, offsets: Sequence[Offset]
) -> tuple[np.ndarray, np.ndarray]:
    """Affinities and validity mask, both (len(offsets), z, y, x).

    Channel c at voxel v is 1 when v and v + offsets[c] carry the same non-zero label, else 0 (label 0
    is boundary / background). The mask is False where v + offset lies outside the volume.
    """
    labels = np.asarray(labels)
    affs = np.zeros((len(offsets), *labels.shape), np.uint8)
    mask = np.zeros((len(offsets), *labels.shape), bool)
    for c, off in enumerate(offsets):
        here, there = _shifted(labels.shape, tuple(int(o) for o in off))
        a, b = labels[here], labels[there]
        channel_here: tuple[int | slice, ...] = (c, *here)
        affs[channel_here] = (a == b) & (a != 0)
        mask[channel_here] = True
    return affs, mask


def balance_weights(affs: np.ndarray | torch.Tensor, mask, channel_axis: int = 1):
    """Per-channel weights that give affinity 1 and affinity 0 the same total weight within the mask.

    Works on numpy arrays and torch tensors of shape (n, c, z, y, x) (channel_axis=1).
    """
    import torch

    is_np = isinstance(affs, np.ndarray)
    a = torch.as_tensor(affs, dtype=torch.float32)
    m = torch.as_tensor(mask, dtype=torch.float32)
    dims = [d for d in range(a.ndim) if d != channel_axis]
    n = m.sum(dim=dims, keepdim=True)
    pos = (a * m).sum(dim=dims, keepdim=True)
    frac = (pos / n.clamp(min=1)).clamp(0.05, 0.95)  # a channel that is almost all one class
    w = torch.where(a > 0.5, 0.5 / frac, 0.5 / (1 - frac)) * m
    return w.numpy() if is_np else w

"""Affinity prediction with a loaded model: exact-size tiles, and whole volumes of any shape."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import overload

import numpy as np
import torch

from connectome.models.registry import LoadedModel


def _check(model: LoadedModel, raw: np.ndarray) -> None:
    if raw.ndim != 3:
        raise ValueError(f"predict_affinities: expected a 3-d (z, y, x) raw array, got shape {raw.shape}")
    if raw.dtype != np.uint8:
        raise ValueError(f"predict_affinities: expected uint8 raw, got {raw.dtype}")
    div = model.info.divisor
    if any(s % d for s, d in zip(raw.shape, div)):
        raise ValueError(
            f"predict_affinities: shape {raw.shape} is not a multiple of the model's divisor {div}"
        )


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def z_from_xy(affs: torch.Tensor) -> torch.Tensor:
    """z affinity for 2-d-trained models: both voxels look like cell interior in their own section.

    `affs` is (n, >=3, z, y, x); interior = mean of a voxel's four in-plane affinities.
    """
    ay, ax = affs[:, 1], affs[:, 2]
    ay_next = torch.cat([ay[:, :, 1:], ay[:, :, -1:]], dim=2)  # affinity to (y+1) lives at y+1
    ax_next = torch.cat([ax[:, :, :, 1:], ax[:, :, :, -1:]], dim=3)
    interior = (ay + ay_next + ax + ax_next) / 4
    below = torch.cat([interior[:, :1], interior[:, :-1]], dim=1)
    return torch.minimum(interior, below)


def _forward(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    info = model.info
    x = torch.from_numpy(batch).to(model.device)[:, None]
    x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), _autocast(model.device):
        x = (x.float() * (1.0 / 255.0) - info.mean) * (1.0 / info.std)
        y = torch.sigmoid(model.net(x)[:, :3].float())
        if info.z_affinity == "from_xy":
            y[:, 0] = z_from_xy(y)
        return y.contiguous().cpu().numpy()


@overload
def predict_affinities(model: LoadedModel, raw: np.ndarray) -> np.ndarray: ...
@overload
def predict_affinities(model: LoadedModel, raw: list | tuple) -> list[np.ndarray]: ...
def predict_affinities(model: LoadedModel, raw) -> np.ndarray | list[np.ndarray]:
    """Nearest-neighbour affinities, float32 (3, z, y, x), for uint8 raw whose shape is a multiple of
    `model.info.divisor`; a list or an (n, z, y, x) array gives a list / (n, 3, z, y, x) array."""
    batched = isinstance(raw, (list, tuple)) or (isinstance(raw, np.ndarray) and raw.ndim == 4)
    arrays = [np.asarray(a) for a in raw] if batched else [np.asarray(raw)]
    for a in arrays:
        _check(model, a)
    if not batched:
        return _forward(model, arrays[0][None])[0]
    same = len({a.shape for a in arrays}) == 1
    if model.device.type == "cuda" and same and arrays:
        out = _forward(model, np.stack(arrays))
    else:  # on CPU a batch is no faster than one tile after another, and needs more memory
        if not same:
            return [_forward(model, a[None])[0] for a in arrays]
        out = np.stack([_forward(model, a[None])[0] for a in arrays])
    return out if isinstance(raw, np.ndarray) else list(out)


def predict_volume(model: LoadedModel, raw: np.ndarray, tile: Sequence[int] | None = None) -> np.ndarray:
    """Affinities for a whole volume of any shape: reflection-pad by the context (and up to the divisor),
    predict in tiles of at most `tile` voxels of output (default: one tile), crop back."""
    info = model.info
    raw = np.asarray(raw)
    shape = raw.shape
    tile = tuple(tile) if tile is not None else tuple(shape)
    tile = tuple(max(d, math.ceil(t / d) * d) for t, d in zip(tile, info.divisor))
    grid = [math.ceil(s / t) for s, t in zip(shape, tile)]
    padded_core = [g * t for g, t in zip(grid, tile)]
    pad = [(c, c + pc - s) for c, pc, s in zip(info.context, padded_core, shape)]
    src = np.pad(raw, pad, mode="reflect")  # numpy reflects repeatedly where the pad is wider
    out = np.empty((3, *padded_core), np.float32)
    for iz in range(grid[0]):
        for iy in range(grid[1]):
            for ix in range(grid[2]):
                o = (iz * tile[0], iy * tile[1], ix * tile[2])
                sl = tuple(slice(a, a + t + 2 * c) for a, t, c in zip(o, tile, info.context))
                pred = predict_affinities(model, np.ascontiguousarray(src[sl]))
                core = tuple(slice(c, c + t) for c, t in zip(info.context, tile))
                out[(slice(None), *(slice(a, a + t) for a, t in zip(o, tile)))] = pred[(slice(None), *core)]
    return out[(slice(None), *(slice(0, s) for s in shape))]

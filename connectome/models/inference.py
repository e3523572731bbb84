"""Affinity prediction with a loaded model: exact-size tiles, and whole volumes of any shape."""

from __future__ import annotations

import contextlib
import functools
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


PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16, from /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bfloat16 on a GPU and on a CPU with native bfloat16, else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" or native_bfloat16() else "float32"


def _autocast(device: torch.device, precision: str):
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
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


def _forward(model: LoadedModel, batch: np.ndarray, precision: str = "float32") -> np.ndarray:
    info = model.info
    x = torch.from_numpy(batch).to(model.device)[:, None]
    x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), _autocast(model.device, precision):
        x = (x.float() * (1.0 / 255.0) - info.mean) * (1.0 / info.std)
        y = torch.sigmoid(model.net(x)[:, :3].float())
        if info.z_affinity == "from_xy":
            y[:, 0] = z_from_xy(y)
        return y.contiguous().cpu().numpy()


# test-time augmentation: the flips (axes of z, y, x) whose predictions `flips=n` averages, first n
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,), (1, 2), (0, 1, 2), (0, 1), (0, 2))


def _add_unflipped(total: np.ndarray, affs: np.ndarray, axes: tuple[int, ...], plain: np.ndarray) -> None:
    """Add to `total` the (n, 3, z, y, x) affinities predicted on input flipped along `axes`, mapped back to the
    input's frame, through views (no copy of the prediction).

    Flipped back, channel a (offset -1 along axis a) of a flipped axis holds each voxel's affinity to
    its +1 neighbour, so it moves one voxel up; the first plane, which has no such value, takes `plain`'s.
    """
    back = np.flip(affs, axis=tuple(a + 2 for a in axes))
    for a in range(3):
        if a not in axes:
            total[:, a] += back[:, a]
            continue
        up, below, first = ([slice(None)] * 4 for _ in range(3))
        up[a + 1], below[a + 1], first[a + 1] = slice(1, None), slice(0, -1), slice(0, 1)
        total[:, a][tuple(up)] += back[:, a][tuple(below)]
        total[:, a][tuple(first)] += plain[:, a][tuple(first)]


def _unflip(affs: np.ndarray, axes: tuple[int, ...], plain: np.ndarray) -> np.ndarray:
    """`affs` predicted on input flipped along `axes`, mapped back to the input's frame (`_add_unflipped`)."""
    out = np.zeros(affs.shape, affs.dtype)
    _add_unflipped(out, affs, axes, plain)
    return out


def flip_reach(reach: Sequence[int], divisor: Sequence[int], flips: int) -> tuple[int, int, int]:
    """The context a prediction averaging the first `flips` of FLIPS needs: the network's reach, plus at least
    one voxel on each flipped axis, whose affinity channel moves one voxel when flipped back (`_unflip`), so
    the write box's first plane takes a value the flipped network predicted one plane further out; as many
    more as keep a block read with it on both sides a multiple of `divisor` (4 where it is 8)."""
    flipped = {a for axes in FLIPS[1:max(flips, 1)] for a in axes}
    z, y, x = (int(r) + (int(d) // math.gcd(int(d), 2) if a in flipped else 0)
               for a, (r, d) in enumerate(zip(reach, divisor)))
    return z, y, x


def _forward_flips(model: LoadedModel, batch: np.ndarray, flips: int, precision: str) -> np.ndarray:
    """The mean of the predictions on the first `flips` of FLIPS (1: the plain prediction)."""
    plain = _forward(model, batch, precision)
    if flips <= 1:
        return plain
    total = plain.astype(np.float64)
    for axes in FLIPS[1:flips]:
        flipped = np.ascontiguousarray(np.flip(batch, axis=tuple(a + 1 for a in axes)))
        _add_unflipped(total, _forward(model, flipped, precision), axes, plain)
    total /= flips
    return total.astype(np.float32)


@overload
def predict_affinities(model: LoadedModel, raw: np.ndarray, flips: int = 1,
                       precision: str | None = None) -> np.ndarray: ...
@overload
def predict_affinities(model: LoadedModel, raw: list | tuple, flips: int = 1,
                       precision: str | None = None) -> list[np.ndarray]: ...
def predict_affinities(model: LoadedModel, raw, flips: int = 1,
                       precision: str | None = None) -> np.ndarray | list[np.ndarray]:
    """Nearest-neighbour affinities, float32 (3, z, y, x), for uint8 raw whose shape is a multiple of
    `model.info.divisor`; a list or an (n, z, y, x) array gives a list / (n, 3, z, y, x) array.
    `flips` > 1 averages the predictions on that many flipped copies (test-time augmentation, FLIPS).
    `precision` of the network (PRECISIONS); default: bfloat16 on a GPU, float32 on a CPU."""
    if not 1 <= flips <= len(FLIPS):
        raise ValueError(f"predict_affinities: flips must be 1 ... {len(FLIPS)}, got {flips}")
    if precision is None:
        precision = "bfloat16" if model.device.type == "cuda" else "float32"
    precision = resolve_precision(precision, model.device)
    batched = isinstance(raw, (list, tuple)) or (isinstance(raw, np.ndarray) and raw.ndim == 4)
    arrays = [np.asarray(a) for a in raw] if batched else [np.asarray(raw)]
    for a in arrays:
        _check(model, a)
    if not batched:
        return _forward_flips(model, arrays[0][None], flips, precision)[0]
    same = len({a.shape for a in arrays}) == 1
    if model.device.type == "cuda" and same and arrays:
        out = _forward_flips(model, np.stack(arrays), flips, precision)
    else:  # on CPU a batch is no faster than one tile after another, and needs more memory
        if not same:
            return [_forward_flips(model, a[None], flips, precision)[0] for a in arrays]
        out = np.stack([_forward_flips(model, a[None], flips, precision)[0] for a in arrays])
    return out if isinstance(raw, np.ndarray) else list(out)


def predict_volume(model: LoadedModel, raw: np.ndarray, tile: Sequence[int] | None = None,
                   flips: int = 1, precision: str | None = None) -> np.ndarray:
    """Affinities for a whole volume of any shape: reflection-pad by the context (and up to the divisor),
    predict in tiles of at most `tile` voxels of output (default: one tile), crop back."""
    info = model.info
    raw = np.asarray(raw)
    shape = raw.shape
    tile = tuple(tile) if tile is not None else tuple(shape)
    tile = tuple(max(d, math.ceil(t / d) * d) for t, d in zip(tile, info.divisor))
    grid = [math.ceil(s / t) for s, t in zip(shape, tile)]
    padded_core = [g * t for g, t in zip(grid, tile)]
    context = flip_reach(info.context, info.divisor, flips)
    pad = [(c, c + pc - s) for c, pc, s in zip(context, padded_core, shape)]
    src = np.pad(raw, pad, mode="reflect")  # numpy reflects repeatedly where the pad is wider
    out = np.empty((3, *padded_core), np.float32)
    for iz in range(grid[0]):
        for iy in range(grid[1]):
            for ix in range(grid[2]):
                o = (iz * tile[0], iy * tile[1], ix * tile[2])
                sl = tuple(slice(a, a + t + 2 * c) for a, t, c in zip(o, tile, context))
                pred = predict_affinities(model, np.ascontiguousarray(src[sl]), flips, precision)
                core = tuple(slice(c, c + t) for c, t in zip(context, tile))
                out[(slice(None), *(slice(a, a + t) for a, t in zip(o, tile)))] = pred[(slice(None), *core)]
    return out[(slice(None), *(slice(0, s) for s in shape))]

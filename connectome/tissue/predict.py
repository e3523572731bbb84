"""Tissue classes of a raw array: each section's grey levels, the network per section, argmax over
classes, alignment margins as `defect`, the exclusion mask.

What the network reads. It was trained on raw / 255 of sections whose contrast spans most of the grey
range; a dim or flat section (uneven staining, a weaker beam) reads to it as a blank one, `defect`. So
each section is first mapped linearly so that its 0.5 and 99.5 percentiles (exact zeros left out, as
`section_normalize` does; levels.py) land on TARGET, with a gain of at most MAX_GAIN, and none for a
section whose spread is not well above its noise (a blank frame stays blank: `gain`).

Margins. Exact zeros that fill a MARGIN_SIDE x MARGIN_SIDE square (what `align` leaves where no tissue
was imaged; real sections hold no zero patch that large: ISBI 2012, VNC and CREMI have none of 11 x 11),
and narrower runs of exact zeros that reach a face of the section (a margin a few pixels wide), carry no
data: they are labelled `defect` (as the alignment's defect mask calls them OUTSIDE), and the network
sees there, instead of a black band whose edge it reads as myelin, the imaged pixels mirrored across the
margin's edge (along rows, then columns, up to FILL_REACH pixels away; a neutral grey beyond).

Blockwise exactness: the levels are per whole section (the stage's global step, or levels.stats_of
here), the margin and its fill at a pixel depend only on pixels within HALO of it, and the caller hands
`classify` its tile grown by HALO in y and x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from connectome.io.reflected import mirror_indices
from connectome.models.unet import UNet
from connectome.tissue.classes import DEFECT, NAMES
from connectome.tissue.levels import stats_of
from connectome.tissue.model import TissueInfo

PIXELS_PER_BATCH = 2_000_000  # sections per forward pass: bounds memory (about 0.5 GB in float64)
TARGET = (20.0, 225.0)  # a section's levels (levels.py) are mapped to these (typical of VNC, ISBI, synthetic)
MAX_GAIN = 8.0  # x0.15 + 30 (ISBI) needs about 7
TEXTURE = (6.0, 9.0)  # spread / noise: a blank frame is about 5 (no stretch), imaged sections 9.5 and more
MARGIN_SIDE = 13  # odd: an opening by a square of this side
FILL_REACH = 32
HALO = 2 * FILL_REACH + MARGIN_SIDE  # pixels around a tile that decide its margins and their fill
NEUTRAL = (TARGET[0] + TARGET[1]) / 2 / 255


def gain(stats: np.ndarray) -> np.ndarray:
    """(Z,) the factor each section's grey levels are stretched by: to TARGET, at most MAX_GAIN, and for a
    section whose spread is not well above its noise (a blank frame) none (TEXTURE: a linear blend between)."""
    lo, hi, noise = stats[:, 0], stats[:, 1], stats[:, 2]
    texture = np.clip(((hi - lo) / np.maximum(noise, 1.0) - TEXTURE[0]) / (TEXTURE[1] - TEXTURE[0]), 0.0, 1.0)
    return np.minimum((TARGET[1] - TARGET[0]) / (hi - lo), 1.0 + (MAX_GAIN - 1.0) * texture)


def unit_intensity(raw: np.ndarray, stats: np.ndarray | None) -> np.ndarray:
    """float64 in [0, 1]: raw / 255, each section first mapped linearly so that its low level lands on TARGET[0],
    stretched by `gain` (stats: levels.section_stats of the whole sections; None: raw / 255 as is)."""
    if stats is None:
        return raw.astype(np.float64) / 255.0
    lo, g = stats[:, 0, None, None], gain(stats)[:, None, None]
    return np.clip((TARGET[0] + (raw.astype(np.float64) - lo) * g) / 255.0, 0.0, 1.0)


def no_data(raw: np.ndarray, faces: Sequence[tuple[int, int]]) -> np.ndarray:
    """bool (Z, Y, X): exact zeros inside an all-zero MARGIN_SIDE square, and exact zeros joined to a face of the
    section (`faces`: the array indices of its first and last row, then column) by an unbroken run of zeros
    shorter than MARGIN_SIDE along their row or column (a narrow margin). Valid MARGIN_SIDE px from the edges."""
    zero = raw == 0
    out = ndi.binary_opening(zero, structure=np.ones((1, MARGIN_SIDE, MARGIN_SIDE), bool))
    for axis, ends in ((1, faces[0]), (2, faces[1])):
        n = raw.shape[axis]
        for face in ends:
            for step in (1, -1):  # into the section and, mirrored, out of it: the same run either way
                stop = face + step * MARGIN_SIDE
                lo, hi = (face, min(stop, n)) if step > 0 else (max(stop + 1, 0), face + 1)
                if not 0 <= face < n or hi <= lo:
                    continue
                band = [slice(None)] * 3
                band[axis] = slice(lo, hi)
                run = np.moveaxis(zero[tuple(band)], axis, 0)
                if step < 0:
                    run = run[::-1]
                run = np.logical_and.accumulate(run, axis=0)
                if step < 0:
                    run = run[::-1]
                out[tuple(band)] |= np.moveaxis(run, 0, axis)
    return out


def _mirror_along_rows(unit: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unknown pixel within FILL_REACH of a known one in its row: the pixel mirrored across the nearest
    known one (the left one on a tie), or that known pixel where the mirror image is unknown."""
    h, w = unit.shape
    far = 4 * (w + FILL_REACH)
    col = np.broadcast_to(np.arange(w), (h, w))
    left = np.maximum.accumulate(np.where(known, col, -far), axis=1)
    right = np.minimum.accumulate(np.where(known, col, far)[:, ::-1], axis=1)[:, ::-1]
    take_left = col - left <= right - col
    nearest = np.where(take_left, left, right)
    fill = ~known & (np.abs(nearest - col) <= FILL_REACH)
    rows = np.arange(h)[:, None]
    nearest = np.clip(nearest, 0, w - 1)
    image = 2 * nearest - col
    inside = (image >= 0) & (image < w)
    image = np.clip(image, 0, w - 1)
    value = np.where(inside & known[rows, image], unit[rows, image], unit[rows, nearest])
    return np.where(fill, value, unit), known | fill


def fill_margins(unit: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """`unit` with its margin pixels replaced (mirrored along rows, then columns, NEUTRAL beyond FILL_REACH)."""
    out = unit.copy()
    for z in range(unit.shape[0]):
        if not margin[z].any():
            continue
        rows, known = _mirror_along_rows(unit[z], ~margin[z])
        cols, known = _mirror_along_rows(rows.T, known.T)
        out[z] = np.where(known.T, cols.T, NEUTRAL)
    return out


def class_logits(net: UNet, info: TissueInfo, unit: np.ndarray) -> torch.Tensor:
    """Logits (C, Z, Y, X) of the network input `unit` ([0, 1], Z, Y, X, Y and X multiples of the divisor).

    Computed in the network's dtype (model.load_model): in float64 the same voxel computed in tiles
    of different shapes differs by ~1e-12, so an argmax never flips between a blockwise and a
    one-block run; float32 is about 5x faster on a CPU but flips a few near-ties (benchmarks/tissue.py).
    """
    dtype = next(net.parameters()).dtype
    out = []
    step = max(1, PIXELS_PER_BATCH // (unit.shape[1] * unit.shape[2]))
    with torch.no_grad():
        for z0 in range(0, unit.shape[0], step):
            x = torch.from_numpy(np.ascontiguousarray((unit[z0:z0 + step] - info.mean) / info.std)).to(dtype)
            y = net(x[:, None, None])  # sections as a batch: (n, 1, 1, Y, X) -> (n, C, 1, Y, X)
            out.append(y[:, :, 0])
    return torch.cat(out).permute(1, 0, 2, 3)


def classify(net: UNet, info: TissueInfo, raw: np.ndarray, levels: np.ndarray | None,
             faces: Sequence[tuple[int, int]], halo: int = HALO) -> np.ndarray:
    """uint8 class codes (Z, Y, X) of a tile already grown by the context and padded to the divisor, handed in
    grown by `halo` more in y and x (the codes leave it out); `levels`: (Z, 3) levels.section_stats of the whole
    sections (None: raw / 255 as is); `faces`: the indices in `raw` of the volume's first and last row, then
    column (see no_data)."""
    margin = no_data(raw, faces)
    unit = fill_margins(unit_intensity(raw, levels), margin)
    inner = (slice(None), slice(halo, raw.shape[1] - halo), slice(halo, raw.shape[2] - halo))
    codes = class_logits(net, info, unit[inner]).argmax(0).to(torch.uint8).numpy()
    codes[margin[inner]] = info.classes.index(NAMES[DEFECT])
    return codes


def classify_volume(net: UNet, info: TissueInfo, raw: np.ndarray, normalize: bool = True) -> np.ndarray:
    """uint8 class codes of a whole in-memory (Z, Y, X) array, mirrored past its faces as the stage reads them."""
    index = []
    for a in (1, 2):
        c, d, n = info.context[a] + HALO, info.divisor[a], raw.shape[a]
        index.append(mirror_indices(-c, math.ceil(n / d) * d + c, n))
    levels = stats_of(raw) if normalize else None
    faces = [(info.context[a] + HALO, info.context[a] + HALO + raw.shape[a] - 1) for a in (1, 2)]
    codes = classify(net, info, raw[:, index[0][:, None], index[1][None, :]], levels, faces)
    cy, cx = info.context[1], info.context[2]
    return codes[:, cy:cy + raw.shape[1], cx:cx + raw.shape[2]]


def exclusion_mask(codes: np.ndarray, exclude: Sequence[int]) -> np.ndarray:
    """uint8: 1 where the class code is one of `exclude`."""
    lut = np.zeros(256, np.uint8)
    lut[list(exclude)] = 1
    return lut[codes]

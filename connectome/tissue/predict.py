"""Tissue classes of a raw array: the network per section, argmax over classes, the exclusion mask."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from connectome.io.reflected import mirror_indices
from connectome.models.unet import UNet
from connectome.tissue.model import TissueInfo

PIXELS_PER_BATCH = 2_000_000  # sections per forward pass: bounds memory (about 0.5 GB in float64)


def class_logits(net: UNet, info: TissueInfo, raw: np.ndarray) -> torch.Tensor:
    """Logits (C, Z, Y, X) of a uint8 (Z, Y, X) whose Y and X are multiples of the model's divisor.

    Computed in the network's dtype (model.load_model): in float64 the same voxel computed in tiles
    of different shapes differs by ~1e-12, so an argmax never flips between a blockwise and a
    one-block run; float32 is about 7x faster on a CPU but flips a few near-ties (benchmarks/tissue.py).
    """
    dtype = next(net.parameters()).dtype
    out = []
    step = max(1, PIXELS_PER_BATCH // (raw.shape[1] * raw.shape[2]))
    with torch.no_grad():
        for z0 in range(0, raw.shape[0], step):
            x = torch.from_numpy(np.ascontiguousarray(raw[z0:z0 + step])).to(dtype)
            x = (x / 255.0 - info.mean) / info.std
            y = net(x[:, None, None])  # sections as a batch: (n, 1, 1, Y, X) -> (n, C, 1, Y, X)
            out.append(y[:, :, 0])
    return torch.cat(out).permute(1, 0, 2, 3)


def classify(net: UNet, info: TissueInfo, raw: np.ndarray) -> np.ndarray:
    """uint8 class codes (Z, Y, X) of a tile already grown by the context and padded to the divisor."""
    return class_logits(net, info, raw).argmax(0).to(torch.uint8).numpy()


def classify_volume(net: UNet, info: TissueInfo, raw: np.ndarray) -> np.ndarray:
    """uint8 class codes of a whole in-memory (Z, Y, X) array, mirrored past its faces as the stage reads them."""
    index = []
    for a in (1, 2):
        c, d, n = info.context[a], info.divisor[a], raw.shape[a]
        index.append(mirror_indices(-c, math.ceil(n / d) * d + c, n))
    codes = classify(net, info, raw[:, index[0][:, None], index[1][None, :]])
    cy, cx = info.context[1], info.context[2]
    return codes[:, cy:cy + raw.shape[1], cx:cx + raw.shape[2]]


def exclusion_mask(codes: np.ndarray, exclude: Sequence[int]) -> np.ndarray:
    """uint8: 1 where the class code is one of `exclude`."""
    lut = np.zeros(256, np.uint8)
    lut[list(exclude)] = 1
    return lut[codes]

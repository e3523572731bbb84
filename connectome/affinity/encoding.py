"""How affinities are stored: uint8, value / 255 (the one place that scale is decided)."""

from __future__ import annotations

import numpy as np

SCALE = 255.0


def affinities_as_uint8(affinities: np.ndarray) -> np.ndarray:
    """Affinities in [0, 1] as stored: rounded to the nearest 1/255."""
    return np.rint(affinities * SCALE).astype(np.uint8)


def affinities_as_float(stored: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Stored uint8 affinities back in [0, 1] as `dtype`."""
    return stored.astype(dtype) / dtype(SCALE)

"""Per-section local contrast normalisation: removes brightness drift between and within sections.

Each section is normalised by a Gaussian-weighted local mean and standard deviation in (y, x).
The filter's support is finite, so with a context of that radius a block's output equals the
whole-volume computation exactly: the stage is seam-free by construction.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

TRUNCATE = 3.0


def normalize_sections(raw: np.ndarray, sigma: float, contrast: float) -> np.ndarray:
    """Normalise each (y, x) section of `raw` by its local mean and deviation; returns uint8."""
    x = raw.astype(np.float32)
    s = (0.0, sigma, sigma)
    mean = gaussian_filter(x, s, truncate=TRUNCATE, mode="reflect")
    var = gaussian_filter(x * x, s, truncate=TRUNCATE, mode="reflect") - mean * mean
    std = np.sqrt(np.maximum(var, 1.0))
    out = (x - mean) / std * contrast + 128.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


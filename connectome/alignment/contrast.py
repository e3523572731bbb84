"""Per-section intensity normalisation: each section's percentiles mapped to the full grey range
(removes brightness and contrast drift between sections), then CLAHE (local contrast).

CLAHE's tiles are anchored at the section's origin and a pixel's value depends only on the tiles
around it, so a block that reads two tiles beyond its write box, from an offset that is a multiple
of the tile size, computes exactly what the whole section would: blockwise is seam-free.
"""

from __future__ import annotations

import os

import numpy as np
from skimage.exposure._adapthist import NR_OF_GRAY, _clahe  # the kernel of equalize_adapthist, without its

# per-image rescaling (which would depend on the block)
from connectome.core.geometry import Box
from connectome.engine.global_step import GlobalStep
from connectome.io import open_volume

SAMPLE_STEP = 4  # every 4th pixel along y and x of a section estimates its percentiles


def section_levels(section_sample: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The `low` and `high` percentiles of a section (a sample of it); equal values are spread by one.
    Pixels exactly 0 (the padding of a smaller section, the margins an alignment leaves) are left out
    where anything else remains: counted, they set the low level of an aligned section to 0."""
    values = section_sample.astype(np.float64).ravel()
    imaged = values[values != 0]
    lo, hi = np.percentile(imaged if imaged.size else values, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def stretch(section: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A section mapped linearly so that [lo, hi] spans [0, 1], clipped."""
    return np.clip((section.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def equalize(unit: np.ndarray, tile: int, clip_limit: float, nbins: int = 256) -> np.ndarray:
    """CLAHE of a [0, 1] image with square tiles of `tile` pixels; returns [0, 1]."""
    grey = np.round(unit * (NR_OF_GRAY - 1)).astype(np.uint16)
    out = _clahe(grey, [tile, tile], clip_limit, nbins)
    return out.astype(np.float64) / (NR_OF_GRAY - 1)


def sampled_rows(vol, step: int = SAMPLE_STEP):
    """(z, every `step`-th row of section z, whole) for each section of volume `vol`, in order; read in bands
    of its chunks (a chunk's sections and rows at once), so every chunk is decompressed once and memory holds a
    band of chunks' depth of the sampled rows, not a whole section at a time per chunk."""
    depth, height, width = vol.shape
    cz, cy = (max(1, int(c)) for c in vol.meta.chunk_shape[:2])
    rows = len(range(0, height, step))
    for z0 in range(0, depth, cz):
        z1 = min(depth, z0 + cz)
        out = np.empty((z1 - z0, rows, width), vol.dtype)
        for y0 in range(0, height, cy):
            first = (-y0) % step  # the first sampled row of this band
            if y0 + first >= min(height, y0 + cy):
                continue
            band = vol.read(Box((z0, y0 + first, 0), (z1 - z0, min(height, y0 + cy) - y0 - first, width)))
            picked = band[:, ::step]
            at = (y0 + first) // step
            out[:, at:at + picked.shape[1]] = picked
        yield from ((z0 + i, out[i]) for i in range(z1 - z0))


class LevelsStep(GlobalStep):
    """Every section's percentiles, from every SAMPLE_STEP-th pixel, into one file (array `key`, a row per
    section: `of` its sampled rows; the tissue stage's levels.SectionStatsStep adds the noise)."""

    name = "section_levels"
    key = "levels"

    def __init__(self, raw: str, path: str, low: float, high: float):
        self.raw, self.path, self.low, self.high = raw, path, low, high

    def fingerprint(self) -> dict:
        return {"step": self.name, "raw": self.raw, "path": self.path, "low": self.low, "high": self.high}

    def of(self, rows: np.ndarray) -> tuple[float, ...]:
        """A section's row of the table, from its every SAMPLE_STEP-th row (`sampled_rows`)."""
        return section_levels(rows[:, ::SAMPLE_STEP], self.low, self.high)

    def run(self) -> dict:
        vol = open_volume(self.raw)
        table = np.array([self.of(rows) for _, rows in sampled_rows(vol)], np.float64).reshape(vol.shape[0], -1)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **{self.key: table})  # type: ignore[arg-type]
        os.replace(tmp, self.path)
        return {"sections": vol.shape[0]}

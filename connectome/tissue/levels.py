"""Each whole section's grey levels and noise, in one pass before the tissue stage's blocks (so that every
block maps a section's intensities the same way: blockwise == one block).

The levels are the LOW and HIGH percentiles of every SAMPLE_STEP-th pixel, exact zeros left out (as
`section_normalize` finds them: connectome.alignment.contrast.section_levels). The noise is the robust
standard deviation of the difference of horizontal neighbours on every SAMPLE_STEP-th row (pairs with an
exact zero left out), divided by sqrt(2). Their ratio tells an imaged section from a blank one: the
spread of real sections (ISBI 2012, VNC, CREMI, EPFL CA1, dimmed or not) is 9.5 to 21 times their noise,
that of a blank frame with white noise about 5 times; predict.gain stretches only the former.
"""

from __future__ import annotations

import numpy as np

from connectome.alignment.contrast import SAMPLE_STEP, LevelsStep, section_levels

LOW, HIGH = 0.5, 99.5


def section_stats(section: np.ndarray) -> tuple[float, float, float]:
    """(low level, high level, noise) of one whole (Y, X) section."""
    return rows_stats(section[::SAMPLE_STEP])


def rows_stats(rows: np.ndarray) -> tuple[float, float, float]:
    """`section_stats` from a section's every SAMPLE_STEP-th row (`contrast.sampled_rows`)."""
    lo, hi = section_levels(rows[:, ::SAMPLE_STEP], LOW, HIGH)
    rows = rows.astype(np.float64)
    a, b = rows[:, 1:], rows[:, :-1]
    diff = np.abs(a - b)[(a != 0) & (b != 0)]
    noise = 1.4826 * float(np.median(diff)) / np.sqrt(2) if diff.size else 0.0
    return lo, hi, noise


def stats_of(raw: np.ndarray) -> np.ndarray:
    """(Z, 3) float64: section_stats of each section of an in-memory (Z, Y, X) array."""
    return np.array([section_stats(s) for s in raw], np.float64).reshape(-1, 3)


class SectionStatsStep(LevelsStep):
    """section_stats of every section of `raw` into one .npz (`stats`, Z x 3)."""

    name = "tissue_section_stats"
    key = "stats"

    def __init__(self, raw: str, path: str):
        super().__init__(raw, path, LOW, HIGH)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "sample_step": SAMPLE_STEP}

    def of(self, rows: np.ndarray) -> tuple[float, ...]:
        return rows_stats(rows)

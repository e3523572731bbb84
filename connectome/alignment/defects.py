"""Defect flags: sections that are blank, missing (mostly zeros) or match neither neighbour, and
regions (patches) that match neither neighbour (folds, cracks, dirt, cutting artefacts).

A flagged section takes no part in the global solve: its field is interpolated from its neighbours
and the sections on both sides of it are aligned to each other directly (the pairs two apart).
"""

from __future__ import annotations

import numpy as np

OK, BLANK, MISSING, UNMATCHED = 0, 1, 2, 3
REASONS = {OK: "ok", BLANK: "blank", MISSING: "missing", UNMATCHED: "matches neither neighbour"}

# values of the defect mask volume; OUTSIDE: an aligned pixel whose source lies outside its section (no tissue
# was imaged there: the margins the warp leaves)
SECTION_FLAG, REGION_FLAG, OUTSIDE_FLAG = 1, 2, 3


def section_flags(count: np.ndarray, total: np.ndarray, total_sq: np.ndarray, zeros: np.ndarray,
                  good: dict[int, np.ndarray], measurable: dict[int, np.ndarray], min_std: float,
                  max_zero_fraction: float, min_good_fraction: float) -> np.ndarray:
    """A code per section from its intensity statistics and the fraction of good patches per pair.

    `good[k]` (sections - k, gy, gx) marks the patches of pair (z, z + k) that matched well, among
    the `measurable` ones (whose match lies inside both sections).
    """
    n = len(count)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean * mean, 0.0))
    flags = np.full(n, OK, np.uint8)
    flags[zeros / np.maximum(count, 1) > max_zero_fraction] = MISSING
    flags[(flags == OK) & (std < min_std)] = BLANK
    best = np.zeros(n)  # the best fraction of good patches over a section's pairs
    has_pair = np.zeros(n, bool)
    for k, g in good.items():
        m = measurable[k].reshape(len(g), -1)
        frac = (g.reshape(len(g), -1) & m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        for zs in (np.arange(n - k), np.arange(k, n)):
            best[zs] = np.maximum(best[zs], frac)
            has_pair[zs] = True
    flags[(flags == OK) & has_pair & (best < min_good_fraction)] = UNMATCHED
    return flags


def region_flags(good: dict[int, np.ndarray], measurable: dict[int, np.ndarray], flags: np.ndarray) -> np.ndarray:
    """(sections, gy, gx): patches of unflagged sections that match neither neighbour (k = 1) while
    the two neighbours match each other there (k = 2): the tissue continues across the section but
    this section does not show it (a fold, crack or dirt). Low-texture areas, which match nothing,
    are not flagged. Patches are taken at the same node in all three sections."""
    n = len(flags)
    g1, m1, g2 = good.get(1), measurable.get(1), good.get(2)
    out = np.zeros((n,) + (g1.shape[1:] if g1 is not None else (0, 0)), bool)
    if g1 is None or m1 is None or g2 is None or n < 3:
        return out
    ok = flags == OK
    poor = m1 & ~g1  # pair (z, z + 1) measured and failed
    below = poor[:-1]  # pair (z - 1, z) for z = 1 .. n - 2
    above = poor[1:]  # pair (z, z + 1)
    skip = g2  # pair (z - 1, z + 1) matched
    inner = below & above & skip & (ok[:-2] & ok[2:])[:, None, None]
    out[1:-1] = inner & ok[1:-1, None, None]
    return out

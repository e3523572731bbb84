"""Vectorised rasterisation of capsules (tube segments with a linearly varying radius) onto a grid.

Positions are in nm, (z, y, x), with voxel i's centre at i * voxel_size. The loop runs over
segments; each segment's voxels are computed at once inside its bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Segments:
    """Capsules from p0 to p1 (nm) with radius r0 at p0 and r1 at p1, each carrying a label and a code."""

    p0: np.ndarray  # (S, 3) float
    p1: np.ndarray  # (S, 3)
    r0: np.ndarray  # (S,)
    r1: np.ndarray  # (S,)
    label: np.ndarray  # (S,) int64
    code: np.ndarray  # (S,) uint8 compartment or organelle code

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> Segments:
        """Rows of (p0, p1, r0, r1, label, code)."""
        if not rows:
            z = np.zeros((0, 3))
            return cls(z, z.copy(), np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.uint8))
        p0, p1, r0, r1, label, code = zip(*rows)
        return cls(np.asarray(p0, float), np.asarray(p1, float), np.asarray(r0, float),
                   np.asarray(r1, float), np.asarray(label, np.int64), np.asarray(code, np.uint8))

    def __len__(self) -> int:
        return len(self.r0)


def capsule_window(shape, voxel_size, p0, p1, r0, r1):
    """The voxel window around one capsule and, inside it, the squared normalised distance (d / r)^2.

    Returns (slices, m2) or None when the capsule misses the grid. m2 < 1 inside the capsule.
    """
    vs = np.asarray(voxel_size, float)
    rmax = max(r0, r1)
    lo = np.floor((np.minimum(p0, p1) - rmax) / vs).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + rmax) / vs).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    seg = (p1 - p0).astype(np.float32)
    axes = [((np.arange(lo[a], hi[a]) * vs[a]) - p0[a]).astype(np.float32) for a in range(3)]
    z = axes[0][:, None, None]
    y = axes[1][None, :, None]
    x = axes[2][None, None, :]
    length2 = float(seg @ seg)
    if length2 > 0:
        t = (z * (seg[0] / length2) + y * (seg[1] / length2)) + x * (seg[2] / length2)
        np.clip(t, 0.0, 1.0, out=t)
        d2 = (z - t * seg[0]) ** 2
        d2 += (y - t * seg[1]) ** 2
        d2 += (x - t * seg[2]) ** 2
        if r0 != r1:
            r = t * np.float32(r1 - r0)
            r += np.float32(r0)
            d2 /= r * r
        else:
            d2 /= np.float32(r0 * r0)
    else:
        d2 = (z * z + y * y) + x * x
        d2 /= np.float32(r0 * r0)
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return slices, d2


def rasterise(segments: Segments, voxel_size, labels: np.ndarray | None, codes: np.ndarray,
              best: np.ndarray | None, locked: np.ndarray, force: bool = False,
              within: np.ndarray | None = None):
    """Paint segments into `labels` (unless None) and `codes` in place.

    Competing mode (force=False): a voxel goes to the segment with the smallest normalised distance
    d / r (stored squared in `best`), so touching tubes meet at a weighted boundary instead of one
    overwriting the other. Locked voxels are never changed. Force mode paints every unlocked voxel
    inside a segment and locks it. `within`, when given, is a label array: a segment only paints
    voxels whose `within` value equals its own label (organelles inside their cell).
    """
    shape = codes.shape
    for i in range(len(segments)):
        win = capsule_window(shape, voxel_size, segments.p0[i], segments.p1[i],
                             float(segments.r0[i]), float(segments.r1[i]))
        if win is None:
            continue
        sl, m2 = win
        if force:
            take = m2 < 1.0
        elif best is None:
            raise TypeError("rasterise: competing mode (force=False) needs `best`")
        else:
            take = m2 < np.minimum(best[sl], 1.0)
        take &= ~locked[sl]
        if within is not None:
            take &= within[sl] == segments.label[i]
        if not take.any():
            continue
        if labels is not None:
            labels[sl][take] = segments.label[i]
        codes[sl][take] = segments.code[i]
        if force:
            locked[sl] |= take
        elif best is not None:  # always so here: competing mode without `best` raised above
            best[sl][take] = m2[take]

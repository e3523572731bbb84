"""Breaks in a stack's chain of matched pairs, and the whole-section links that bridge them.

The global solve joins two sections only through pairs that carry weight (matched patches, or a
pair's robust fit). Where no pair joins the sections before a place in the stack to those after it
(a duplicated section whose next pair matches nothing, a flagged section whose skip pair failed),
the two pieces would be aligned each on its own and meet with a jump. Each such break between
consecutive usable sections a < b is bridged by the affine transform that best matches the two
whole sections' intensities (`overlap.refine_pair`, started from identity and from the `GUESSES`
best peaks of the sections' cross-correlation at a quarter of the resolution); a break whose best link agrees
less than `MIN_LINK_AGREEMENT`, or stretches a section by more than `MAX_STRETCH`, is left, and
reported.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from connectome.alignment.overlap import SectionImages, refine_pair
from connectome.alignment.patches import downsample
from connectome.core.union_find import UnionFind

# correlation over the overlap below which a link is not trusted (real neighbouring ISBI sections: 0.4-0.55)
MIN_LINK_AGREEMENT = 0.3
GUESS_FACTOR = 4  # resolution of the cross-correlation guess (downsampling factor)
GUESSES = 5  # cross-correlation peaks refined from (with identity)
# a link's linear part: singular values within 1 +- this (real neighbouring ISBI sections: up to 0.07)
MAX_STRETCH = 0.1
# sections larger than this (pixels) are not linked (the break is reported): a link reads both whole sections at
# full resolution in the one global step
MAX_LINK_PIXELS = 8192 * 8192


def joined_sections(weights: dict[int, np.ndarray]) -> UnionFind:
    """Which sections the pairs that carry weight join."""
    joined = UnionFind()
    for k, w in weights.items():
        for z in np.flatnonzero(w.reshape(len(w), -1).sum(axis=1) > 0):
            joined.union(int(z), int(z) + k)
    return joined


def breaks(joined: UnionFind, usable: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive usable sections (a, b) that the chain does not join."""
    zs = np.flatnonzero(usable)
    return [(int(a), int(b)) for a, b in zip(zs[:-1], zs[1:]) if joined.find(int(a)) != joined.find(int(b))]


def translation_guesses(a: np.ndarray, b: np.ndarray, count: int = GUESSES,
                        factor: int = GUESS_FACTOR) -> list[np.ndarray]:
    """Shifts t (y, x, full-resolution pixels) with b(p + t) ~ a(p): the `count` highest peaks (at least
    4 coarse pixels apart) of the two whole sections' cross-correlation at 1 / `factor` resolution,
    smoothed (real neighbouring sections share their coarse structure, not their fine texture), each
    windowed against the edges' wrap-around."""
    la = gaussian_filter(downsample(a, factor, np.float64), 2.0)
    lb = gaussian_filter(downsample(b, factor, np.float64), 2.0)
    h, w = min(la.shape[0], lb.shape[0]), min(la.shape[1], lb.shape[1])
    la, lb = la[:h, :w], lb[:h, :w]
    window = np.outer(np.hanning(h), np.hanning(w))
    pad = (2 * h, 2 * w)  # zero-padded: a linear, not a circular, correlation
    fa = np.fft.rfft2((la - la.mean()) * window, pad)
    fb = np.fft.rfft2((lb - lb.mean()) * window, pad)
    surface = np.fft.irfft2(np.conj(fa) * fb, pad)
    peaks = (surface == maximum_filter(surface, size=9, mode="wrap")) & (surface > 0)
    order = np.argsort(surface[peaks])[::-1][:count]
    size = np.array(pad, np.float64)
    out = []
    for at in np.argwhere(peaks)[order].astype(np.float64):
        out.append(np.where(at >= size / 2, at - size, at) * factor)
    return out


def link(images: SectionImages, a: int, b: int) -> tuple[np.ndarray, float] | None:
    """The affine transform from section a to section b over their whole overlap and its agreement,
    refined from identity and from each guessed shift; None where none converges to a plausible
    transform (singular values within 1 +- `MAX_STRETCH`) agreeing at least `MIN_LINK_AGREEMENT`, or where
    the sections exceed `MAX_LINK_PIXELS`."""
    if images.extent[0] * images.extent[1] > MAX_LINK_PIXELS:
        return None
    identity = np.hstack([np.eye(2), np.zeros((2, 1))])
    found = []
    for shift in [np.zeros(2), *translation_guesses(images[a], images[b])]:
        start = identity.copy()
        start[:, 2] = shift
        refined = refine_pair(images[a], images[b], start)
        if refined is None or not refined[1] >= MIN_LINK_AGREEMENT:
            continue
        stretch = np.linalg.svd(refined[0][:, :2], compute_uv=False)
        if stretch.max() <= 1 + MAX_STRETCH and stretch.min() >= 1 - MAX_STRETCH:
            found.append(refined)  # (sections are not scaled or sheared more: a false optimum)
    return max(found, key=lambda r: r[1]) if found else None

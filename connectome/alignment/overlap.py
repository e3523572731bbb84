"""A section pair's affine transform refined on intensities over the pair's whole overlap.

Patch matches see a template's worth of tissue each; where the texture repeats, neighbouring
patches can pick displacements a period apart and the pair's robust fit inherits their split.
Minimising the intensity differences over the whole overlap instead (one affine warp, Gauss-Newton,
coarse to fine, robustly weighted, masked to pixels inside both sections) sees all the tissue at
once: the result is the pair's transform against which single patches are checked and searched
again (`solve_step`, opt-in: `align` params `refine`). Where the true displacement between two
sections is far from affine (ISBI 2012's sections 0 and 1: about 10 px apart between the top and
the bottom of the section), the best affine depends on the area it is fitted over, and so does
this refinement.

Transforms are (2, 3) matrices [M | t] taking a position p of the first section to the position
M p + t of the second section that shows the same tissue (as in `fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from connectome.alignment.fit import apply
from connectome.alignment.patches import SEARCH_FAILED, PatchSettings, SectionPair, downsample

HUBER = 1.345  # robust weight: residuals beyond this many (robust) deviations count linearly
MIN_PIXELS = 64  # the least overlap (pixels at a level) a refinement works on


@dataclass(frozen=True)
class OverlapSettings:
    """The resolutions refined on (downsampling factors, coarse to fine), Gauss-Newton steps per
    level, and the smoothing at each level (in that level's pixels)."""

    factors: tuple[int, ...] = (4, 2, 1)
    iterations: int = 40
    sigma: float = 2.0


def _to_level(transform: np.ndarray, f: int) -> np.ndarray:
    """A full-resolution transform in the coordinates of a level downsampled by f (pixel p of the
    level covers full-resolution pixels f p .. f p + f - 1, centred at f p + (f - 1) / 2)."""
    m, t = transform[:, :2], transform[:, 2]
    c = (f - 1) / 2
    return np.hstack([m, ((t + m @ np.full(2, c) - c) / f)[:, None]])


def _from_level(transform: np.ndarray, f: int) -> np.ndarray:
    m, t = transform[:, :2], transform[:, 2]
    c = (f - 1) / 2
    return np.hstack([m, (t * f + c - m @ np.full(2, c))[:, None]])


def _refine_level(a: np.ndarray, b: np.ndarray, transform: np.ndarray,
                  iterations: int) -> tuple[np.ndarray, float] | None:
    """Gauss-Newton on sum w (a(p) - gain b(T p) - offset)^2 over a's pixels whose T p lies inside
    b (both images standardised; gain and offset solved with the transform), with Huber weights
    (iteratively reweighted). Returns the transform and the correlation of the two images over the
    overlap at the last step; None when the overlap is too small."""
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    s = max(h, w) / 2
    ry, rx = ((yy - c[0]) / s).ravel(), ((xx - c[1]) / s).ravel()
    py, px = yy.ravel(), xx.ravel()
    av = ((a - a.mean()) / max(a.std(), 1e-6)).ravel()
    b = (b - b.mean()) / max(b.std(), 1e-6)
    gy_img, gx_img = np.gradient(b)
    m, t = transform[:, :2].copy(), transform[:, 2].copy()
    gain, offset = 1.0, 0.0
    for _ in range(iterations):
        qy = m[0, 0] * py + m[0, 1] * px + t[0]
        qx = m[1, 0] * py + m[1, 1] * px + t[1]
        inside = (qy >= 0) & (qy <= b.shape[0] - 1) & (qx >= 0) & (qx <= b.shape[1] - 1)
        if inside.sum() < MIN_PIXELS:
            return None
        q = [qy[inside], qx[inside]]
        bw = map_coordinates(b, q, order=1)
        gy = gain * map_coordinates(gy_img, q, order=1)
        gx = gain * map_coordinates(gx_img, q, order=1)
        r = av[inside] - gain * bw - offset
        agreement = float(np.corrcoef(av[inside], bw)[0, 1]) if bw.std() > 1e-9 else 0.0
        scale = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-6
        weight = np.minimum(1.0, HUBER * scale / np.maximum(np.abs(r), 1e-12))
        # parameters: the displacement at the centre (y, x), the linear part per half side, gain, offset
        yi, xi = ry[inside], rx[inside]
        jac = np.stack([gy, gx, gy * yi, gy * xi, gx * yi, gx * xi, bw, np.ones_like(bw)], axis=1)
        hess = jac.T @ (jac * weight[:, None])
        grad = jac.T @ (weight * r)
        try:
            step = np.linalg.solve(hess + np.eye(len(grad)) * 1e-9 * np.trace(hess), grad)
        except np.linalg.LinAlgError:
            return None
        step[:6] = np.clip(step[:6], -2.0, 2.0)
        # the step moves the second section's sample point by dt + dA (p - c) / s
        dm = np.array([[step[2], step[3]], [step[4], step[5]]]) / s
        m = m + dm
        t = t + step[:2] - dm @ c
        gain, offset = gain + step[6], offset + step[7]
        if np.abs(step[:6]).max() < 1e-3:
            break
    return np.hstack([m, t[:, None]]), agreement


def refine_pair(a: np.ndarray, b: np.ndarray, transform: np.ndarray,
                settings: OverlapSettings = OverlapSettings()) -> tuple[np.ndarray, float] | None:
    """The affine transform from section a to section b that best matches their intensities over
    their overlap, started from `transform` (full resolution), and the sections' correlation over
    the overlap under it (at the finest level); None where the overlap is too small."""
    current = np.asarray(transform, np.float64)
    agreement = -1.0
    for f in settings.factors:
        if min(a.shape) // f < 8:
            continue
        la = gaussian_filter(downsample(a, f, np.float64), settings.sigma)
        lb = gaussian_filter(downsample(b, f, np.float64), settings.sigma)
        out = _refine_level(la, lb, _to_level(current, f), settings.iterations)
        if out is None:
            return None
        current, agreement = _from_level(out[0], f), out[1]
    return current, agreement


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The transform applying `first`, then `second`."""
    return np.hstack([second[:, :2] @ first[:, :2], (second[:, :2] @ first[:, 2] + second[:, 2])[:, None]])


class SectionImages:
    """Whole sections of a raw volume, read when first asked for (the last `keep` kept)."""

    def __init__(self, address: str, keep: int = 3):
        from connectome.io import open_volume

        self.address = address  # (tasks on other workers open the volume again: `defects.image_cue`)
        self.volume = open_volume(address)
        self.extent = (int(self.volume.shape[1]), int(self.volume.shape[2]))
        self.keep = keep
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, z: int) -> np.ndarray:
        if z not in self._cache:
            from connectome.core.geometry import Box

            section = self.volume.read(Box((z, 0, 0), (1, *self.extent)))[0].astype(np.float32)
            self._cache[z] = section
            while len(self._cache) > self.keep:  # the longest kept (a section just read stays)
                self._cache.pop(next(iter(self._cache)))
        return self._cache[z]


def refine_best(images: SectionImages, z: int, k: int, starts: list[np.ndarray],
                settings: OverlapSettings = OverlapSettings()) -> tuple[np.ndarray, float] | None:
    """Pair (z, z + k) refined from each of `starts`; the refinement whose intensities agree best
    (correlation over the overlap) and that agreement, or None if none worked."""
    results = [r for r in (refine_pair(images[z], images[z + k], start, settings) for start in starts)
               if r is not None]
    return max(results, key=lambda r: r[1]) if results else None


def search_near(images: SectionImages, z: int, k: int, transform: np.ndarray, points: np.ndarray, d: np.ndarray,
                corr: np.ndarray, patch: int, max_disagreement: float, min_corr: float,
                ambiguity: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The patches of pair (z, z + k) (displacements `d` (n, 2) at `points`, correlations `corr`)
    that disagree with `transform` by more than `max_disagreement` pixels, searched again within a
    few pixels of it. The match found there replaces the patch's own where that was poor (below
    `min_corr`) or hardly better (by less than `ambiguity`): a repetitive texture gives a patch
    several near-equal peaks a period apart; a clearly better own match is kept (the tissue itself
    may deform away from the pair's affine transform). Returns the displacements, the correlations
    and how many were replaced."""
    predicted = apply(transform, points) - points
    off = np.linalg.norm(d - predicted, axis=1) > max_disagreement
    d, corr = d.copy(), corr.copy()
    pair = SectionPair(images[z], images[z + k], (0, 0), images.extent)
    radius = int(np.ceil(max_disagreement)) + 2
    replaced = 0
    for i in np.nonzero(off)[0]:
        near, near_corr = pair.rematch(points[i], PatchSettings(patch), predicted[i], radius)
        if near_corr != SEARCH_FAILED and (corr[i] < min_corr or near_corr > corr[i] - ambiguity):
            d[i], corr[i] = near, near_corr
            replaced += 1
    return d, corr, replaced

"""Serial sections stored out of their physical order: the order recovered from the images.

Neighbouring sections of a stack look alike (at 40-50 nm the same neurites cross both); sections far apart
do not. Each section is reduced to a small image (a central window, smoothed and subsampled, zero mean,
unit norm), two sections' similarity is the greatest correlation of their images over shifts of up to about
a quarter of the window (sections not yet aligned compare too), and the recovered order is the path
through all sections whose neighbours are most alike: greedy paths, each improved by 2-opt, the stored order
among the starts. The stored order is kept unless fewer than half of its neighbouring pairs are neighbours in
the recovered one (`RECOVER_BELOW`) and the recovered neighbours are clearly more alike (`CLEARLY_BETTER`), so
a stack in order, one with a blank or damaged section the path would rather put at an end, or one misaligned
beyond the search, is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from connectome.core.geometry import Box
from connectome.io import Volume

WINDOW = 512  # pixels (y and x) of each section's centre that are compared
SIDE = 96  # the window is smoothed and subsampled to about this many pixels a side
RADIUS = 24  # shifts (subsampled pixels, y and x) searched: up to 120 pixels for a 512-pixel window
RECOVER_BELOW = 0.5  # `auto` recovers the order when fewer of the stored neighbour pairs stay neighbours
CLEARLY_BETTER = 0.6  # ... and the stored neighbours' median similarity is below this share of the recovered ones'
MAX_SECTIONS = 2048  # `auto` checks stacks up to this many sections (the similarities are n x n)
LOCAL_REACH = 4  # a kept stack: single sections moved by up to this many places are tried (`misplaced_sections`) ...
LOCAL_GAIN = 0.3  # ... and reported where the move adds this share of the median neighbour similarity to the path
BAND = 2 * LOCAL_REACH + 2  # a kept order compares each section with this many after it (`banded_similarity`)
SHUFFLED_BELOW = 2.0  # a stack too long to recover under auto looks out of order when its stored neighbours are
# less than this many times as alike as sections BAND apart (real stacks in order 2.4-5.3, shuffled 0.9-1.5:
# benchmarks/results/section_order.md)
SHORT_CONTRAST = 1.5  # ... the same for a stack of BAND sections or fewer, against its ends: random images at most
# 1.24 from 5 sections on (1.4 at 4), real stacks with a pair swapped at least 1.99 (1.28 at 4)
UNLIKE = 0.15  # a section whose best similarity with any other is below this share of the median section's is a
# defect (blank, missing), not out of order: it keeps its stored place (a blank section scores 0; the least alike
# real section of the shuffled CREMI crop 0.26)
MODES = ("auto", "keep", "recover")


@dataclass(frozen=True)
class SectionOrder:
    """The recovered order (stored indices, physical first to last), how well the stored order agrees with
    it, and whether to work in it (`recovered`)."""

    order: tuple[int, ...]
    kept_pairs: float  # fraction of the stored neighbour pairs that are neighbours in `order`
    stored_similarity: float  # median similarity of stored neighbours
    recovered_similarity: float  # median similarity of neighbours in `order`
    recovered: bool
    misplaced: tuple[int, ...] = ()  # where the stored order is kept: sections that look out of place in it
    unrecovered: bool = False  # auto on more than MAX_SECTIONS: the stored order looks wrong, and is kept


def positions(order) -> np.ndarray:
    """The position in `order` of each stored section (the inverse permutation)."""
    order = np.asarray(order, np.int64)
    out = np.empty(len(order), np.int64)
    out[order] = np.arange(len(order))
    return out


def section_images(volume: Volume | np.ndarray, window: int = WINDOW, side: int = SIDE, batch: int = 16,
                   start: int = 0, stop: int | None = None) -> np.ndarray:
    """(sections, h, w): each section's (from `start` to `stop`) central window (of a volume or an array in
    memory), smoothed and subsampled to about `side` pixels, zero mean, unit norm (a blank section gives zeros);
    pixels exactly 0 count as no data (`_margins_filled`)."""
    z, y, x = volume.shape if isinstance(volume, np.ndarray) else volume.meta.shape
    z = z if stop is None else min(z, stop)
    (ay, ax), (by, bx) = (0, 0), (y, x)  # the part of the plane every section holds image data in
    if not isinstance(volume, np.ndarray):  # whole chunks of sections at a time (up to 64): each decompressed once
        batch = max(batch, min(int(volume.meta.chunk_shape[0]), 64))
        for fy, fx, fh, fw in volume.section_footprints().values():  # padding alike in two sections is no likeness
            ay, ax, by, bx = max(ay, fy), max(ax, fx), min(by, fy + fh), min(bx, fx + fw)
        if by - ay < 16 or bx - ax < 16:  # sections that hardly overlap: compare them as stored
            (ay, ax), (by, bx) = (0, 0), (y, x)
    wy, wx = min(window, by - ay), min(window, bx - ax)
    f = max(1, round(min(wy, wx) / side))
    y0, x0 = ay + (by - ay - wy) // 2, ax + (bx - ax - wx) // 2
    out = []
    for z0 in range(start, z, batch):
        z1 = min(z, z0 + batch)
        box = Box.from_corners((z0, y0, x0), (z1, y0 + wy, x0 + wx))
        data = (volume[box.to_slices()] if isinstance(volume, np.ndarray) else volume.read(box)).astype(np.float32)
        data = _margins_filled(data)
        if f > 1:
            data = ndimage.gaussian_filter(data, (0, f / 2, f / 2))[:, f // 2::f, f // 2::f]
        data = data - data.mean(axis=(1, 2), keepdims=True)
        norm = np.linalg.norm(data.reshape(z1 - z0, -1), axis=1)[:, None, None]
        out.append(data / np.where(norm > 0, norm, 1.0))
    return np.concatenate(out)


def _margins_filled(data: np.ndarray) -> np.ndarray:
    """Sections (z, y, x) whose pixels exactly 0 (no data: the margins an alignment's warp leaves, padding) hold
    the mean of the section's other pixels, so that margins alike in two sections are no likeness."""
    empty = data == 0
    count = (~empty).sum(axis=(1, 2), keepdims=True)
    mean = data.sum(axis=(1, 2), keepdims=True) / np.maximum(count, 1)
    return np.where(empty, mean, data)


def similarity(images: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """(sections, sections): the greatest correlation of two sections' images over shifts of up to `radius`
    pixels in y and x (FFT cross-correlation of the zero-padded images), so sections not yet aligned still
    compare. Only the overlap counts, so a shift is worth less the larger it is: sections in register win."""
    n = images.shape[0]
    spectra, shape = _spectra(images, radius)
    out = np.zeros((n, n))
    for a in range(n):
        out[a, a:] = out[a:, a] = _peaks(spectra[a][None], spectra[a:], shape, radius)
    return out


def banded_similarity(volume: Volume | np.ndarray, width: int, radius: int = RADIUS, batch: int = 64) -> np.ndarray:
    """(sections, width): `similarity` of each section with each of the `width` sections after it in the stored
    order (0 past the end); read `batch` sections at a time, so memory does not grow with the stack."""
    n = volume.shape[0] if isinstance(volume, np.ndarray) else volume.meta.shape[0]
    out = np.zeros((n, width))
    kept = None  # the spectra of the `width` sections before this batch
    for z0 in range(0, n, batch):
        z1 = min(n, z0 + batch)
        spectra, shape = _spectra(section_images(volume, start=z0, stop=z1), radius)
        if kept is not None:
            spectra = np.concatenate([kept, spectra])
        base = z1 - len(spectra)  # the section of spectra[0]
        for d in range(1, width + 1):
            later = np.arange(max(z0, d), z1)  # the pairs (b - d, b) whose later section is in this batch
            if len(later):
                out[later - d, d - 1] = _peaks(spectra[later - d - base], spectra[later - base], shape, radius)
        kept = spectra[-width:]
    return out


def _spectra(images: np.ndarray, radius: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The images' spectra, zero-padded by `radius` so that a shift within it does not wrap; and that shape."""
    shape = (images.shape[1] + radius, images.shape[2] + radius)
    return np.fft.rfft2(images, s=shape), shape


def _peaks(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """The greatest correlation of each pair of images (spectra `a`, `b`, broadcast) over shifts up to `radius`."""
    corr = np.fft.irfft2(a * np.conj(b), s=shape)
    near = np.r_[0:radius + 1, shape[0] - radius:shape[0]], np.r_[0:radius + 1, shape[1] - radius:shape[1]]
    return corr[:, near[0]][:, :, near[1]].reshape(len(corr), -1).max(axis=1)


def path_cost(order: np.ndarray, dist: np.ndarray) -> float:
    return float(dist[order[:-1], order[1:]].sum())


def greedy_path(start: int, dist: np.ndarray) -> np.ndarray:
    """From `start`, always on to the nearest section not yet on the path."""
    n = dist.shape[0]
    used = np.zeros(n, bool)
    order = np.empty(n, np.int64)
    order[0], used[start] = start, True
    for k in range(1, n):
        nxt = int(np.argmin(np.where(used, np.inf, dist[order[k - 1]])))
        order[k], used[nxt] = nxt, True
    return order


def two_opt(order: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Reverse stretches of the open path while one shortens it (for each start, the best end at once)."""
    p = np.array(order, np.int64)
    n = len(p)
    improved = n > 2
    while improved:
        improved = False
        for i in range(n - 1):  # reverse p[i..j]: its outer edges (p[i-1], p[i]) and (p[j], p[j+1]) change
            j = np.arange(i + 1, n)
            after = p[np.minimum(j + 1, n - 1)]
            last = j == n - 1
            old = np.where(last, 0.0, dist[p[j], after])
            new = np.where(last, 0.0, dist[p[i], after])
            if i > 0:
                old = old + dist[p[i - 1], p[i]]
                new = new + dist[p[i - 1], p[j]]
            gain = old - new
            k = int(np.argmax(gain))
            if gain[k] > 1e-9:
                p[i:j[k] + 1] = p[i:j[k] + 1][::-1].copy()
                improved = True
    return p


def plausible_neighbours(similarity: np.ndarray, rank: int = 3) -> float:
    """Fraction of the stored neighbour pairs (z, z + 1) where z + 1 is among the `rank` sections most like z."""
    n = similarity.shape[0]
    if n < 2:
        return 1.0
    sim = np.where(np.eye(n, dtype=bool), -np.inf, similarity)
    top = np.argsort(-sim, axis=1)[:, :rank]
    return float(np.mean((top[:-1] == np.arange(1, n)[:, None]).any(axis=1)))


def unlike_sections(similarity: np.ndarray, share: float = UNLIKE) -> np.ndarray:
    """Sections (bool) like no other: their greatest similarity with any other section is below `share` of the
    median section's (a blank, missing or damaged section)."""
    best = np.where(np.eye(len(similarity), dtype=bool), -np.inf, similarity).max(axis=1)
    typical = float(np.median(best))
    return best < share * typical if typical > 0 else np.zeros(len(best), bool)


def recover_order(similarity: np.ndarray, budget: int = 16384) -> np.ndarray:
    """The path of greatest neighbour similarity: the stored order and, unless nine in ten of its
    neighbours are plausible already (`plausible_neighbours`), greedy paths from up to 64 sections
    (fewer for long stacks: `budget` / sections), each improved by 2-opt; the best, oriented to run with
    the stored order. A section like no other (`unlike_sections`) keeps its place after its stored predecessor
    (a path would put it at an end, where it costs least)."""
    n = similarity.shape[0]
    if n < 3:
        return np.arange(n)
    unlike = unlike_sections(similarity)
    if unlike.any() and (~unlike).sum() >= 3:
        alike = np.flatnonzero(~unlike)
        path = list(alike[recover_order(similarity[np.ix_(alike, alike)], budget)])
        for z in np.flatnonzero(unlike):  # ascending: a section's stored predecessor is placed before it
            path.insert(_place(path, int(z)), int(z))
        return np.asarray(path, np.int64)
    dist = 1.0 - similarity
    candidates = [np.arange(n)]
    if plausible_neighbours(similarity) < 0.9:
        starts = max(4, min(64, budget // n))
        candidates += [greedy_path(int(s), dist) for s in np.unique(np.linspace(0, n - 1, starts).round().astype(int))]
    best = min((two_opt(c, dist) for c in candidates), key=lambda p: path_cost(p, dist))
    return best if np.corrcoef(np.arange(n), best)[0, 1] >= 0 else best[::-1]


def _place(path: list[int], z: int) -> int:
    """Where in `path` section z goes: between its stored predecessor and the next stored section placed where
    they meet in it (in either direction); next to the one of them that ends the path where z has no other
    stored neighbour; else at the end (where a path puts a section like no other: it splits no pair)."""
    at = {v: i for i, v in enumerate(path)}
    before, after = at.get(z - 1), at.get(min((v for v in at if v > z), default=-1))
    if before is not None and after is not None:
        return max(before, after) if abs(before - after) == 1 else len(path)
    for end in (before, after):
        if end is not None and end in (0, len(path) - 1):
            return 0 if end == 0 else len(path)
    return len(path)


def kept_pairs(order: np.ndarray) -> float:
    """Fraction of the stored neighbour pairs (z, z + 1) that are neighbours in `order`."""
    if len(order) < 2:
        return 1.0
    position = positions(order)
    return float(np.mean(np.abs(position[1:] - position[:-1]) == 1))


def serial_sections(voxel_size) -> bool:
    """Whether a voxel size (z, y, x) is that of serial sections: z at least twice the finer in-plane size."""
    return float(voxel_size[0]) >= 2 * min(float(voxel_size[1]), float(voxel_size[2]))


def section_order(volume: Volume | np.ndarray, mode: str = "auto") -> SectionOrder:
    """The recovered order of `volume`'s sections, recovered (worked in) where `mode` says: `recover` always,
    `auto` where fewer than `RECOVER_BELOW` of the stored neighbour pairs are neighbours in it and its neighbours
    are clearly more alike than the stored ones (`CLEARLY_BETTER`; sections misaligned by more than the search
    radius look alike to none, and their stack is left as it is). A stored order that is kept names its
    `misplaced` sections. `auto` on more than MAX_SECTIONS sections (the whole check grows with their square)
    compares each section with the BAND after it only: it keeps the stored order, and says whether it looks out of
    order (`unrecovered`) or which sections look out of place."""
    n = volume.shape[0] if isinstance(volume, np.ndarray) else volume.meta.shape[0]
    if mode == "auto" and n > MAX_SECTIONS:
        band = banded_similarity(volume, BAND)
        stored = float(np.median(band[:-1, 0]))
        shuffled = stored < SHUFFLED_BELOW * float(np.median(band[:n - BAND, BAND - 1]))
        return SectionOrder(tuple(range(n)), 1.0, stored, stored, False,
                            () if shuffled else misplaced_sections(band), shuffled)
    sim = similarity(section_images(volume))
    order = recover_order(sim)
    kept = kept_pairs(order)
    n = len(order)
    stored = float(np.median(np.diagonal(sim, 1))) if n > 1 else 1.0
    found = float(np.median(sim[order[:-1], order[1:]])) if n > 1 else 1.0
    changed = not np.array_equal(order, np.arange(n))
    clear = kept < RECOVER_BELOW and stored < CLEARLY_BETTER * found
    recovered = changed and (mode == "recover" or (mode == "auto" and clear))
    misplaced = misplaced_sections(band_of(sim)) if mode == "auto" and not recovered else ()
    return SectionOrder(tuple(int(v) for v in order), kept, stored, found, recovered, misplaced)


def band_of(sim: np.ndarray, width: int = BAND) -> np.ndarray:
    """(sections, width): the `banded_similarity` held in a full similarity matrix."""
    n = len(sim)
    out = np.zeros((n, width))
    for d in range(1, min(width, n - 1) + 1):
        out[:n - d, d - 1] = np.diagonal(sim, d)
    return out


def band_pairs(band: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The similarity of stored sections a and b (arrays) from a band (`banded_similarity`): 0 beyond its width."""
    width = band.shape[1]

    def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.abs(a - b)
        return np.where((d >= 1) & (d <= width), band[np.minimum(a, b), np.clip(d - 1, 0, width - 1)], 0.0)

    return pair


def move_gains(pair: Callable[[np.ndarray, np.ndarray], np.ndarray], order: np.ndarray, shift: int) -> np.ndarray:
    """For each position i of `order` (stored indices), how much the path's neighbour similarity (`pair` of two
    arrays of sections) grows when the section at i moves `shift` places (later if positive); -inf where that
    leaves the stack."""
    n = len(order)
    link = np.r_[pair(order[:-1], order[1:]), 0.0, 0.0]  # link[k]: positions k, k + 1 (0 past the end)
    i = np.arange(n)
    j = i + shift
    ok = (j >= 0) & (j < n)
    i, j = i[ok], j[ok]

    def s(a, b):  # similarity of the sections at positions a and b; 0 where a position is off the stack
        inside = (a >= 0) & (a < n) & (b >= 0) & (b < n)
        return np.where(inside, pair(order[np.clip(a, 0, n - 1)], order[np.clip(b, 0, n - 1)]), 0.0)

    before = np.where(i > 0, link[np.maximum(i - 1, 0)], 0.0) + link[i]
    if shift > 0:  # ... i-1, i+1 ... j, i, j+1 ...
        gain = s(i - 1, i + 1) + s(j, i) + s(i, j + 1) - before - link[j]
    else:  # ... j-1, i, j ... i-1, i+1 ...
        gain = s(j - 1, i) + s(i, j) + s(i - 1, i + 1) - before - np.where(j > 0, link[np.maximum(j - 1, 0)], 0.0)
    out = np.full(n, -np.inf)
    out[ok] = gain
    return out


def misplaced_sections(band: np.ndarray, reach: int = LOCAL_REACH, share: float = LOCAL_GAIN) -> tuple[int, ...]:
    """Stored indices of single sections that, moved by up to `reach` places, make the stored path's neighbours
    more alike by at least `share` of its median neighbour similarity (a swapped pair, a section slipped a few
    places): the best such move, then the next on the order it leaves, at most one per ten sections. `band`: each
    section's similarity with the ones after it (`banded_similarity`, `band_of`)."""
    n, width = band.shape
    if n < 3:
        return ()
    far = min(width, n - 1)  # a stack whose neighbours are not clearly more alike than sections this far apart
    # holds no order to find sections out of (random images, a shuffled stack): real stacks in order 2.5-5.4 at
    # 10 apart; a shorter stack compares nearer sections, so less is asked (`SHORT_CONTRAST`)
    contrast = SHUFFLED_BELOW if far == width else SHORT_CONTRAST
    if np.median(band[:n - 1, 0]) < contrast * np.median(band[:n - far, far - 1]):
        return ()
    least = share * float(np.median(band[:n - 1, 0]))
    # a section like no other near it (blank, damaged) is a defect, not misplaced: left out, its neighbours meet
    best = band.max(axis=1)
    for d in range(1, min(width, n - 1) + 1):
        best[d:] = np.maximum(best[d:], band[:n - d, d - 1])
    order = np.flatnonzero(best >= least)
    if least <= 0 or len(order) < 3:
        return ()
    pair = band_pairs(band)
    moved: list[int] = []
    shifts = [d for d in range(-reach, reach + 1) if d]
    for _ in range(max(1, n // 10)):
        gains = np.stack([move_gains(pair, order, d) for d in shifts])
        k, i = np.unravel_index(int(np.argmax(gains)), gains.shape)
        if gains[k, i] < least:
            break
        section = int(order[i])
        order = np.insert(np.delete(order, i), i + shifts[k], section)
        moved.append(section)
    return tuple(sorted(set(moved)))

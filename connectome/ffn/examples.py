"""Training examples for the FFN: patches centred on object voxels away from boundaries, augmented, and
optionally balanced by how much of the FOV the centre's object fills (the reference's partitions)."""

from __future__ import annotations

import fastremap
import numpy as np
from scipy import ndimage

from connectome.core.errors import UserError

Vec3 = tuple[int, int, int]


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from a face neighbour's, or that are background (0)."""
    edge = labels == 0
    for axis in range(3):
        d = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return edge


def candidate_centres(labels: np.ndarray, patch: Vec3, voxel_size, min_distance: float = 2.0) -> np.ndarray:
    """Flat indices of object voxels at least `min_distance` (in the smallest voxel unit) from a boundary,
    far enough from the faces for a whole `patch` around them."""
    scale = np.asarray(voxel_size, np.float64) / min(voxel_size)
    dist = ndimage.distance_transform_edt(~label_boundaries(labels), sampling=scale)
    ok = dist >= min_distance
    for axis, p in enumerate(patch):
        r = p // 2
        index = [slice(None)] * 3
        index[axis] = np.r_[0:min(r, labels.shape[axis]), max(labels.shape[axis] - r, 0):labels.shape[axis]]
        ok[tuple(index)] = False
    return np.flatnonzero(ok)


def fov_fractions(labels: np.ndarray, fov: Vec3) -> np.ndarray:
    """Per voxel, the fraction of the `fov` box around it that carries its label (0 on background)."""
    out = np.zeros(labels.shape, np.float32)
    labels, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)  # ids 1..n for find_objects
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index  # beyond its bounding box an object has no voxels: zero padding is exact
        share = ndimage.uniform_filter(mask.astype(np.float32), fov, mode="constant")
        out[box][mask] = share[mask]
    return out


def balanced_weights(fractions: np.ndarray, bins: int = 10) -> np.ndarray:
    """Sampling weights (summing to 1) that make every occupied fraction bin equally likely."""
    which = np.minimum((fractions * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    weights = 1.0 / counts[which]
    return weights / weights.sum()


def cut(raw: np.ndarray, labels: np.ndarray, centre, patch: Vec3) -> tuple[np.ndarray, np.ndarray]:
    """The `patch` of raw and the object mask of the centre voxel's label, around `centre`."""
    box = tuple(slice(c - p // 2, c - p // 2 + p) for c, p in zip(centre, patch))
    lab = labels[box]
    return raw[box], lab == labels[tuple(centre)]


def augment(raw: np.ndarray, mask: np.ndarray, rng: np.random.Generator, anisotropic: bool):
    """Random flips, axis transposes (y/x only on anisotropic data, all cube axes otherwise) and contrast."""
    raw = raw.astype(np.float32) / 255.0
    flips = tuple(a for a in range(3) if rng.random() < 0.5)
    raw, mask = np.flip(raw, flips), np.flip(mask, flips)
    if anisotropic or raw.shape[0] != raw.shape[1]:
        perm = (0, 2, 1) if rng.random() < 0.5 and raw.shape[1] == raw.shape[2] else (0, 1, 2)
    else:
        perm = tuple(rng.permutation(3))
    raw, mask = raw.transpose(perm), mask.transpose(perm)
    mean = raw.mean()
    raw = (raw - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(np.clip(raw, 0, 1)), np.ascontiguousarray(mask)


class ExampleSource:
    """Seeded batches of (raw in [0, 1], object mask) patches from one or more labelled volumes.

    With `balance_fov`, centres are drawn so that each tenth of "share of this FOV box filled by the centre's
    object" is equally likely (within a volume); otherwise every candidate voxel is. Uniform draws favour FOVs
    that one large object fills (on synthetic tissue, half of them are over 90 % object), where a network
    learns little about where objects stop."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], patch: Vec3, voxel_size, seed: int,
                 anisotropic: bool = False, min_distance: float = 2.0, balance_fov: Vec3 | None = None):
        self.pairs = pairs
        self.patch = patch
        self.anisotropic = anisotropic
        self.rng = np.random.default_rng(seed)
        self.candidates = [candidate_centres(lab, patch, voxel_size, min_distance) for _, lab in pairs]
        sizes = np.array([len(c) for c in self.candidates], np.float64)
        if sizes.sum() == 0:
            shapes = ", ".join("x".join(map(str, lab.shape)) for _, lab in pairs)
            raise UserError(f"training volumes ({shapes} voxels, after any --scale): no object voxel is far enough "
                            f"from boundaries and faces for a training patch of {'x'.join(map(str, patch))} "
                            "(FOV + 2 x moves x step); give larger volumes or a smaller --fov / --deltas / --moves")
        self.weights = sizes / sizes.sum()
        self.within: list[np.ndarray | None] = [None] * len(pairs)  # cumulative weights of the candidates
        if balance_fov is not None:
            self.within = [np.cumsum(balanced_weights(fov_fractions(lab, balance_fov).reshape(-1)[c])) if len(c)
                           else None for (_, lab), c in zip(pairs, self.candidates)]

    def draw(self, k: int) -> int:
        """Flat index of one example centre in volume `k` (balanced or uniform, as the source was made)."""
        cdf = self.within[k]
        if cdf is None:
            pick = int(self.rng.integers(len(self.candidates[k])))
        else:
            pick = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        return int(self.candidates[k][pick])

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(size, *patch) float32 raw and bool masks."""
        raws, masks = [], []
        for _ in range(size):
            k = int(self.rng.choice(len(self.pairs), p=self.weights))
            raw, labels = self.pairs[k]
            flat = self.draw(k)
            centre = np.unravel_index(flat, labels.shape)
            r, m = augment(*cut(raw, labels, centre, self.patch), self.rng, self.anisotropic)
            raws.append(r)
            masks.append(m)
        return np.stack(raws), np.stack(masks)

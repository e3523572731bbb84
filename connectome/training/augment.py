"""Training-patch augmentation: one coordinate map (flips, axis transposes, in-plane rotation, elastic
displacement, shifted sections) sampled with `scipy.ndimage.map_coordinates` from the whole volume for
raw (linear) and labels (nearest) alike, then intensity changes and missing sections on raw only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from connectome.core.geometry import vec3

Vec3 = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise; `anisotropic` keeps z as z (serial sections: only y and x transpose)."""

    anisotropic: bool = False
    flips: bool = True
    transposes: bool = True
    rotation: bool = True  # random in-plane (y, x) angle
    elastic_sigma: float = 2.0  # std of the displacement at control points, voxels (0 = off)
    elastic_spacing: Vec3 = (12, 12, 12)  # control point spacing, voxels
    intensity: bool = True  # scale, shift, gamma, noise (per section on anisotropic data)
    missing_sections: float = 0.0  # probability per section of a blank section (raw only)
    shifted_sections: float = 0.0  # probability per section that it and all above shift in y, x
    max_section_shift: int = 4
    raw_order: int = 1  # interpolation order for raw (labels always nearest)


def _axis_map(config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """3x3 matrix taking output-patch coordinates (centred) to source offsets."""
    a = np.eye(3)
    if config.transposes:
        perm = [0, *rng.permutation([1, 2])] if config.anisotropic else list(rng.permutation(3))
        a = a[perm]
    if config.flips:
        a = a * rng.choice([-1.0, 1.0], size=3)[:, None]
    if config.rotation:
        t = rng.uniform(0, 2 * math.pi)
        rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
        a = rot @ a
    return a


def _displacement(patch: Vec3, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Smooth random displacement field (3, *patch): normal values on a coarse grid, trilinear upsampling."""
    if config.elastic_sigma <= 0:
        return None
    import torch
    import torch.nn.functional as F

    spacing = (1, *config.elastic_spacing[1:]) if config.anisotropic else config.elastic_spacing
    ctrl = tuple(max(2, math.ceil(p / s) + 1) for p, s in zip(patch, spacing))
    if config.anisotropic:
        ctrl = (patch[0], *ctrl[1:])  # each section deforms on its own
    coarse = rng.normal(0.0, config.elastic_sigma, size=(1, 3, *ctrl)).astype(np.float32)
    if config.anisotropic:
        coarse[:, 0] = 0.0  # sections stay sections
    with torch.no_grad():
        disp = F.interpolate(torch.from_numpy(coarse), size=patch, mode="trilinear", align_corners=True)
    return disp[0].numpy()


def _section_shifts(patch: Vec3, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Cumulative (y, x) shift per section: a misalignment starts at a section and persists above it."""
    if config.shifted_sections <= 0:
        return None
    steps = rng.integers(-config.max_section_shift, config.max_section_shift + 1, size=(patch[0], 2))
    steps[rng.random(patch[0]) >= config.shifted_sections] = 0
    return np.cumsum(steps, axis=0).astype(np.float32)


def augment_patch(
    raw: np.ndarray,
    labels: np.ndarray,
    patch: Vec3,
    config: AugmentConfig,
    rng: np.random.Generator,
    centre: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented patch: raw float32 in [0, 1] and labels, both `patch`-shaped, cut from the
    (in-memory) volumes `raw` (uint8) and `labels` around a random centre (or `centre`)."""
    patch = vec3(patch)
    a = _axis_map(config, rng)
    grid = np.indices(patch, dtype=np.float32)
    grid -= ((np.array(patch, np.float32) - 1) / 2)[:, None, None, None]
    coords = np.einsum("ij,j...->i...", a.astype(np.float32), grid)
    disp = _displacement(patch, config, rng)
    if disp is not None:
        coords += disp
    shifts = _section_shifts(patch, config, rng)
    if shifts is not None:
        coords[1] += shifts[:, 0, None, None]
        coords[2] += shifts[:, 1, None, None]
    if centre is None:
        lo, hi = coords.reshape(3, -1).min(axis=1), coords.reshape(3, -1).max(axis=1)
        centre = tuple(
            rng.uniform(-l, s - 1 - h) if s - 1 - h > -l else (s - 1) / 2
            for l, h, s in zip(lo, hi, raw.shape)
        )
    coords += np.asarray(centre, np.float32)[:, None, None, None]
    out_raw = ndimage.map_coordinates(raw, coords, order=config.raw_order, mode="mirror", output=np.float32,
                                      prefilter=False)
    out_raw *= 1.0 / 255.0
    out_labels = ndimage.map_coordinates(labels, coords, order=0, mode="mirror", output=labels.dtype,
                                         prefilter=False)
    if config.intensity:
        out_raw = _intensity(out_raw, config, rng)
    if config.missing_sections > 0:
        gone = rng.random(patch[0]) < config.missing_sections
        out_raw[gone] = 0.0
    return out_raw, out_labels


def _intensity(raw: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Contrast scale and brightness shift (jittered per section on anisotropic data), gamma, noise."""
    n = raw.shape[0] if config.anisotropic else 1
    scale = rng.uniform(0.8, 1.2) * (rng.normal(1.0, 0.05, n) if config.anisotropic else np.ones(1))
    shift = rng.uniform(-0.12, 0.12) + (rng.normal(0.0, 0.03, n) if config.anisotropic else np.zeros(1))
    mean = raw.mean()
    raw = (raw - mean) * scale.astype(np.float32)[:, None, None] + mean + shift.astype(np.float32)[:, None, None]
    np.clip(raw, 0.0, 1.0, out=raw)
    raw **= np.float32(2.0 ** rng.uniform(-0.5, 0.5))
    raw += rng.normal(0.0, rng.uniform(0.0, 0.03), raw.shape).astype(np.float32)
    return raw


class Augmenter:
    """Seeded source of augmented patches: the same seed gives the same sequence of patches."""

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, raw: np.ndarray, labels: np.ndarray, patch: Vec3) -> tuple[np.ndarray, np.ndarray]:
        return augment_patch(raw, labels, patch, self.config, self.rng)

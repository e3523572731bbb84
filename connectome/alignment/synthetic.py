"""Known distortions for testing an alignment: shift, rotate and elastically warp each section of an
aligned (clean) stack, and measure how well an alignment undoes them.

Section z of the distorted stack shows, at pixel p, the clean section at S_z(p) = c + R_z (p + m - c)
+ t_z + e_z(p), with m the margin cropped away on each side, c the clean section's centre, R_z a
rotation, t_z a translation and e_z a smooth warp, so every distorted pixel has clean content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from connectome.alignment.mesh import interpolate


@dataclass(frozen=True)
class Distortion:
    max_shift: float = 30.0  # px, per section, uniform in [-max, max] per axis
    max_rotation: float = 2.0  # degrees
    elastic: float = 0.0  # px, amplitude of a smooth warp per section
    wavelength: float = 160.0  # px, of the smooth warp


@dataclass
class Distorted:
    raw: np.ndarray  # (sections, h, w) of the clean dtype
    margin: int
    center: tuple[float, float]
    rotations: np.ndarray  # radians per section
    shifts: np.ndarray  # (sections, 2)
    waves: np.ndarray  # (sections, terms, 5): amplitude y, amplitude x, frequency y, frequency x, phase
    wavelength: float

    def source(self, z: int, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clean positions S_z(p) of distorted positions p."""
        cy, cx = self.center
        y, x = py + self.margin - cy, px + self.margin - cx
        c, s = np.cos(self.rotations[z]), np.sin(self.rotations[z])
        sy = cy + c * y - s * x + self.shifts[z, 0]
        sx = cx + s * y + c * x + self.shifts[z, 1]
        for ay, ax, fy, fx, ph in self.waves[z]:
            arg = 2 * np.pi * (fy * py + fx * px) / self.wavelength + ph
            sy = sy + ay * np.sin(arg)
            sx = sx + ax * np.sin(arg)
        return sy, sx


def distort(clean: np.ndarray, margin: int, distortion: Distortion, seed: int = 0,
            extra_shifts: np.ndarray | None = None) -> Distorted:
    """The clean stack distorted section by section, cropped by `margin` on each side; `extra_shifts`
    (sections, 2) px are added to the drawn shifts (e.g. a jump between two parts of the stack)."""
    rng = np.random.default_rng(seed)
    n, h, w = clean.shape
    out_h, out_w = h - 2 * margin, w - 2 * margin
    rotations = np.deg2rad(rng.uniform(-distortion.max_rotation, distortion.max_rotation, n))
    shifts = rng.uniform(-distortion.max_shift, distortion.max_shift, (n, 2))
    if extra_shifts is not None:
        shifts = shifts + extra_shifts
    terms = 3
    waves = np.zeros((n, terms, 5))
    if distortion.elastic > 0:
        amp = distortion.elastic / np.sqrt(terms)
        waves[..., 0:2] = rng.uniform(-amp, amp, (n, terms, 2))
        waves[..., 2:4] = rng.uniform(-1, 1, (n, terms, 2))
        waves[..., 4] = rng.uniform(0, 2 * np.pi, (n, terms))
    d = Distorted(np.zeros((n, out_h, out_w), clean.dtype), margin, ((h - 1) / 2, (w - 1) / 2), rotations, shifts,
                  waves, distortion.wavelength)
    py, px = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    for z in range(n):
        sy, sx = d.source(z, py, px)
        values = map_coordinates(clean[z].astype(np.float32), [sy, sx], order=3, mode="reflect")
        if np.issubdtype(clean.dtype, np.integer):
            values = np.clip(np.rint(values), np.iinfo(clean.dtype).min, np.iinfo(clean.dtype).max)
        d.raw[z] = values.astype(clean.dtype)
    return d


def field_positions(fields: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], z: int, y: np.ndarray,
                    x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw positions x + u_z(x) of aligned positions (y, x) under solved node fields."""
    u = interpolate(fields[z].astype(np.float64), nodes, y, x)
    return y + u[..., 0], x + u[..., 1]


def clean_positions(distorted: Distorted, fields: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], z: int,
                    y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(..., 2): the clean positions C_z(x) = S_z(x + u_z(x)) an alignment shows at aligned pixels (y, x)."""
    return np.stack(distorted.source(z, *field_positions(fields, nodes, z, y, x)), axis=-1)


def residuals(distorted: Distorted, fields: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
              sections: np.ndarray | None = None, step: int = 4, border: int = 8,
              reference: tuple[Distorted, np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Misalignment in pixels of each evaluated (section, aligned pixel) of the distorted stack.

    The clean position shown at aligned pixel x of section z is C_z(x) = S_z(x + u_z(x)); a perfect
    alignment shows the same clean position in every section, so the residual is the distance of
    C_z(x) from its mean over the sections. With `reference` (the stack, fields and nodes of an
    alignment of an undistorted crop of the same clean stack, for real stacks that are not perfectly
    aligned), the expected position in section z is the clean position that alignment shows in
    section z at its aligned pixel x', where x' is the pixel whose clean positions average to the same
    mean: an alignment that agrees with the reference up to one common transform of the whole stack
    scores 0. (x' is found in the reference's own coordinates, which differ from clean ones by its
    crop margin: evaluating the reference's fields at clean coordinates would charge each section its
    rotation times the margin.)
    Pixels are evaluated on a grid of `step` where every section's source lies `border` pixels or
    more inside its distorted section: the region all sections show, where an alignment has
    measurements (give half a patch; nearer the edges an alignment can only extrapolate).
    """
    n, h, w = distorted.raw.shape
    zs = np.arange(n) if sections is None else np.asarray(sections)
    y, x = np.mgrid[0:h:step, 0:w:step].astype(np.float64)
    clean = []
    inside = np.ones(y.shape, bool)
    for z in zs:
        ry, rx = field_positions(fields, nodes, int(z), y, x)
        inside &= (ry >= border) & (ry <= h - 1 - border) & (rx >= border) & (rx <= w - 1 - border)
        clean.append(np.stack(distorted.source(int(z), ry, rx), axis=-1))
    c = np.stack(clean)  # (sections, gy, gx, 2)
    mean = c.mean(axis=0)
    if reference is None:
        expected = np.broadcast_to(mean, c.shape)
    else:
        ref, ref_fields, ref_nodes = reference

        def shown(p: np.ndarray) -> np.ndarray:
            return np.stack([clean_positions(ref, ref_fields, ref_nodes, int(z), p[..., 0], p[..., 1]) for z in zs])

        p = mean - (shown(mean).mean(axis=0) - mean)  # x' with mean clean position `mean`, by fixed-point steps
        for _ in range(20):
            miss = mean - shown(p).mean(axis=0)
            p = p + miss
            if np.abs(miss).max() < 1e-6:
                break
        expected = shown(p)
    return np.linalg.norm(c - expected, axis=-1)[:, inside]

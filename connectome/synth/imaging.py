"""EM-like image formation: per-cell cytoplasm tone and grain, dark membranes, organelles, blur, noise."""

from __future__ import annotations

import edt
import numpy as np
from scipy import ndimage as ndi

from connectome.synth import codes as K
from connectome.synth.options import ImagingOptions


def boundary_distance(labels: np.ndarray, voxel_size) -> np.ndarray:
    """Distance (nm) from each cell voxel to the nearest voxel of another id (0 included); 0 on id 0."""
    return edt.edt(labels, anisotropy=tuple(float(v) for v in voxel_size), black_border=False,
                   parallel=1).astype(np.float32)


def grain(rng, shape, voxel_size, scale_nm: float) -> np.ndarray:
    """Gaussian-filtered white noise with correlation length `scale_nm`, scaled to unit std."""
    white = rng.standard_normal(shape, dtype=np.float32)
    sigma = [scale_nm / float(v) for v in voxel_size]
    g = ndi.gaussian_filter(white, sigma, mode="reflect", truncate=3.0)
    g /= max(float(g.std()), 1e-6)
    return g


def cell_tones(rng, classes: dict[int, str], n: int) -> np.ndarray:
    """Mean cytoplasm intensity per id; a minority of axons are dark, as in real neuropil."""
    tone = np.full(max(n, max(classes, default=0) + 1), 0.66, np.float32)
    for label, cls in sorted(classes.items()):
        if cls == K.AXON:
            t = rng.normal(0.64, 0.05) if rng.random() > 0.12 else rng.normal(0.42, 0.04)
        elif cls == K.DENDRITE:
            t = rng.normal(0.57, 0.04)
        elif cls == K.SOMA:
            t = rng.normal(0.56, 0.03)
        else:
            t = rng.normal(0.70, 0.03)
        tone[label] = t
    return tone


def render(rng, labels, comps, organelles, boundary_nm, vesicle_dark, classes, voxel_size,
           opts: ImagingOptions) -> np.ndarray:
    """The noiseless, blurred image (float32, about 0..1)."""
    vs = np.asarray(voxel_size, float)
    n = int(labels.max()) + 1
    img = cell_tones(rng, classes, n)[labels]
    tone = np.zeros(256, np.float32)
    tone[[K.C_NONE, K.C_VESSEL_LUMEN, K.C_VESSEL_WALL, K.C_NUCLEUS, K.C_MYELIN]] = (0.7, 0.8, 0.5, 0.52, 0.18)
    override = np.zeros(256, bool)
    override[[K.C_NONE, K.C_VESSEL_LUMEN, K.C_VESSEL_WALL, K.C_NUCLEUS, K.C_MYELIN]] = True
    ov = override[comps]
    img[ov] = tone[comps[ov]]

    fine = grain(rng, labels.shape, voxel_size, 9.0)
    coarse = grain(rng, labels.shape, voxel_size, 40.0)
    smooth_lut = np.ones(256, np.float32)
    smooth_lut[[K.C_GLIA, K.C_VESSEL_LUMEN]] = 0.4  # glia and plasma are less grainy
    smooth_lut[K.C_MYELIN] = 0.6
    img += opts.texture * smooth_lut[comps] * (fine + 0.5 * coarse)

    nucleus = comps == K.C_NUCLEUS
    mito = organelles == K.O_MITOCHONDRION
    inner = nucleus | mito
    if inner.any():
        depth = edt.edt(inner, anisotropy=tuple(vs), black_border=False, parallel=1)
        half = 0.5 * float(vs[1:].min())
        env = np.exp(-((np.maximum(depth - half, 0) / 8.0) ** 2)).astype(np.float32)
        img[nucleus] *= np.where(coarse[nucleus] > 1.0, 0.75, 1.0)  # heterochromatin clumps
        img[nucleus] *= 1 - 0.45 * env[nucleus]  # nuclear envelope
        img[mito] *= 0.6
        img[mito] += np.where(fine[mito] > 0.8, 0.08, 0.0)  # cristae
        img[mito] *= 1 - 0.35 * env[mito]
        del depth, env

    half = 0.5 * float(vs[1:].min())
    membrane = np.exp(-((np.maximum(boundary_nm - half, 0) / opts.membrane_width_nm) ** 2))
    membrane[labels == 0] = 0
    img *= 1 - opts.membrane_darkness * membrane
    del membrane
    img[organelles == K.O_PSD] *= 0.5
    img *= 1 - 0.5 * vesicle_dark
    sigma = [opts.blur_nm / float(v) for v in vs]
    return ndi.gaussian_filter(img, sigma, mode="reflect", truncate=3.0)


def add_noise(rng, img: np.ndarray, opts: ImagingOptions) -> np.ndarray:
    """Detector noise, a little stronger in bright areas (shot noise)."""
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= opts.noise * np.sqrt(np.clip(img, 0.05, None) / 0.6)
    return img + noise


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

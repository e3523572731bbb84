"""Per-segment features: additive sums per block (so blocks combine exactly), then per-segment
descriptors (`describe`).

Sums per segment: voxels, voxel coordinates and their products (shape: extent and elongation), faces
to other segments (surface), the distance to the segment's boundary capped at `RADIUS_NM` (radius),
raw intensity and its square, voxels darker than `DARK` (vesicles, mitochondria, membranes), the local Sholl
analysis of its branching (`sholl.py`), and, with a patch network (`patch_net.py`), the number of lattice
patches in the segment and the sum of their class probabilities."""

from __future__ import annotations

import edt
import numpy as np

from connectome.core.geometry import Box
from connectome.neurites import lattice, sholl
from connectome.synth import codes as K

RADIUS_NM = 120.0  # the radius feature saturates here; blocks read this much context
DARK = 0.35  # raw / 255 below this counts as dark
PATCH_CLASSES = K.CLASSES  # the neurite classes, in the order of the patch network's outputs
PATCH_SUMS = ("patches", *(f"patch_{c}" for c in PATCH_CLASSES))
SUMS = ("voxels", "z", "y", "x", "zz", "yy", "xx", "zy", "zx", "yx", "faces", "radius", "radius_max",
        "raw", "raw2", "dark", *sholl.SUMS, *PATCH_SUMS)
FEATURES_FORMAT = 3


def _radius_reach(voxel_size) -> tuple[int, ...]:
    return tuple(int(np.ceil(RADIUS_NM / float(v))) + 1 for v in voxel_size)


def feature_reach(voxel_size, patches: bool = False) -> tuple[int, int, int]:
    """Context a block reads: the radius feature's and the Sholl spheres' reach, and with `patches` half a
    patch at least."""
    from connectome.neurites.patch_net import HALF

    r = [max(a, b) for a, b in zip(_radius_reach(voxel_size), sholl.reach(voxel_size))]
    return tuple(max(v, HALF) if patches else v for v in r)  # type: ignore[return-value]


def _margins(read: Box, write: Box, volume: Box, need) -> tuple[list[int], list[int]]:
    """Voxels to add before / after `read` per axis so that it holds `need` voxels around the write box; only
    where the read box meets the volume's face, else too little context is refused (ValueError)."""
    before = [max(0, n - (w - r)) for n, w, r in zip(need, write.offset, read.offset)]
    after = [max(0, n - (r - w)) for n, w, r in zip(need, write.end, read.end)]
    for axis in range(3):
        if before[axis] and read.offset[axis] > volume.offset[axis] or \
                after[axis] and read.end[axis] < volume.end[axis]:
            raise ValueError(f"block {write}: read box {read} holds less than {need[axis]} voxels of context "
                             f"on axis {axis}")
    return before, after


def patch_sums(model, seg: np.ndarray, raw: np.ndarray, read: Box, write: Box, volume: Box) -> tuple:
    """(segment id, class probabilities) of every lattice patch whose centre lies in the write box and in a
    segment; `seg` and `raw` cover `read`, mirrored at the volume's faces as a one-block run would be."""
    from connectome.neurites import patch_net as PN

    if tuple(model.classes) != PATCH_CLASSES:
        raise ValueError(f"patch network {model.name}: classes {model.classes}, expected {PATCH_CLASSES}")
    before, after = _margins(read, write, volume, (PN.HALF,) * 3)
    seg_p, raw_p = PN.padded(seg, before, after), PN.padded(raw, before, after)
    origin = [r - b for r, b in zip(read.offset, before)]
    centres = lattice.centres(seg_p, origin, write.offset, write.shape, (PN.STRIDE,) * 3)
    probs = PN.probabilities(model, raw_p, seg_p, centres)
    return seg_p[centres[:, 0], centres[:, 1], centres[:, 2]], probs


def block_sums(seg: np.ndarray, raw: np.ndarray, read: Box, write: Box, volume: Box, voxel_size,
               patch_model=None) -> dict:
    """Sums of one block: `seg` and `raw` cover `read` (the write box grown by `feature_reach`, clipped);
    `patch_model` (a loaded patch network, or None for no patch sums)."""
    inner = write.relative_to(read)
    near = write.grow(_radius_reach(voxel_size)).intersect(read)
    dist = edt.edt(np.ascontiguousarray(seg[near.relative_to(read)]), anisotropy=tuple(float(v) for v in voxel_size),
                   black_border=False)
    dist = np.minimum(dist, RADIUS_NM)[write.relative_to(near)]
    s = seg[inner]
    fg = s != 0
    ids_all = s[fg]
    ids, inv = np.unique(ids_all, return_inverse=True)
    inv = inv.ravel()
    n = len(ids)
    pos = [p.astype(np.float64) + o for p, o in zip(np.nonzero(fg), write.offset)]
    r = raw[inner][fg].astype(np.float64) / 255.0

    def total(w) -> np.ndarray:
        return np.bincount(inv, weights=w, minlength=n)

    z, y, x = pos
    out = {"voxels": np.bincount(inv, minlength=n).astype(np.float64), "z": total(z), "y": total(y), "x": total(x),
           "zz": total(z * z), "yy": total(y * y), "xx": total(x * x), "zy": total(z * y), "zx": total(z * x),
           "yx": total(y * x), "radius": total(dist[fg]), "raw": total(r), "raw2": total(r * r),
           "dark": total((r < DARK).astype(np.float64))}
    rmax = np.zeros(n)
    np.maximum.at(rmax, inv, dist[fg])
    out["radius_max"] = rmax
    before, after = _margins(read, write, volume, sholl.reach(voxel_size))  # zeros beyond the volume's faces
    seg_z = np.pad(seg, list(zip(before, after))) if any(before) or any(after) else seg
    points = lattice.centres(seg_z, [r - b for r, b in zip(read.offset, before)], write.offset, write.shape,
                             sholl.steps(voxel_size))
    at_s = np.searchsorted(ids, seg_z[points[:, 0], points[:, 1], points[:, 2]])
    for k, v in sholl.point_sums(seg_z, points, voxel_size).items():
        out[k] = np.bincount(at_s, weights=v, minlength=n)
    for k in PATCH_SUMS:
        out[k] = np.zeros(n)
    if patch_model is not None:
        pid, probs = patch_sums(patch_model, seg, raw, read, write, volume)
        at_p = np.searchsorted(ids, pid)
        out["patches"] = np.bincount(at_p, minlength=n).astype(np.float64)
        for j, c in enumerate(PATCH_CLASSES):
            out[f"patch_{c}"] = np.bincount(at_p, weights=probs[:, j], minlength=n)
    # faces between two segments: each pair (v, v + e) with v in the write box counted once, for both sides
    face_ids = []
    for axis in range(3):
        if write.end[axis] >= volume.end[axis]:
            hi = inner[axis].stop - 1  # no voxel beyond the volume
        else:
            hi = inner[axis].stop
        a_sl = list(inner)
        b_sl = list(inner)
        a_sl[axis] = slice(inner[axis].start, hi)
        b_sl[axis] = slice(inner[axis].start + 1, hi + 1)
        a, b = seg[tuple(a_sl)], seg[tuple(b_sl)]
        differ = a != b
        for side in (a[differ], b[differ]):
            side = side[side != 0]
            face_ids.append(side)
    fids = np.concatenate(face_ids) if face_ids else np.zeros(0, np.uint64)
    all_ids = np.union1d(ids, fids).astype(np.uint64)
    table: dict[str, np.ndarray] = {"ids": all_ids}
    at = np.searchsorted(all_ids, ids)
    for k in SUMS:
        if k == "faces":
            continue
        col = np.zeros(len(all_ids))
        col[at] = out[k]
        table[k] = col
    fu, fc = np.unique(fids, return_counts=True)
    faces = np.zeros(len(all_ids))
    faces[np.searchsorted(all_ids, fu)] = fc
    table["faces"] = faces
    return table


def combine(tables: list[dict]) -> dict:
    """Blocks' sums added per segment id (max for radius_max)."""
    if not tables:
        return {"ids": np.zeros(0, np.uint64), **{k: np.zeros(0) for k in SUMS}}
    ids_all = np.concatenate([t["ids"] for t in tables]).astype(np.uint64)
    ids, inv = np.unique(ids_all, return_inverse=True)
    inv = inv.ravel()
    out: dict[str, np.ndarray] = {"ids": ids}
    for k in SUMS:
        v = np.concatenate([t[k] for t in tables])
        if k == "radius_max":
            m = np.zeros(len(ids))
            np.maximum.at(m, inv, v)
            out[k] = m
        else:
            out[k] = np.bincount(inv, weights=v, minlength=len(ids))
    return out


FEATURE_NAMES = ("log_volume_um3", "surface_per_volume", "mean_radius_nm", "max_radius_nm", "extent1_um",
                 "elong2", "elong3", "mean_raw", "std_raw", "dark_fraction", "log_out_synapses",
                 "log_in_synapses", "out_per_um3", "in_per_um3", "log_patches",
                 *(f"patch_{c}" for c in PATCH_CLASSES), *sholl.FEATURES)
PATCH_FEATURES = ("log_patches", *(f"patch_{c}" for c in PATCH_CLASSES))


def describe(sums: dict, voxel_size, out_syn: np.ndarray, in_syn: np.ndarray) -> np.ndarray:
    """(segments, len(FEATURE_NAMES)) descriptors from combined sums and synapse counts per segment
    (as presynaptic `out_syn`, as postsynaptic `in_syn`)."""
    vs = np.asarray(voxel_size, float)
    n = np.maximum(sums["voxels"], 1.0)
    vol_um3 = n * float(np.prod(vs)) / 1e9
    area_um2 = sums["faces"] * float(np.mean([vs[1] * vs[2], vs[0] * vs[2], vs[0] * vs[1]])) / 1e6
    mean = np.stack([sums[k] / n for k in ("z", "y", "x")], 1) * vs / 1e3
    second = {k: sums[k] / n for k in ("zz", "yy", "xx", "zy", "zx", "yx")}
    s = vs / 1e3
    cov = np.empty((len(n), 3, 3))
    names = {(0, 0): "zz", (1, 1): "yy", (2, 2): "xx", (0, 1): "zy", (0, 2): "zx", (1, 2): "yx"}
    for (i, j), k in names.items():
        c = second[k] * s[i] * s[j] - mean[:, i] * mean[:, j]
        cov[:, i, j] = c
        cov[:, j, i] = c
    ev = np.sort(np.clip(np.linalg.eigvalsh(cov), 1e-8, None), axis=1)[:, ::-1] if len(n) else np.zeros((0, 3))
    raw_mean = sums["raw"] / n
    raw_std = np.sqrt(np.clip(sums["raw2"] / n - raw_mean ** 2, 0, None))
    return np.stack([
        np.log(vol_um3 + 1e-6), area_um2 / np.maximum(vol_um3, 1e-9) / 100.0, sums["radius"] / n,
        sums["radius_max"], np.sqrt(ev[:, 0]), np.sqrt(ev[:, 1] / ev[:, 0]), np.sqrt(ev[:, 2] / ev[:, 0]),
        raw_mean, raw_std, sums["dark"] / n, np.log1p(out_syn), np.log1p(in_syn),
        out_syn / np.maximum(vol_um3, 1e-3), in_syn / np.maximum(vol_um3, 1e-3), np.log1p(sums["patches"]),
        # mean class probability of the segment's patches (a uniform prior where it has none)
        *((sums[f"patch_{c}"] + 1.0 / len(PATCH_CLASSES)) / (sums["patches"] + 1.0) for c in PATCH_CLASSES),
        *sholl.describe(sums).T,
    ], axis=1) if len(n) else np.zeros((0, len(FEATURE_NAMES)))


def centroids(sums: dict) -> np.ndarray:
    """Centroid of each segment in voxels (z, y, x)."""
    n = np.maximum(sums["voxels"], 1.0)
    return np.stack([sums[k] / n for k in ("z", "y", "x")], 1)

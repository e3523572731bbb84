"""Synapses: chosen among bouton-to-dendrite contacts, with a postsynaptic density and a vesicle cloud."""

from __future__ import annotations

import numpy as np

from connectome.synth import codes as K
from connectome.synth.raster import capsule_window

_SYNAPSE_COLUMNS: list[tuple[str, type | str]] = [
    ("z", np.int64), ("y", np.int64), ("x", np.int64),  # a postsynaptic voxel at the cleft
    ("pre_id", np.uint64), ("post_id", np.uint64),
    ("post_compartment", "U8"),  # spine, dendrite or soma
    ("area_nm2", np.float64),  # contact area between the bouton and the partner
]
SYNAPSE_DTYPE = np.dtype(_SYNAPSE_COLUMNS)
SYNAPSE_FIELDS: tuple[str, ...] = tuple(name for name, _ in _SYNAPSE_COLUMNS)  # SYNAPSE_DTYPE.names

COMPARTMENT_WORD = {K.C_SPINE: "spine", K.C_DENDRITE: "dendrite", K.C_SOMA: "soma"}


def _contacts(labels: np.ndarray, comps: np.ndarray, voxel_size):
    """Every voxel face between a bouton voxel and a postsynaptic (dendrite, spine, soma) voxel."""
    post_lut = np.zeros(256, bool)
    post_lut[list(K.POSTSYNAPTIC)] = True
    pre, post, where, face = [], [], [], []
    vs = np.asarray(voxel_size, float)
    for axis in range(3):
        n = labels.shape[axis]
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis] = slice(0, n - 1)
        high[axis] = slice(1, n)
        a, b = tuple(low), tuple(high)
        differ = labels[a] != labels[b]
        step = np.zeros(3, np.int64)
        step[axis] = 1
        area = float(np.prod(np.delete(vs, axis)))
        for pre_side, post_side, pre_is_low in ((a, b, True), (b, a, False)):
            m = differ & (comps[pre_side] == K.C_BOUTON) & post_lut[comps[post_side]]
            idx = np.stack(np.nonzero(m), axis=1)
            if not len(idx):
                continue
            pre_vox, post_vox = (idx, idx + step) if pre_is_low else (idx + step, idx)
            pre.append(labels[tuple(pre_vox.T)])
            post.append(labels[tuple(post_vox.T)])
            where.append(post_vox)
            face.append(np.full(len(idx), area))
    if not pre:
        return None
    return np.concatenate(pre), np.concatenate(post), np.concatenate(where), np.concatenate(face)


def choose_synapses(rng, labels, comps, voxel_size, wanted: int, min_area_nm2: float = 3000.0,
                    min_spacing_nm: float = 300.0) -> np.ndarray:
    """Up to `wanted` synapses, one per (axon, partner) contact, largest contacts first.

    A contact is the set of voxel faces between an axon's bouton and a dendrite, spine or soma of
    another cell. Spine contacts count five-fold when ranking, as most excitatory synapses sit on spines.
    """
    found = _contacts(labels, comps, voxel_size)
    if found is None or wanted <= 0:
        return np.zeros(0, SYNAPSE_DTYPE)
    pre, post, where, face = found
    key = pre.astype(np.uint64) * np.uint64(int(labels.max()) + 1) + post.astype(np.uint64)
    pairs, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    area = np.bincount(inverse, weights=face)
    count = np.bincount(inverse)
    centroid = np.stack([np.bincount(inverse, weights=where[:, k]) for k in range(3)], axis=1) / count[:, None]
    d2 = ((where - centroid[inverse]) ** 2).sum(1)
    order = np.lexsort((d2, inverse))
    first = order[np.searchsorted(inverse[order], np.arange(len(pairs)))]  # contact nearest its centroid
    rep = where[first]
    rep_comp = comps[tuple(rep.T)]
    score = area * np.where(rep_comp == K.C_SPINE, 5.0, 1.0) + rng.random(len(area))  # random tie-break
    vs = np.asarray(voxel_size, float)
    chosen: list[int] = []
    for g in np.argsort(-score):
        if area[g] < min_area_nm2:
            continue
        p = rep[g] * vs
        if any(np.linalg.norm(p - rep[c] * vs) < min_spacing_nm for c in chosen):
            continue
        chosen.append(int(g))
        if len(chosen) >= wanted:
            break
    out = np.zeros(len(chosen), SYNAPSE_DTYPE)
    for i, g in enumerate(chosen):
        z, y, x = (int(v) for v in rep[g])
        out[i] = (z, y, x, pre[first[g]], post[first[g]], COMPARTMENT_WORD[int(rep_comp[g])], area[g])
    return out


def synapse_marks(rng, synapses: np.ndarray, labels, boundary_nm, voxel_size, organelles,
                  psd_thickness_nm: float = 35.0, vesicle_radius_nm: float = 20.0) -> np.ndarray:
    """Mark postsynaptic densities in `organelles` and return vesicle centres (nm, (N, 3)).

    The density is the partner's side of the contact, within a disc around the synapse and
    `psd_thickness_nm` of the cell boundary; vesicles fill the bouton within a few hundred nm.
    """
    vs = np.asarray(voxel_size, float)
    centres = []
    for s in synapses:
        loc = np.array([s["z"], s["y"], s["x"]], float) * vs
        radius = float(np.clip(np.sqrt(s["area_nm2"] / np.pi), 90.0, 220.0))
        win = capsule_window(labels.shape, voxel_size, loc, loc, radius, radius)
        if win is not None:
            sl, m2 = win
            psd = (m2 < 1.0) & (labels[sl] == s["post_id"]) & (boundary_nm[sl] <= psd_thickness_nm)
            organelles[sl][psd] = K.O_PSD
        n = int(np.clip(s["area_nm2"] / 300.0, 60, 300))
        toward = _toward_pre(labels, s, loc, vs)
        cand = loc + toward * 130.0 + rng.normal(0.0, 110.0, (4 * n, 3))
        vox = np.round(cand / vs).astype(np.int64)
        ok = np.all((vox >= 0) & (vox < labels.shape), axis=1)
        cand, vox = cand[ok], vox[ok]
        inside = labels[tuple(vox.T)] == s["pre_id"]
        inside &= boundary_nm[tuple(vox.T)] > vesicle_radius_nm + 4.0
        centres.append(cand[inside][:n])
    return np.concatenate(centres) if centres else np.zeros((0, 3))


def _toward_pre(labels, s, loc, vs) -> np.ndarray:
    """Unit vector from the synapse into its presynaptic bouton (mean of nearby bouton voxels)."""
    win = capsule_window(labels.shape, tuple(vs), loc, loc, 150.0, 150.0)
    if win is None:
        return np.zeros(3)
    sl, m2 = win
    where = np.argwhere((m2 < 1.0) & (labels[sl] == s["pre_id"]))
    if not len(where):
        return np.zeros(3)
    v = (where + [x.start for x in sl]).mean(0) * vs - loc
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def stamp_vesicles(centres: np.ndarray, labels, voxel_size, organelles, radius_nm: float = 20.0):
    """Draw vesicles (a dark membrane ring, a faint core) into a darkness field in 0..1.

    Vectorised over vesicles and the voxels of one stamp, in batches; a vesicle only darkens voxels
    of the cell its centre lies in.
    """
    vs = np.asarray(voxel_size, float)
    dark = np.zeros(labels.shape, np.float32)
    if not len(centres):
        return dark
    reach = np.ceil((radius_nm + 6.0) / vs).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)  # (K, 3)
    for start in range(0, len(centres), 2000):  # bounded memory: (batch, K, 3) index arrays
        _stamp_batch(centres[start:start + 2000], offsets, labels, vs, radius_nm, dark, organelles)
    return dark


def _stamp_batch(centres, offsets, labels, vs, radius_nm, dark, organelles) -> None:
    base = np.round(centres / vs).astype(np.int64)
    vox = base[:, None, :] + offsets[None, :, :]  # (N, K, 3)
    rho = np.linalg.norm(vox * vs - centres[:, None, :], axis=2)
    value = np.exp(-(((rho - radius_nm + 3.0) / 4.5) ** 2)) + 0.25 * (rho < radius_nm - 5.0)
    ok = np.all((vox >= 0) & (vox < labels.shape), axis=2) & (value > 0.05)
    host = labels[tuple(base.clip(0, np.array(labels.shape) - 1).T)]
    owner = np.repeat(host, ok.sum(1))
    vox, value = vox[ok], value[ok].astype(np.float32)
    same = labels[tuple(vox.T)] == owner
    vox, value = vox[same], value[same]
    flat = np.ravel_multi_index(tuple(vox.T), labels.shape)
    np.maximum.at(dark.reshape(-1), flat, value)
    organelles.reshape(-1)[flat[value > 0.3]] = K.O_VESICLE

"""Training targets from synthetic ground truth: the cleft mask (postsynaptic densities) and, at each
cleft voxel, the unit vector from its synapse toward the presynaptic bouton."""

from __future__ import annotations

import numpy as np

from connectome.synth import codes as K


def toward_pre(labels: np.ndarray, loc: np.ndarray, pre_id: int, voxel_size, radius_nm: float = 150.0) -> np.ndarray:
    """Unit vector (z, y, x, in nm space) from `loc` (voxels) to the mean of `pre_id`'s voxels within `radius_nm`."""
    vs = np.asarray(voxel_size, float)
    r = np.ceil(radius_nm / vs).astype(int)
    lo = np.maximum(loc - r, 0)
    hi = np.minimum(loc + r + 1, labels.shape)
    win = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    where = np.argwhere(win == pre_id) + lo
    if not len(where):
        return np.zeros(3)
    d = (where - loc) * vs
    d = d[(d ** 2).sum(1) <= radius_nm ** 2]
    if not len(d):
        return np.zeros(3)
    v = d.mean(0)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def cleft_targets(labels: np.ndarray, organelles: np.ndarray, synapses: np.ndarray, voxel_size,
                  reach_nm: float = 300.0):
    """(cleft mask bool, directions float32 (3, z, y, x), direction mask bool): each postsynaptic
    density voxel takes the direction of the nearest synapse (within `reach_nm`) onto its own cell,
    so that touching densities of two synapses keep their own directions."""
    cleft = organelles == K.O_PSD
    vec = np.zeros((3, *labels.shape), np.float32)
    known = np.zeros(labels.shape, bool)
    if not len(synapses) or not cleft.any():
        return cleft, vec, known
    vs = np.asarray(voxel_size, float)
    where = np.argwhere(cleft)
    owner = labels[cleft]
    best = np.full(len(where), reach_nm ** 2)
    direction = np.zeros((len(where), 3), np.float32)
    for s in synapses:
        loc = np.array([s["z"], s["y"], s["x"]], np.int64)
        d = toward_pre(labels, loc, int(s["pre_id"]), vs)
        if not d.any():
            continue
        d2 = (((where - loc) * vs) ** 2).sum(1)
        take = (owner == s["post_id"]) & (d2 < best)
        best[take] = d2[take]
        direction[take] = d
    assigned = best < reach_nm ** 2
    idx = tuple(where[assigned].T)
    vec[(slice(None), *idx)] = direction[assigned].T
    known[idx] = True
    return cleft, vec, known

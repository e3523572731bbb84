"""SynEM-style partner features and classifier: for each cleft group (a cleft object's voxels on one
postsynaptic segment) and each candidate presynaptic segment near it, image statistics sampled in
shells around the cleft on that candidate's side (the vesicle cloud darkens the presynaptic bouton),
its share of the shell and its share of the network's direction votes; a conditional logistic model
ranks the candidates of a group.

Blockwise: every cleft voxel samples 26 directions x DISTANCES_NM; the per-block tables hold sums per
(fragment, post, candidate), so tables of several blocks add up to those of one block.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DISTANCES_NM = (16.0, 48.0, 96.0, 160.0)
DARK = 110  # raw grey level under which a sample counts as dark (vesicles, membranes)
STATS = ("n", "sum", "sumsq", "dark")
WEIGHTS_DIR = Path(__file__).parent / "weights"
LINEAR_CLASSIFIER = "partners-synthetic"  # the linear model alone
DEFAULT_CLASSIFIER = "partners-synthetic-net"  # the linear model plus the partner network's logit (partner_network.py)


def _directions() -> np.ndarray:
    d = np.array([(z, y, x) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1) if (z, y, x) != (0, 0, 0)],
                 float)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


DIRECTIONS = _directions()


def sample_reach(voxel_size) -> tuple[int, int, int]:
    """Voxels the farthest shell reaches along each axis."""
    return tuple(int(np.ceil(max(DISTANCES_NM) / float(v))) for v in voxel_size)  # type: ignore[return-value]


def interface_sums(ids: np.ndarray, post: np.ndarray, pos: np.ndarray, raw: np.ndarray, seg: np.ndarray,
                   box_offset, box_end, voxel_size) -> dict[str, np.ndarray]:
    """Per (fragment, post, candidate): sample count, grey sum, grey square sum and dark count in each
    shell (columns: stat-major, shell-minor). `pos` are the cleft voxels' global positions, `ids` their
    fragments, `post` their segments; `raw` and `seg` cover the box [box_offset, box_end). Samples in
    segment 0 or in the voxel's own segment are not kept (their share follows from the others)."""
    nd = len(DISTANCES_NM)
    empty = {"iface_fragment": np.zeros(0, np.uint64), "iface_post": np.zeros(0, np.uint64),
             "iface_cand": np.zeros(0, np.uint64), "iface_stats": np.zeros((0, len(STATS) * nd))}
    if not len(pos):
        return empty
    vs = np.asarray(voxel_size, float)
    off, end = np.asarray(box_offset), np.asarray(box_end)
    keys, shells, greys = [], [], []
    for k, dist in enumerate(DISTANCES_NM):
        step = np.round(DIRECTIONS * (dist / vs)).astype(np.int64)  # (26, 3)
        at = np.clip(pos[:, None, :] + step[None], off, end - 1).reshape(-1, 3) - off
        cand = seg[tuple(at.T)].astype(np.uint64)
        grey = raw[tuple(at.T)]
        own = np.repeat(post, len(step))
        keep = (cand != 0) & (cand != own)
        keys.append(np.stack([np.repeat(ids, len(step))[keep], own[keep], cand[keep]], 1))
        shells.append(np.full(int(keep.sum()), k))
        greys.append(grey[keep].astype(np.float64))
    key = np.concatenate(keys)
    if not len(key):
        return empty
    shell, grey = np.concatenate(shells), np.concatenate(greys)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    m = len(uniq)
    cell = inv * nd + shell
    stats = np.stack([np.bincount(cell, weights=w, minlength=m * nd).reshape(m, nd)
                      for w in (np.ones_like(grey), grey, grey ** 2, (grey < DARK).astype(np.float64))], 1)
    return {"iface_fragment": uniq[:, 0], "iface_post": uniq[:, 1], "iface_cand": uniq[:, 2],
            "iface_stats": stats.reshape(m, len(STATS) * nd)}


FEATURES = tuple(f"{name}_{int(d)}nm" for name in ("share", "grey", "std", "dark") for d in DISTANCES_NM) + (
    "vote_share", "log_voxels")


def candidate_features(group_voxels: np.ndarray, stats: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Feature rows (FEATURES order) for candidates with summed `stats` (rows as interface_sums), the
    voxel count of their group and the group's direction votes that land in them."""
    nd = len(DISTANCES_NM)
    s = stats[:, :len(STATS) * nd].reshape(len(stats), len(STATS), nd)
    n, total, sq, dark = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    per_shell = np.maximum(group_voxels, 1)[:, None] * len(DIRECTIONS)
    has = n > 0
    mean = np.where(has, total / np.maximum(n, 1), 128.0) / 255.0
    std = np.where(has, np.sqrt(np.maximum(sq / np.maximum(n, 1) - (total / np.maximum(n, 1)) ** 2, 0)), 0) / 255.0
    frac_dark = np.where(has, dark / np.maximum(n, 1), 0.0)
    columns = [n / per_shell, mean, std, frac_dark, (votes / np.maximum(group_voxels, 1))[:, None],
               np.log1p(group_voxels)[:, None]]
    if stats.shape[1] > len(STATS) * nd:  # the partner network's logit x voxels and voxels (partner_network)
        logit, scored = stats[:, len(STATS) * nd], stats[:, len(STATS) * nd + 1]
        columns.append(np.where(scored > 0, logit / np.maximum(scored, 1), 0.0)[:, None])
    return np.concatenate(columns, 1)


@dataclass(frozen=True)
class PartnerClassifier:
    """A linear score per candidate (standardised features), plus `network_weight` times the partner
    network's mean logit where the features carry it (a column after FEATURES: data at the network's
    voxel size); the softmax over a group's candidates is each one's probability of being the
    presynaptic partner."""

    name: str
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    provenance: dict
    network: str | None = None
    network_weight: float = 0.0

    def scores(self, features: np.ndarray) -> np.ndarray:
        linear = ((features[:, :len(FEATURES)] - self.mean) / self.std) @ self.weights
        if self.network and features.shape[1] > len(FEATURES):
            return linear + self.network_weight * features[:, len(FEATURES)]
        return linear

    def linear(self) -> PartnerClassifier:
        """This classifier without the partner network's term (itself when it has none)."""
        return dataclasses.replace(self, network=None, network_weight=0.0) if self.network else self

    def to_json(self) -> dict:
        network = {"network": self.network, "network_weight": self.network_weight} if self.network else {}
        return {"format": 1, "name": self.name, "features": list(FEATURES), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "weights": self.weights.tolist(), **network, "provenance": self.provenance}


def resolve_classifier(name: str) -> Path:
    from connectome.core.errors import UserError

    path = Path(name) if name.endswith(".json") else WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("partners-*.json"))
        raise UserError(f"partner classifier {name!r}: no file {path}; expected a .json path or one of {shipped}")
    return path


def load_classifier(name: str) -> PartnerClassifier:
    path = resolve_classifier(name)
    return _load(str(path), os.path.getmtime(path))


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> PartnerClassifier:
    from connectome.core.errors import UserError

    with open(path) as f:
        d = json.load(f)
    if d.get("features") != list(FEATURES):
        raise UserError(f"{path}: features {d.get('features')}; expected {list(FEATURES)}")
    return PartnerClassifier(d["name"], np.asarray(d["mean"]), np.asarray(d["std"]), np.asarray(d["weights"]),
                             d.get("provenance", {}), d.get("network"), float(d.get("network_weight", 0.0)))


def group_softmax(group: np.ndarray, score: np.ndarray, n_groups: int) -> np.ndarray:
    """Softmax of `score` within each group (group indices 0..n_groups-1)."""
    top = np.full(n_groups, -np.inf)
    np.maximum.at(top, group, score)
    e = np.exp(score - top[group])
    return e / np.bincount(group, weights=e, minlength=n_groups)[group]


def fit_conditional_logit(features: np.ndarray, group: np.ndarray, positive: np.ndarray, l2: float = 1e-2):
    """Weights of a conditional logit (softmax per group, one positive per group), standardised
    features: (mean, std, weights)."""
    from scipy.optimize import minimize

    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    _, g = np.unique(group, return_inverse=True)
    g = g.ravel()
    n = int(g.max()) + 1

    def loss(w):
        p = group_softmax(g, x @ w, n)
        value = -np.log(np.maximum(p[positive], 1e-12)).sum() / n + l2 * (w @ w)
        grad = (x * p[:, None]).sum(0) - x[positive].sum(0)
        return value, grad / n + 2 * l2 * w

    w = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
    return mean, std, w

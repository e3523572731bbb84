"""The partner network: a small 3-d CNN that scores one presynaptic candidate of a cleft group from a
patch around the group's centre (channels: image, the candidate's mask, the postsynaptic segment's
mask, the cleft probability). Its logit, averaged over the group's voxels, is added to the interface
classifier's linear score (interface.PartnerClassifier), so that the vesicle texture beside the
cleft, not only the mean grey of the shells, decides which neighbour is presynaptic.

Blockwise: each (fragment, post) pair of a block with at least `min_voxels` voxels scores its
candidates on a patch centred at the pair's voxels; the table holds logit x voxels and the voxels per
(fragment, post, candidate), so blocks add up. A fragment on a block face (a cleft cut by the blocks)
is not scored: its pieces' centres are not the cleft's, and scoring them there made partners worse
(benchmarks/results/synapses.md); such a cleft keeps the linear score alone.

On by default (`cleft_fragments` `partner_network: auto`, the `synapses` classifier
`partners-synthetic-net`): on 39 fresh held-out volumes it named 7 more partners right than the linear
classifier alone and none fewer (benchmarks/results/synapses.md).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectome.synapses.merge import find_rows

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_NETWORK = "partner-net-synthetic"
CHANNELS = 4


@dataclass(frozen=True)
class NetworkInfo:
    """A partner network's weight file and what it expects."""

    name: str
    path: str
    voxel_size: tuple[float, float, float]
    patch: int  # voxels per side (cube)
    width: int  # features of the first convolution
    min_voxels: int  # smallest (fragment, post) pair that is scored
    provenance: dict

    @property
    def half(self) -> int:
        return self.patch // 2

    def fits(self, voxel_size, tolerance: float = 0.05) -> bool:
        """Whether data of `voxel_size` is what the network was trained on."""
        return bool(np.all(np.abs(np.asarray(voxel_size, float) / np.asarray(self.voxel_size) - 1) <= tolerance))


def build(width: int, patch: int):
    """Three convolution-and-pooling stages, two dense layers; one logit per patch."""
    import torch.nn as nn

    side = patch // 8
    return nn.Sequential(nn.Conv3d(CHANNELS, width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Conv3d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Flatten(), nn.Linear(2 * width * side ** 3, 64), nn.ReLU(), nn.Linear(64, 1))


def resolve(name: str) -> Path:
    from connectome.core.errors import UserError

    path = Path(name) if name.endswith(".json") else WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("partner-net-*.json"))
        raise UserError(f"partner network {name!r}: no file {path}; expected a .json path or one of {shipped}")
    return path


def read_info(name: str) -> NetworkInfo:
    path = resolve(name)
    with open(path) as f:
        d = json.load(f)
    z, y, x = (float(v) for v in d["voxel_size"])
    return NetworkInfo(d["name"], str(path.with_suffix(".pt")), (z, y, x),
                       int(d["patch"]), int(d["width"]), int(d["min_voxels"]), d.get("provenance", {}))


def load(name: str):
    """(info, the network in eval mode on the CPU); cached per process."""
    path = resolve(name)
    return _load(str(path), os.path.getmtime(path))


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime: float):
    import torch

    info = read_info(path)
    net = build(info.width, info.patch)
    net.load_state_dict(torch.load(info.path, map_location="cpu", weights_only=True))
    return info, net.eval()


def patches(raw: np.ndarray, seg: np.ndarray, prob: np.ndarray, offset, centres: np.ndarray, posts: np.ndarray,
            cands: np.ndarray, half: int) -> np.ndarray:
    """uint8 patches (n, 4, 2 half, 2 half, 2 half) centred at global voxel `centres` (n, 3): image,
    candidate mask, post mask, cleft probability. `raw`, `seg` and `prob` cover the box at `offset`;
    outside it the image is mirrored and the rest is 0 (as at the volume's faces in training)."""
    pad = [(half, half)] * 3
    r = np.pad(raw, pad, mode="reflect" if min(raw.shape) > half else "symmetric")
    s, p = np.pad(seg, pad), np.pad(prob, pad)
    c = np.asarray(centres, np.int64) - np.asarray(offset, np.int64) + half
    c = np.clip(c, half, np.asarray(raw.shape) + half)  # a centre outside the box is moved onto it
    out = np.zeros((len(c), CHANNELS, 2 * half, 2 * half, 2 * half), np.uint8)
    for k, (z, y, x) in enumerate(c):
        sl = (slice(z - half, z + half), slice(y - half, y + half), slice(x - half, x + half))
        out[k, 0], out[k, 3] = r[sl], p[sl]
        lab = s[sl]
        out[k, 1] = (lab == cands[k]) * np.uint8(255)
        out[k, 2] = (lab == posts[k]) * np.uint8(255)
    return out


def logits(net, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The network's logit per uint8 patch."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(net(torch.from_numpy(x[i:i + batch].astype(np.float32) / 255.0)).squeeze(1).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def network_sums(table: dict[str, np.ndarray], raw: np.ndarray, seg: np.ndarray, prob: np.ndarray, seg_box,
                 name: str) -> np.ndarray:
    """Per interface row of a block's `table` (fragment_table): logit x voxels and voxels of the
    (fragment, post) pair it belongs to, 0 where the pair is smaller than the network's minimum.
    `raw`, `seg` and `prob` cover `seg_box`."""
    info, net = load(name)
    frag, post, cand = table["iface_fragment"], table["iface_post"], table["iface_cand"]
    out = np.zeros((len(frag), 2))
    if not len(frag):
        return out
    pairs, inv = np.unique(np.stack([table["vote_fragment"], table["vote_post"]], 1).astype(np.uint64), axis=0,
                           return_inverse=True)
    inv = inv.ravel()
    count = np.bincount(inv, weights=table["vote_count"], minlength=len(pairs))
    centre = np.stack([np.bincount(inv, weights=table["vote_coord_sum"][:, k], minlength=len(pairs))
                       for k in range(3)], 1) / np.maximum(count, 1)[:, None]
    at = find_rows(pairs, np.stack([frag, post], 1).astype(np.uint64))
    on_face = np.isin(frag, np.concatenate([table["low_id"], table["high_id"]]))
    scored = (at >= 0) & (count[np.maximum(at, 0)] >= info.min_voxels) & ~on_face
    if not scored.any():
        return out
    idx = np.flatnonzero(scored)
    x = patches(raw, seg, prob, seg_box.offset, np.round(centre[at[idx]]).astype(np.int64), post[idx], cand[idx],
                info.half)
    n = count[at[idx]]
    out[idx, 0] = logits(net, x) * n
    out[idx, 1] = n
    return out

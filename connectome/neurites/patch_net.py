"""The patch network of the neurite types: a small 3-d CNN that classes a patch of image around a voxel
of a segment (two channels: the normalised image and the segment's own mask) into the neurite classes.
Patches sit on a global lattice (every `STRIDE` voxels on each axis), so a segment's patches, and the
per-segment sums of their class probabilities, are the same in any block layout. Saved as
`weights/{name}.pt` + `{name}.json`."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from connectome.core.errors import UserError
from connectome.models.registry import write_weights

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PATCH = 24  # voxels on each axis (192 nm at 8 nm)
HALF = PATCH // 2
STRIDE = 8  # lattice spacing in voxels; lattice points are the voxels with every coordinate = STRIDE // 2 mod STRIDE
QUANTUM = 1024.0  # probabilities are rounded to 1 / QUANTUM, so sums over patches are exact in any order
BATCH = 64  # patches per forward pass; the last pass of a block is padded to it (see `probabilities`)


class PatchNet(nn.Module):
    """Three strided convolutions, global average pooling, a linear layer: class logits per patch."""

    def __init__(self, classes: int, features=(12, 24, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2
        for c in features:
            layers += [nn.Conv3d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)
        self.features = tuple(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3, 4)))


@dataclass
class LoadedPatchNet:
    net: PatchNet
    name: str
    classes: tuple[str, ...]
    mean: float
    std: float
    voxel_size: tuple[float, float, float]


def resolve(name: str) -> Path:
    if name.endswith(".pt") or os.sep in name:
        path = Path(name).expanduser()
    else:
        path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        known = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))) or "none"
        raise UserError(f"unknown neurite patch network {name!r}: expected {path} and its .json beside it; "
                        f"available: {known}")
    return path


@functools.lru_cache(maxsize=4)
def load(name: str) -> LoadedPatchNet:
    """The network on the CPU, once per process; a file that is not a patch network is one line (UserError)."""
    path = resolve(name)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        net = PatchNet(len(meta["classes"]), tuple(meta["features"]))
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        float(meta["mean"]), float(meta["std"]), list(meta["voxel_size"])
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a neurite patch network ({type(e).__name__}: {reason})") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedPatchNet(net, meta.get("name", path.stem), tuple(meta["classes"]), float(meta["mean"]),
                          float(meta["std"]), tuple(float(v) for v in meta["voxel_size"]))  # type: ignore[arg-type]


def save(path: str | os.PathLike, net: PatchNet, classes, mean: float, std: float, voxel_size, meta: dict) -> Path:
    path = write_weights(path, net)
    full = {"format": 1, "name": path.stem, "classes": list(classes), "features": list(net.features),
            "patch": PATCH, "stride": STRIDE, "mean": mean, "std": std, "voxel_size": list(voxel_size), **meta}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=1) + "\n")
    os.replace(tmp, path.with_suffix(".json"))
    load.cache_clear()
    return path


def patches(raw: np.ndarray, seg: np.ndarray, centres: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(n, 2, PATCH, PATCH, PATCH) float32: the normalised image and the mask of the centre voxel's segment
    around each centre (array coordinates in `raw` and `seg`, which hold at least HALF voxels around each)."""
    if not len(centres):
        return np.zeros((0, 2, PATCH, PATCH, PATCH), np.float32)
    win = np.lib.stride_tricks.sliding_window_view
    start = centres - HALF
    r = win(raw, (PATCH,) * 3)[start[:, 0], start[:, 1], start[:, 2]]
    s = win(seg, (PATCH,) * 3)[start[:, 0], start[:, 1], start[:, 2]]
    own = seg[centres[:, 0], centres[:, 1], centres[:, 2]]
    x = np.empty((len(centres), 2, PATCH, PATCH, PATCH), np.float32)
    x[:, 0] = (r.astype(np.float32) / 255.0 - mean) / std
    x[:, 1] = s == own[:, None, None, None]
    return x


def probabilities(model: LoadedPatchNet, raw: np.ndarray, seg: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Class probabilities of the patch around each centre, rounded to 1 / QUANTUM (float64). Patches are
    cut and classified `BATCH` at a time, the last batch padded with zeros: the float32 result of a patch
    depends on the size of the batch it is in (not on its place in it), so every patch goes through a batch
    of the same size whatever the block layout."""
    out = [np.zeros((0, len(model.classes)))]
    with torch.inference_mode():
        for i in range(0, len(centres), BATCH):
            x = patches(raw, seg, centres[i:i + BATCH], model.mean, model.std)
            n = len(x)
            if n < BATCH:
                x = np.concatenate([x, np.zeros((BATCH - n, *x.shape[1:]), np.float32)])
            out.append(torch.softmax(model.net(torch.from_numpy(x)), dim=1).double().numpy()[:n])
    return np.round(np.concatenate(out) * QUANTUM) / QUANTUM


def padded(a: np.ndarray, before, after) -> np.ndarray:
    """`a` mirrored by `before` / `after` voxels per axis (where a block's read box meets the volume's face)."""
    if not any(before) and not any(after):
        return a
    return np.pad(a, list(zip(before, after)), mode="reflect")

"""The cleft network: the shared U-Net with four outputs, a cleft logit and a unit vector (z, y, x)
from each cleft voxel toward its presynaptic partner (synful's partner directions), saved as
`weights/{name}.pt` + `{name}.json` and loaded once per worker."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from connectome.core.errors import UserError
from connectome.models.registry import read_model_json, write_weights
from connectome.models.unet import UNet, UNetConfig, Vec3, aligned_reach, fold_batchnorm

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
OUTPUTS = 4  # cleft logit, then the partner direction (z, y, x)


@dataclass(frozen=True)
class CleftModelInfo:
    """What the clefts stage needs: geometry, normalisation, the direction length and the threshold."""

    name: str
    config: UNetConfig
    voxel_size: tuple[float, float, float]
    mean: float
    std: float
    vector_nm: float  # a unit direction times this length points into the presynaptic cell
    threshold: float  # cleft probability that makes a voxel part of a cleft
    min_voxels: int  # smaller cleft objects are dropped
    partners: bool = True  # False: trained without partner directions (real data with cleft labels only)
    provenance: dict = field(default_factory=dict, compare=False, hash=False)
    path: str = ""
    edge_min_voxels: int | None = None  # the minimum for cleft objects cut by the volume's faces (None: min_voxels)
    core_threshold: float | None = None  # densities: probability of the cores that split a cleft object
    core_min_voxels: int | None = None  # an object with two cores of this size or more: one synapse per core
    satellite_nm: float | None = None  # a synapse this near one much larger is a piece of its density
    satellite_ratio: float = 0.2  # "much larger": over 1 / satellite_ratio times the size
    vote_split_voxels: int | None = None  # another bouton's votes on a post this large: a synapse of its own

    @property
    def divisor(self) -> Vec3:
        return self.config.divisor

    @property
    def context(self) -> Vec3:
        return tuple(-(-r // d) * d for r, d in zip(aligned_reach(self.config), self.divisor))  # type: ignore[return-value]


@dataclass
class LoadedCleftModel:
    net: torch.nn.Module
    info: CleftModelInfo
    device: torch.device


def cleft_net(config: UNetConfig) -> UNet:
    """The U-Net of `config` with a four-channel head."""
    net = UNet(config)
    net.head = nn.Conv3d(config.channels[0], OUTPUTS, 1)
    return net


CLEFT_KEYS = ("architecture", "voxel_size", "normalisation", "vector_nm", "threshold", "min_voxels")


def _is_cleft_json(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(k in meta for k in CLEFT_KEYS)


def available() -> list[str]:
    """The shipped cleft models (the partner networks beside them in the folder are not cleft models)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt") if _is_cleft_json(p.with_suffix(".json")))


def resolve(name: str) -> Path:
    """Weights of a shipped cleft model name, or a path to a .pt file with its .json beside it."""
    if name.endswith(".pt") or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise UserError(f"cleft model {name}: expected {path} and {path.with_suffix('.json').name} beside it")
        return path
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise UserError(f"unknown cleft model {name!r}; available: {', '.join(available()) or 'none'} "
                        "(or give a path to a .pt file)")
    return path


@functools.lru_cache(maxsize=8)
def read_info(name: str) -> CleftModelInfo:
    path = resolve(name)
    meta = read_model_json(path.with_suffix(".json"), CLEFT_KEYS, "a cleft model")
    return CleftModelInfo(
        name=meta.get("name", path.stem), config=UNetConfig.from_dict(meta["architecture"]),
        voxel_size=tuple(float(v) for v in meta["voxel_size"]),  # type: ignore[arg-type]
        mean=float(meta["normalisation"]["mean"]), std=float(meta["normalisation"]["std"]),
        vector_nm=float(meta["vector_nm"]), threshold=float(meta["threshold"]),
        min_voxels=int(meta["min_voxels"]), partners=bool(meta.get("partners", True)),
        provenance=meta.get("provenance", {}), path=str(path),
        edge_min_voxels=int(meta["edge_min_voxels"]) if meta.get("edge_min_voxels") is not None else None,
        core_threshold=float(meta["core_threshold"]) if meta.get("core_threshold") is not None else None,
        core_min_voxels=int(meta["core_min_voxels"]) if meta.get("core_min_voxels") is not None else None,
        satellite_nm=float(meta["satellite_nm"]) if meta.get("satellite_nm") is not None else None,
        satellite_ratio=float(meta.get("satellite_ratio") or 0.2),
        vote_split_voxels=int(meta["vote_split_voxels"]) if meta.get("vote_split_voxels") is not None else None)


def save(path: str | os.PathLike, net: UNet, meta: dict) -> Path:
    """Write `path`.pt (float32 state dict) and `path`.json (architecture and everything in `meta`)."""
    path = write_weights(path, net)
    full = {"format": 1, "name": path.stem, "architecture": net.config.to_dict(), **meta}
    path.with_suffix(".json").write_text(json.dumps(full, indent=1) + "\n")
    read_info.cache_clear()
    return path


def load(name: str, device: str | None = None) -> LoadedCleftModel:
    info = read_info(name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = cleft_net(info.config)
    state = torch.load(info.path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    fold_batchnorm(net.eval())
    net = net.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedCleftModel(net, info, dev)


_cache: dict[tuple[str, str | None], LoadedCleftModel] = {}


def get(name: str, device: str | None = None) -> LoadedCleftModel:
    """The model, loaded once per worker process and device."""
    from connectome.cluster.model_cache import default_device

    device = device or default_device()
    key = (name, device)
    if key not in _cache:
        _cache[key] = load(name, device)
    return _cache[key]


def predict(model: LoadedCleftModel, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleft probability (z, y, x) and unit partner directions (3, z, y, x), float32, for uint8 raw
    whose shape is a multiple of the divisor."""
    info = model.info
    if any(s % d for s, d in zip(raw.shape, info.divisor)):
        raise ValueError(f"cleft prediction: shape {raw.shape} is not a multiple of {info.divisor}")
    x = torch.from_numpy(np.ascontiguousarray(raw)).to(model.device)[None, None]
    with torch.inference_mode():
        x = (x.float() * (1.0 / 255.0) - info.mean) * (1.0 / info.std)
        y = model.net(x)[0].float()
        prob = torch.sigmoid(y[0])
        vec = torch.tanh(y[1:])
    return prob.cpu().numpy(), vec.cpu().numpy()


def probability_as_uint8(prob: np.ndarray) -> np.ndarray:
    return np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def vectors_as_uint8(vec: np.ndarray) -> np.ndarray:
    """Directions in -1..1 as uint8 (0..254, 127 = 0)."""
    return np.round(np.clip(vec, -1.0, 1.0) * 127.0 + 127.0).astype(np.uint8)


def vectors_from_uint8(stored: np.ndarray) -> np.ndarray:
    return (stored.astype(np.float32) - 127.0) / 127.0

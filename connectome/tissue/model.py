"""The tissue network: the shared U-Net (connectome.models.unet) with 2-d kernels and an N-class head.

Every kernel and downsampling step is 1 in z, so each section is classified on its own: the same
weights run on serial sections (40-50 nm apart) and on isotropic FIB-SEM (per z slice), and the
model's voxel size constrains only the in-plane axes. Shipped models live beside the other weights
as `models/weights/tissue*.pt` + `.json` (json `kind: "tissue"`).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from connectome.core.errors import UserError
from connectome.models.registry import write_weights
from connectome.models.unet import UNet, UNetConfig, Vec3, fold_batchnorm
from connectome.tissue.classes import N_CLASSES, NAMES

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
KIND = "tissue"
FORMAT_VERSION = 1


def preset(levels: int = 5, base_channels: int = 8, max_channels: int = 48, norm: str = "batch") -> UNetConfig:
    """2-d U-Net: (1, 3, 3) kernels, (1, 2, 2) downsampling; 5 levels see about 91 px each side."""
    return UNetConfig(
        base_channels=base_channels, channel_growth=2.0, max_channels=max_channels,
        downsample=((1, 2, 2),) * (levels - 1), kernels=((1, 3, 3),) * levels,
        encoder_convs=(1,) + (2,) * (levels - 1), decoder_convs=(1,) * (levels - 1), norm=norm,
    )


def build_net(config: UNetConfig, n_classes: int = N_CLASSES) -> UNet:
    """The U-Net with its affinity head replaced by one logit per tissue class."""
    if any(k[0] != 1 for k in config.kernels) or any(d[0] != 1 for d in config.downsample):
        raise ValueError("the tissue network is 2-d: every kernel and downsampling factor must be 1 in z")
    net = UNet(config)
    net.head = nn.Conv3d(config.channels[0], n_classes, 1)
    return net


@dataclass(frozen=True)
class TissueInfo:
    """What the stage needs: geometry, normalisation, classes and where the model came from."""

    name: str
    config: UNetConfig
    voxel_size: tuple[float, float, float]  # nm; only y and x constrain the data (a 2-d model)
    context: Vec3  # margin (voxels, each side) that makes a divisor-aligned tile's output exact
    divisor: Vec3
    classes: tuple[str, ...]
    mean: float  # input normalisation: (unit - mean) / std, unit = raw / 255 or, where `sections_mapped`,
    std: float  # predict.unit_intensity (each section's levels mapped)
    provenance: dict = field(default_factory=dict, compare=False, hash=False)
    path: str = ""
    sections_mapped: bool = False  # trained on sections mapped as predict.unit_intensity maps them (since 2026-12-06)


def available_models() -> list[str]:
    """Names of the shipped tissue models."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("tissue*.pt") if p.with_suffix(".json").is_file())


def resolve_model_path(name: str) -> Path:
    """Weights of a shipped tissue model name or a .pt path (with its .json); one line otherwise."""
    if name.endswith(".pt") or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise UserError(f"tissue model {name}: no such file (or no .json beside it)")
    else:
        path = WEIGHTS_DIR / f"{name}.pt"
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise UserError(f"unknown tissue model {name!r}; available: {', '.join(available_models()) or 'none'}")
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("kind") != KIND:
        kind = f" (kind {meta['kind']})" if meta.get("kind") else ""
        raise UserError(f"model {name!r} is not a tissue model{kind}; "
                        f"tissue models: {', '.join(available_models()) or 'none'}")
    return path


def read_info(path: str | os.PathLike) -> TissueInfo:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    config = UNetConfig.from_dict(meta["architecture"])
    return TissueInfo(
        name=meta.get("name", path.stem), config=config,
        voxel_size=tuple(float(v) for v in meta["voxel_size"]),  # type: ignore[arg-type]
        context=config.context, divisor=config.divisor, classes=tuple(meta["classes"]),
        mean=float(meta["normalisation"]["mean"]), std=float(meta["normalisation"]["std"]),
        provenance=meta.get("provenance", {}), path=str(path), sections_mapped="unit" in meta["normalisation"],
    )


def save_model(path: str | os.PathLike, net: UNet, meta: dict) -> Path:
    """Write `path`.pt (float32 state dict) and `path`.json (kind, architecture, classes, provenance)."""
    path = write_weights(path, net)
    config: UNetConfig = net.config
    full = {"format": FORMAT_VERSION, "kind": KIND, "name": meta.get("name", path.stem),
            "architecture": config.to_dict(), "classes": list(NAMES), "context": list(config.context),
            "divisor": list(config.divisor), **meta}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2) + "\n")
    os.replace(tmp, path.with_suffix(".json"))
    return path


def load_state(net: UNet, path: str | os.PathLike) -> None:
    """Load weights into `net`; one line when the architecture differs."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise UserError(f"tissue model {path}: weights do not fit this architecture ({str(e).splitlines()[0]})") from e


_lock = threading.Lock()


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


@functools.cache
def _load(path: str, precision: str) -> tuple[UNet, TissueInfo]:
    info = read_info(path)
    net = build_net(info.config, len(info.classes))
    load_state(net, path)
    fold_batchnorm(net.eval())
    net = net.to(PRECISIONS[precision]).eval()  # float64 by default: see predict.class_logits
    for p in net.parameters():
        p.requires_grad_(False)
    return net, info


def load_model(name: str, precision: str = "float64") -> tuple[UNet, TissueInfo]:
    """The network (eval, BatchNorm folded, no gradients) in `precision` and its info; cached per process."""
    path = str(resolve_model_path(name).resolve())
    with _lock:
        return _load(path, precision)

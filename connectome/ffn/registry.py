"""Shipped and user-trained FFN models by name: `models/weights/ffn-{name}.pt` + `.json` beside it."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from connectome.core.errors import UserError
from connectome.ffn.model import FFN, FFNConfig, FFNInfo

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
FORMAT_VERSION = 1
KIND = "ffn"


def available_models() -> list[str]:
    """Names of the shipped FFN models."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("ffn-*.pt") if p.with_suffix(".json").is_file())


def resolve_model_path(name: str) -> Path:
    """Weights of a shipped FFN name or a .pt path (with its .json); one line naming the problem otherwise: a
    missing or unreadable file, a json of another kind or without a key it needs, weights that do not fit the
    architecture the json describes (all before anything is written)."""
    if name.endswith((".pt", ".json")) or os.sep in name:
        path = Path(name).expanduser()
        if path.suffix != ".pt":
            raise UserError(f"FFN model {name}: expected the weights file (.pt) with its .json beside it, "
                            f"found a {path.suffix or 'name without suffix'}")
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise UserError(f"FFN model {name}: no such file (or no .json beside it)")
    else:
        path = WEIGHTS_DIR / f"{name}.pt"
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise UserError(f"unknown FFN model {name!r}; available: {', '.join(available_models()) or 'none'}")
    meta = _meta(path)
    if meta.get("kind") != KIND:
        raise UserError(f"model {name!r} is not an FFN model; FFN models: {', '.join(available_models()) or 'none'}")
    _check_weights(str(path), path.stat().st_mtime, path.with_suffix(".json").stat().st_mtime)
    return path


def _meta(path: Path) -> dict:
    """The .json beside the weights; one line where it is not a JSON object."""
    where = path.with_suffix(".json")
    try:
        meta = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: expected the model's JSON description, found text that is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(meta).__name__}")
    return meta


@functools.lru_cache(maxsize=8)
def _check_weights(path: str, mtime: float, json_mtime: float) -> None:
    """The weights load into the network the json describes (once per file version and process)."""
    from connectome.models.registry import load_checked

    info = read_info(path)
    load_checked(FFN(info.config), path, f"the network its .json describes ({info.config.depth} modules of "
                                         f"{info.config.features} features)")


def read_info(path: str | os.PathLike) -> FFNInfo:
    """FFNInfo from the .json beside the weights; one line naming a key it lacks or cannot read."""
    path = Path(path)
    meta = _meta(path)
    inf = meta.get("inference", {})
    try:
        return FFNInfo(
            name=meta.get("name", path.stem),
            config=FFNConfig.from_dict(meta["architecture"]),
            voxel_size=tuple(float(v) for v in meta["voxel_size"]),  # type: ignore[arg-type]
            mean=float(meta["normalisation"]["mean"]),
            std=float(meta["normalisation"]["std"]),
            move_threshold=float(inf.get("move_threshold", 0.9)),
            segment_threshold=float(inf.get("segment_threshold", 0.6)),
            min_size=int(inf.get("min_size", 100)),
            agree=float(meta.get("agglomeration", {}).get("agree", 0.8)),
            provenance=meta.get("provenance", {}),
            path=str(path),
            input=str(meta.get("input", "raw")),
        )
    except KeyError as e:
        raise UserError(f"{path.with_suffix('.json')}: expected key {e.args[0]!r} of an FFN model's description, "
                        f"found none") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path.with_suffix('.json')}: a value of the FFN model's description is not what it "
                        f"should be ({e})") from None


def load_model(name: str, device: str | torch.device = "cpu") -> tuple[FFN, FFNInfo]:
    """The network (eval mode, no gradients) and its info."""
    path = resolve_model_path(name)
    info = read_info(path)
    net = FFN(info.config)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, info


def save_model(path: str | os.PathLike, net: FFN, info: FFNInfo, extra: dict | None = None) -> Path:
    """Write `path`.pt (float32 state dict) and `path`.json (architecture, geometry, provenance)."""
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)
    meta = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        "name": info.name,
        "architecture": info.config.to_dict(),
        "fov": list(info.config.fov),
        "deltas": list(info.config.deltas),
        "voxel_size": list(info.voxel_size),
        "input": info.input,
        "normalisation": {"mean": info.mean, "std": info.std, "formula": "(image / 255 - mean) / std"},
        "inference": {"move_threshold": info.move_threshold, "segment_threshold": info.segment_threshold,
                      "min_size": info.min_size},
        "agglomeration": {"agree": info.agree},
        "provenance": info.provenance,
        **(extra or {}),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path

"""Shipped and user-trained affinity models, loaded by name: `weights/{name}.pt` + `{name}.json`."""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from connectome.affinity.blank import FILL_BLANK
from connectome.core.errors import UserError
from connectome.models.unet import NEAREST_OFFSETS, UNet, UNetConfig, Vec3, aligned_reach, fold_batchnorm

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_VERSION = 1

BLANK_BAND = 4  # a model json's inference.blank_band where it has none (fib-10nm's; README "Blank regions")


@dataclass(frozen=True)
class ModelInfo:
    """What a stage needs to know to run a model: geometry, normalisation and where it came from."""

    name: str
    config: UNetConfig
    voxel_size: tuple[float, float, float]  # nm (z, y, x) of the data it was trained on
    context: Vec3  # margin (voxels, each side) that makes the centre output exact
    divisor: Vec3  # input shape must be a multiple of this
    offsets: tuple[Vec3, ...]  # offsets of the channels the network was trained on
    mean: float  # input normalisation: (raw / 255 - mean) / std
    std: float
    z_affinity: str = "learned"  # "learned", or "from_xy" for models trained on 2-d labels only
    threshold: float | None = None  # agglomeration threshold that scored best on validation
    scoring: str = "mean"  # the agglomeration score `segment` uses by default ("learned": <name>-edges.json)
    in_plane: bool = False  # fragments within sections (the fragments stage's in_plane), as validated
    tta: int = 1  # flipped copies whose affinities `segment` averages by default (test-time augmentation)
    blank_band: int = BLANK_BAND  # voxels of tissue beside a blank region left out with it (`affinity.blank`)
    fill_blank: int = FILL_BLANK  # sections a lost section's fill reaches above and below (`affinity.blank`)
    absorb: dict = field(default_factory=dict, hash=False)  # relabel's min_voxels, max_extent, min_share ({}: none)
    flops_per_voxel: float = 0.0
    provenance: dict = field(default_factory=dict, compare=False, hash=False)
    path: str = ""

    @property
    def nearest_offsets(self) -> tuple[Vec3, ...]:
        return NEAREST_OFFSETS


@dataclass
class LoadedModel:
    """A network in eval mode on its device, with its ModelInfo."""

    net: torch.nn.Module
    info: ModelInfo
    device: torch.device


def model_context(config: UNetConfig, z_affinity: str) -> Vec3:
    """Network context, plus one voxel when z affinities are derived from neighbouring xy affinities."""
    extra = 1 if z_affinity == "from_xy" else 0
    return tuple(
        math.ceil((r + extra) / d) * d for r, d in zip(aligned_reach(config), config.divisor)
    )  # type: ignore[return-value]


AFFINITY_KINDS = (None, "affinities")  # the json's `kind`: absent in affinity models; "ffn", "tissue" elsewhere


def _kind(json_path: Path) -> str | None:
    try:
        return json.loads(json_path.read_text()).get("kind")
    except (OSError, ValueError):
        return None


def available_models() -> list[str]:
    """The shipped affinity models (other kinds of weights in the folder are not offered)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")
                  if p.with_suffix(".json").is_file() and _kind(p.with_suffix(".json")) in AFFINITY_KINDS)


def resolve_model_path(name: str) -> Path:
    """Weights path for a shipped name or a path to a .pt file (with its .json beside it)."""
    if name.endswith((".pt", ".json")) or os.sep in name:
        path = Path(name).expanduser()
        if path.suffix == ".json" and path.is_file():  # the json itself, not the weights beside it
            read_info(path)  # a json of another kind (an edge classifier, an FFN) is named as that
            weights = path.with_suffix(".pt")
            raise UserError(f"model {name}: expected the weights file (.pt) with its .json beside it, found the "
                            + (f".json: give {weights}" if weights.is_file() else f".json and no {weights.name}"))
        if not path.is_file():
            weights = Path(f"{path}.pt")
            hint = f" (did you mean {weights}?)" if path.suffix != ".pt" and weights.is_file() else ""
            raise UserError(f"model {name}: no such file{hint}")
        if not path.with_suffix(".json").is_file():
            raise UserError(f"model {name}: missing {path.with_suffix('.json').name} beside the weights")
        _check_weights(str(path), path.stat().st_mtime, path.with_suffix(".json").stat().st_mtime)
        return path
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        names = ", ".join(available_models()) or "none"
        here = Path(f"{name}.pt")
        hint = f"; did you mean ./{here}?" if here.is_file() else ""
        raise UserError(f"unknown model {name!r}; available models: {names} (or give a path to a .pt file){hint}")
    return path


@functools.lru_cache(maxsize=8)
def _check_weights(path: str, mtime: float, json_mtime: float) -> None:
    """A model given as a path: its weights load into the network its .json describes (once per file version and
    process), so a damaged or foreign .pt is refused in one line before anything is written."""
    load_checked(UNet(read_info(path).config), path, "the U-Net its .json describes")


def load_checked(net: torch.nn.Module, path: str, what: str) -> None:
    """Load the weights at `path` into `net`; one line naming the file where they are not `what` (a damaged or
    foreign .pt: torch raises many kinds of error for one)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # noqa: BLE001 - see the docstring
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
        if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:  # the mismatch is what says
            lines = [lines[1]]  # which network the weights are of ("size mismatch for ...", "Missing key(s) ...")
        found = lines[0] if len(lines[0]) <= 240 else lines[0][:237] + "..."
        raise UserError(f"{path}: expected the weights of {what}, found {found}") from None


AFFINITY_KEYS = ("architecture", "voxel_size", "normalisation")


def read_model_json(path: Path, keys: tuple[str, ...], what: str) -> dict:
    """The json beside a model's weights, refused in one line where it is not JSON or lacks one of `keys` (the
    ones `what`, e.g. "an affinity model", needs)."""
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: expected the JSON of {what}, found a file that is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected the JSON of {what} (an object), found a {type(meta).__name__}")
    require_keys(meta, path, keys, what)
    return meta


def require_keys(meta: dict, path: Path, keys: tuple[str, ...], what: str) -> None:
    """One line naming the keys of `keys` that a model's json (`meta`, read from `path`) lacks."""
    missing = [k for k in keys if k not in meta]
    if missing:
        kind = f" (kind {meta['kind']!r})" if meta.get("kind") else ""
        raise UserError(f"{path}: expected the JSON of {what}, found one without {', '.join(map(repr, missing))}"
                        f"{kind}")


def read_info(path: str | os.PathLike) -> ModelInfo:
    """ModelInfo from the .json beside a .pt file."""
    path = Path(path)
    meta = read_model_json(path.with_suffix(".json"), (), "an affinity model")
    if meta.get("kind") not in AFFINITY_KINDS:
        raise UserError(f"model {meta.get('name', path.stem)!r} is of kind {meta['kind']!r}, not an affinity model "
                        f"({path.with_suffix('.json')})")
    require_keys(meta, path.with_suffix(".json"), AFFINITY_KEYS, "an affinity model")
    config = UNetConfig.from_dict(meta["architecture"])
    z_aff = meta.get("z_affinity", "learned")
    agg = meta.get("agglomeration") or {}
    return ModelInfo(
        name=meta.get("name", path.stem),
        config=config,
        voxel_size=tuple(float(v) for v in meta["voxel_size"]),  # type: ignore[arg-type]
        context=model_context(config, z_aff),
        divisor=config.divisor,
        offsets=config.offsets,
        mean=float(meta["normalisation"]["mean"]),
        std=float(meta["normalisation"]["std"]),
        z_affinity=z_aff,
        threshold=agg.get("threshold"),
        scoring=str(agg["scoring"]) if agg.get("scoring") in ("mean", "quantile", "learned") else "mean",
        in_plane=bool(agg.get("in_plane", False)),
        tta=int((meta.get("inference") or {}).get("tta", 1)),
        blank_band=int((meta.get("inference") or {}).get("blank_band", BLANK_BAND)),
        fill_blank=int((meta.get("inference") or {}).get("fill_blank", FILL_BLANK)),
        absorb={k: agg["absorb"][k] for k in ("min_voxels", "max_extent", "min_share")
                if k in agg["absorb"]}
        if isinstance(agg.get("absorb"), dict) else {},
        flops_per_voxel=config.flops_per_voxel,
        provenance=meta.get("provenance", {}),
        path=str(path),
    )


DEVICE_PATTERN = r"^(cpu|cuda(:[0-9]+)?)$"  # a stage's `device` parameter (refused in one line otherwise)


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA device is available")
    return device


def load_model(name: str, device: str | torch.device | None = None) -> LoadedModel:
    """Load a model by shipped name (see available_models()) or by path to a .pt file."""
    path = resolve_model_path(name)
    info = read_info(path)
    dev = pick_device(device)
    net = UNet(info.config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.keep_outputs(len(NEAREST_OFFSETS))
    fold_batchnorm(net.eval())
    # torch stubs: Module.to(memory_format=...) works and is documented but has no overload
    net = net.to(dev).to(memory_format=torch.channels_last_3d).eval()  # type: ignore[call-overload]
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedModel(net=net, info=info, device=dev)


def write_weights(path: str | os.PathLike, net: torch.nn.Module) -> Path:
    """Write `path`.pt atomically: the float32 state dict on the CPU; returns that path."""
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def save_model(path: str | os.PathLike, net: UNet, meta: dict) -> Path:
    """Write `path`.pt (float32 state dict) and `path`.json (architecture, normalisation, provenance)."""
    path = write_weights(path, net)
    config: UNetConfig = net.config
    full = {
        "format": FORMAT_VERSION,
        "name": meta.get("name", path.stem),
        "architecture": config.to_dict(),
        "context": list(model_context(config, meta.get("z_affinity", "learned"))),
        "divisor": list(config.divisor),
        "flops_per_voxel": config.flops_per_voxel,
        **meta,
    }
    path.with_suffix(".json").write_text(json.dumps(full, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

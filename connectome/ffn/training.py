"""FFN training: examples centred on object voxels, the FOV moved inside the object (the paper's
training-time movement: the POM of one step is the next step's input), BCE on logits against the
object mask, validation by segmenting a held-out volume (VOI, merges), best checkpoint kept."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from connectome.core.errors import UserError
from connectome.core.geometry import vec3
from connectome.ffn.canvas import CanvasSettings, segment_volume
from connectome.ffn.examples import ExampleSource
from connectome.ffn.inputs import affinity_image, affinity_model
from connectome.ffn.model import CPU, FFN, LOGIT_INIT, LOGIT_SEED, FFNConfig, FFNInfo
from connectome.ffn.registry import WEIGHTS_DIR, save_model
from connectome.ffn.scale import ONE, downsample_image, downsample_labels, upsample_labels
from connectome.ffn.scores import validation_scores
from connectome.models.registry import load_checked
from connectome.training.curves import loss_ends
from connectome.training.device import CPU_DEVICE, training_device


@dataclass
class FFNTrainSettings:
    """Everything a training run depends on (recorded in the model's json)."""

    raw: list[str]
    labels: list[str]
    name: str
    out: str
    val_raw: str | None = None
    val_labels: str | None = None
    iterations: int = 1000
    batch_size: int = 4
    moves: int = 1  # FOV moves after the first step, per example
    balance: bool = True  # draw centres evenly over the share of the FOV their object fills (examples.ExampleSource)
    config: FFNConfig = field(default_factory=lambda: CPU)
    seed: int = 0
    lr: float = 1e-3
    val_every: int = 250
    val_orders: int = 2  # validation seeds in forward (1), or forward and reverse order (2) scored as the mean
    max_minutes: float | None = None
    threads: int = 2
    voxel_size: tuple[float, float, float] | None = None
    install: bool = False
    command: str = ""
    input: str = "raw"  # or `affinities:MODEL`: train on that affinity model's mean affinity (ffn.inputs)
    scale: tuple[int, int, int] = (1, 1, 1)  # train at the data's voxel size times this (ffn.scale)
    device: str = "cpu"  # where the network trains and validates: cpu, cuda or cuda:N
    init: str | None = None  # an FFN to continue from (its config, input and normalisation; `config` is its)


def _fov_crop(t: torch.Tensor, starts: np.ndarray, fov) -> torch.Tensor:
    """(B, 1, *fov) crops of (B, 1, *patch) at per-example start corners."""
    return torch.stack([t[b, :, s[0]:s[0] + fov[0], s[1]:s[1] + fov[1], s[2]:s[2] + fov[2]]
                        for b, s in enumerate(starts)])


def _best_faces(prob: np.ndarray, config: FFNConfig) -> np.ndarray:
    """(B, 3) offset to the FOV face with the highest object probability, per example."""
    r = config.radius
    scores = []
    for axis, delta in enumerate(config.deltas):
        for sign in (-1, 1):
            index: list[slice | int] = [slice(None), slice(None), slice(None), slice(None)]
            index[axis + 1] = r[axis] + sign * delta
            scores.append(prob[tuple(index)].reshape(len(prob), -1).max(axis=1))
    best = np.argmax(np.stack(scores, 1), axis=1)
    offsets = np.zeros((len(prob), 3), np.int64)
    offsets[np.arange(len(prob)), best // 2] = np.where(best % 2, 1, -1) * np.asarray(config.deltas)[best // 2]
    return offsets


def train_step(net: FFN, raw: np.ndarray, mask: np.ndarray, info: FFNInfo, moves: int,
               device: torch.device = CPU_DEVICE) -> torch.Tensor:
    """Loss of one batch: the first FOV at the patch centre, then `moves` moves to the best face."""
    config = net.config
    image = torch.from_numpy((raw - info.mean) / info.std)[:, None].to(device)
    target = torch.from_numpy(mask.astype(np.float32))[:, None].to(device)
    pom = torch.full(image.shape, LOGIT_INIT, device=device)
    centre = np.array(raw.shape[1:]) // 2
    pom[(slice(None), 0, *centre)] = LOGIT_SEED
    starts = np.tile(centre - np.array(config.radius), (len(raw), 1))
    total = torch.zeros((), device=device)
    for step in range(moves + 1):
        out = net(_fov_crop(image, starts, config.fov), _fov_crop(pom, starts, config.fov))
        total = total + F.binary_cross_entropy_with_logits(out, _fov_crop(target, starts, config.fov))
        with torch.no_grad():
            for b, s in enumerate(starts):
                pom[b, :, s[0]:s[0] + config.fov[0], s[1]:s[1] + config.fov[1], s[2]:s[2] + config.fov[2]] = out[b]
            if step < moves:
                starts = starts + _best_faces(torch.sigmoid(out[:, 0]).float().cpu().numpy(), config)
    return total / (moves + 1)


def _load(settings: FFNTrainSettings):
    from connectome.training.data import load_pair

    if len(settings.raw) != len(settings.labels):
        raise UserError(f"{len(settings.raw)} --raw but {len(settings.labels)} --labels; give them in pairs")
    pairs = [load_pair(r, lab) for r, lab in zip(settings.raw, settings.labels)]
    val = load_pair(settings.val_raw, settings.val_labels) if settings.val_raw and settings.val_labels else None
    reads = affinity_model(settings.input)
    if reads:  # the network's image: the affinity model's mean affinity, predicted once per volume here
        pairs = [replace(p, raw=affinity_image(p.raw, reads)) for p in pairs]
        val = replace(val, raw=affinity_image(val.raw, reads)) if val is not None else None
    scale = settings.scale
    if tuple(scale) != ONE:  # the network learns at the coarse voxel size; validation is scored at the fine one
        pairs = [replace(p, raw=downsample_image(p.raw, scale), labels=downsample_labels(p.labels, scale))
                 for p in pairs]
    return pairs, val


def _check_affinity_model(settings: FFNTrainSettings, voxel_size) -> None:
    """The affinity model an `affinities:MODEL` input names exists and was trained on this voxel size."""
    reads = affinity_model(settings.input)
    if not reads:
        return
    from connectome.io import same_voxel_size
    from connectome.models.registry import read_info, resolve_model_path

    trained = tuple(float(v) for v in read_info(resolve_model_path(reads)).voxel_size)
    if not same_voxel_size(trained, voxel_size):
        raise UserError(f"--input {settings.input}: {reads} was trained on {list(trained)} nm voxels, the training "
                        f"volumes have {list(voxel_size)}")


MEANS = ("voi_split", "voi_merge", "voi", "merges", "segments", "unsegmented")


def validate(net: FFN, info: FFNInfo, raw: np.ndarray, gt: np.ndarray, scale=ONE,
             device: torch.device = CPU_DEVICE, orders: int = 1) -> dict:
    """Segment `raw` with the current weights (downsampled by `scale`, the labels upsampled back, as the `ffn`
    stage runs it, with its default seed rules and step budget, which also bounds the time of a validation) and
    score it against `gt`; with `orders` 2, once with the seeds in forward and once in reverse order: the scores
    are the two runs' means (each run's VOI kept as `voi_orders`), steps and seeds not started their sums."""
    net.eval()
    runs = []
    for reverse in (False, True)[:orders]:
        seg, stats = segment_volume(net, info, downsample_image(raw, scale),
                                    CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size,
                                                   reverse=reverse), device=device)
        runs.append({**validation_scores(upsample_labels(seg, scale, raw.shape), gt), "steps": stats["steps"],
                     "over_budget": stats["over_budget"]})
    net.train()
    if orders == 1:
        return runs[0]
    return {**{k: float(np.mean([r[k] for r in runs])) for k in MEANS}, "voi_orders": [r["voi"] for r in runs],
            "steps": sum(r["steps"] for r in runs), "over_budget": sum(r["over_budget"] for r in runs)}


def train(settings: FFNTrainSettings, log=print) -> dict:
    """Train, validate every `val_every` iterations, keep the best checkpoint; return a summary."""
    from connectome.training.data import overlapping_sections, training_voxel_size

    clash = overlapping_sections(settings.raw + settings.labels,
                                 [a for a in (settings.val_raw, settings.val_labels) if a])
    if clash:
        raise UserError(f"training data overlaps held-out data: {clash[0]}")
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    device = training_device(settings.device)
    start_info = _init_info(settings)  # before any data is read or predicted
    fallback = (tuple(v / f for v, f in zip(start_info.voxel_size, settings.scale))  # the --init model's, per voxel
                if start_info is not None else None)
    data_voxel_size = training_voxel_size(settings.voxel_size, settings.raw, fallback)
    _check_affinity_model(settings, data_voxel_size)
    voxel_size = (data_voxel_size[0] * settings.scale[0], data_voxel_size[1] * settings.scale[1],
                  data_voxel_size[2] * settings.scale[2])
    if start_info is not None:
        _check_init_voxel_size(settings, start_info, voxel_size)
    pairs, val = _load(settings)
    config = settings.config
    anisotropic = max(voxel_size) > 2 * min(voxel_size)
    patch = vec3([f + 2 * settings.moves * d for f, d in zip(config.fov, config.deltas)])
    source = ExampleSource([(p.raw, p.labels) for p in pairs], patch, voxel_size, settings.seed, anisotropic,
                           balance_fov=config.fov if settings.balance else None)
    if start_info is not None:  # the network learned on its normalisation and runs at its inference settings
        info = replace(start_info, name=settings.name, config=config, voxel_size=voxel_size, input=settings.input,
                       provenance={}, path="")
    else:
        all_raw = np.concatenate([p.raw.reshape(-1) for p in pairs]).astype(np.float32) / 255.0
        info = FFNInfo(settings.name, config, voxel_size, mean=float(all_raw.mean()), std=float(all_raw.std()),
                       input=settings.input)
        del all_raw
    net = FFN(config)
    if start_info is not None:
        load_checked(net, start_info.path, f"the network its .json describes ({config.depth} modules of "
                                           f"{config.features} features)")
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    history: list[dict] = []
    best: dict | None = None
    start = time.perf_counter()
    deadline = start + settings.max_minutes * 60 if settings.max_minutes else None
    it = 0

    def validation(iteration: int) -> None:
        nonlocal best
        assert val is not None
        scores = {"iteration": iteration,
                  **validate(net, info, val.raw, val.labels, settings.scale, device, settings.val_orders)}
        history.append(scores)
        orders = (f" = mean of seeds forward {scores['voi_orders'][0]:.3f} and reverse {scores['voi_orders'][1]:.3f}"
                  if "voi_orders" in scores else "")
        log(f"validation at {iteration}: VOI {scores['voi']:.3f}{orders} (split {scores['voi_split']:.3f}, "
            f"merge {scores['voi_merge']:.3f}), merges {scores['merges']}"
            + (f", step budget spent ({scores['over_budget']} seeds not started)" if scores["over_budget"] else ""))
        if best is None or scores["voi"] < best["voi"]:
            best = scores
            _save(out / settings.name, net, info, settings, losses, history, best, start)

    if start_info is not None and val is not None:
        validation(0)  # the --init weights are a checkpoint: a run that only validates worse keeps them
    for it in range(1, settings.iterations + 1):
        raw, mask = source.batch(settings.batch_size)
        loss = train_step(net, raw, mask, info, settings.moves, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        last = it == settings.iterations or (deadline is not None and time.perf_counter() > deadline)
        if it % 50 == 0:
            log(f"iteration {it}: loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - start:.0f} s)")
        if val is not None and (it % settings.val_every == 0 or last):
            validation(it)
        elif val is None and last:
            _save(out / settings.name, net, info, settings, losses, history, best, start)
        if last:
            break
    _save_provenance(out / settings.name, settings, losses, history, best, start, it)
    from connectome.training.curves import plot_curves

    png = plot_curves(out / f"{settings.name}-loss.png", losses, history, f"FFN {settings.name}",
                      loss_label="BCE loss (object mask)")
    installed = None
    if settings.install:
        if not settings.name.startswith("ffn-"):
            raise UserError(f"--install: FFN model names start with 'ffn-' (got {settings.name!r})")
        for suffix in (".pt", ".json"):
            shutil.copyfile(out / f"{settings.name}{suffix}", WEIGHTS_DIR / f"{settings.name}{suffix}")
        shutil.copyfile(png, WEIGHTS_DIR / png.name)
        installed = settings.name
    return {"name": settings.name, "weights": str(out / f"{settings.name}.pt"), "iterations": it,
            **dict(zip(("first_loss", "final_loss"), loss_ends(losses, 20))),
            "validation": best, "wall_time_s": time.perf_counter() - start, "installed": installed,
            "loss_png": str(png)}


def _init_info(settings: FFNTrainSettings) -> FFNInfo | None:
    """The --init model's info (its network, normalisation, inference settings), or None."""
    if settings.init is None:
        return None
    from connectome.ffn.registry import read_info, resolve_model_path

    return read_info(resolve_model_path(settings.init))


def _check_init_voxel_size(settings: FFNTrainSettings, start: FFNInfo, voxel_size) -> None:
    """The --init model's voxel size within the factor 1.5 a model runs at of the training data's (times --scale)."""
    from connectome.models.voxel_size import check_voxel_size

    scaled = f" (at --scale {' '.join(map(str, settings.scale))})" if tuple(settings.scale) != (1, 1, 1) else ""
    check_voxel_size(settings.init or "", start.voxel_size, f"{settings.raw[0]}{scaled}", voxel_size,
                     hint="continue from an FFN of the data's voxel size")


def _provenance(settings, losses, history, best, start, iterations) -> dict:
    s = asdict(settings)
    s["config"] = settings.config.to_dict()
    return {"command": settings.command, "settings": s, "iterations": iterations,
            **dict(zip(("first_loss", "final_loss"), loss_ends(losses, 20))),
            "validation": best, "validation_history": history,
            "wall_time_s": round(time.perf_counter() - start, 1), "torch": torch.__version__}


def _save(path, net, info, settings, losses, history, best, start) -> None:
    info.provenance = _provenance(settings, losses, history, best, start, len(losses))
    save_model(path, net, info)


def _save_provenance(path, settings, losses, history, best, start, iterations) -> None:
    """Rewrite the json of the kept checkpoint with the whole run's record (its weights unchanged)."""
    meta_path = Path(path).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["provenance"] = {**_provenance(settings, losses, history, best, start, iterations),
                          "kept_iteration": best["iteration"] if best else iterations}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")

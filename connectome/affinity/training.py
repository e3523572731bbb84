"""Training loop for the affinity U-Net: augmented patches, class-balanced BCE, VOI-based validation.

Validation segments the validation volume exactly as `connectome segment` does in one block
(`connectome.affinity.validation`: uint8 affinities, our watershed, region graph and mean-score
global merge) at each threshold, and the model ships the threshold that scored best there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from connectome.affinity import lsd as shape_descriptors
from connectome.affinity.malis import malis_loss
from connectome.affinity.targets import affinities_from_labels, balance_weights
from connectome.affinity.validation import AFF_HIGH, AFF_LOW, CHAIN, voi_over_thresholds
from connectome.core.errors import UserError
from connectome.core.machine import cpu_name
from connectome.models.registry import WEIGHTS_DIR, LoadedModel, ModelInfo, model_context, save_model
from connectome.models.unet import ARCHES, NEAREST_OFFSETS, UNet, UNetConfig, preset
from connectome.models.widening import widen_state
from connectome.training.augment import AugmentConfig, Augmenter
from connectome.training.curves import loss_ends, plot_curves
from connectome.training.data import (
    Pair,
    in_section_order,
    load_pair,
    overlapping_sections,
    relabel_per_section,
    training_voxel_size,
)
from connectome.training.device import training_device
from connectome.training.loader import batch_stream, default_workers

Vec3 = tuple[int, int, int]

# long-range affinities trained as auxiliary outputs (dropped at inference)
AUX_OFFSETS = {
    "iso": ((-3, 0, 0), (0, -3, 0), (0, 0, -3), (-9, 0, 0), (0, -9, 0), (0, 0, -9)),
    "aniso": ((-2, 0, 0), (0, -3, 0), (0, 0, -3), (0, -9, 0), (0, 0, -9)),
}
# local shape descriptors (auxiliary, dropped at inference): computed on labels downsampled by this factor
LSD_FACTOR = {"iso": (2, 2, 2), "aniso": (1, 2, 2)}
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCORING = "mean"  # the relabel stage's default: score = 1 - mean affinity of the whole contact


@dataclass
class TrainSettings:
    """Everything that determines a training run (recorded in the model's provenance)."""

    raw: list[str]
    labels: list[str]
    name: str
    out: str
    section_raw: list[str] = field(default_factory=list)  # extra volumes whose labels are per section (2-D):
    section_labels: list[str] = field(default_factory=list)  # their z affinities get no loss
    val_raw: str | None = None
    val_labels: str | None = None
    eval_raw: list[str] = field(default_factory=list)  # scored with the best checkpoint only
    eval_labels: list[str] = field(default_factory=list)
    iterations: int = 1000
    batch_size: int = 2
    patch: Vec3 = (48, 48, 48)
    seed: int = 0
    device: str = "cpu"
    arch: str = "iso"
    voxel_size: tuple[float, float, float] | None = None
    labels_2d: bool = False
    aux: bool = True
    lsd: bool = False  # also learn the 10 local shape descriptors (MtLSD), an auxiliary MSE loss
    lsd_sigma_nm: float = 80.0
    lsd_weight: float = 1.0
    malis_weight: float = 0.0  # add the constrained MALIS loss (`malis`) on patches with 3-D labels, this weight
    norm: str = "batch"  # BatchNorm while training (folded away for inference) or "none"
    base_channels: int | None = None  # channels at full resolution (None: the arch preset's)
    max_channels: int | None = None  # cap on the channels of any level (None: the preset's)
    lr: float = 1e-3
    val_every: int = 250
    max_minutes: float | None = None  # stop (and finish the learning-rate decay) by this wall time
    init: str | None = None  # start from this model's weights (name or .pt path; same or narrower architecture)
    loss_margin: Vec3 | None = None  # voxels at each patch face left out of the loss
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    threads: int = 2
    loader_workers: int | None = None  # processes that make the batches (`training.loader`); None: by device
    install: bool = False  # copy the best weights + json into connectome/models/weights/
    section_order: str = "auto"  # volumes with 3-D labels stored out of order: train in the recovered order
    command: str = ""


def ordered_pair(pair: Pair, settings: TrainSettings, voxel_size, reordered: dict) -> Pair:
    """`pair` (3-D labels) in the order recovered from its images where `settings.section_order` says
    (`in_section_order`; never with --labels-2d); the order goes into `reordered` (address -> sections)."""
    if settings.labels_2d:
        return pair
    pair, sections = in_section_order(pair, settings.section_order, voxel_size,
                                      "training on it in the recovered order, its labels with it")
    if sections is not None:
        reordered[pair.raw_address] = sections
    return pair


def augment_config(arch: str) -> AugmentConfig:
    if arch == "aniso":
        return AugmentConfig(anisotropic=True, elastic_sigma=3.0, elastic_spacing=(1, 24, 24),
                             missing_sections=0.03, shifted_sections=0.05, max_section_shift=4)
    return AugmentConfig(anisotropic=False, elastic_sigma=2.0, elastic_spacing=(12, 12, 12))


def default_margin(arch: str) -> Vec3:
    return (0, 8, 8) if arch == "aniso" else (4, 4, 4)


def score_pair(model: LoadedModel, pair: Pair, thresholds, labels_2d: bool, in_plane: bool = False) -> list[dict]:
    """Predict a whole volume and score `connectome segment`'s chain on it at each threshold (`in_plane`:
    fragments within sections); 2-d labels are scored section by section (z affinities 0: no merge
    across sections)."""
    from connectome.models.inference import predict_volume

    affs = predict_volume(model, pair.raw, precision="auto")  # as `connectome segment` predicts by default
    gt = pair.labels
    if labels_2d:
        affs[0] = 0.0  # no merges across sections: each section is segmented on its own
        gt = relabel_per_section(gt)
    return voi_over_thresholds(affs, gt, thresholds, in_plane)


def _info(settings: TrainSettings, net: UNet, voxel_size, mean: float, std: float) -> ModelInfo:
    z_aff = "from_xy" if settings.labels_2d else "learned"
    cfg = net.config
    return ModelInfo(name=settings.name, config=cfg, voxel_size=tuple(voxel_size),
                     context=model_context(cfg, z_aff), divisor=cfg.divisor, offsets=cfg.offsets,
                     mean=mean, std=std, z_affinity=z_aff, flops_per_voxel=cfg.flops_per_voxel)


def sampling_weights(sizes: np.ndarray, two_d: np.ndarray) -> np.ndarray:
    """Chance of each training volume per patch: sqrt of its size (small volumes get more than their
    voxel share); volumes with per-section labels together get at most half when volumes with 3-D labels
    exist, since only those teach the z affinity."""
    w = np.sqrt(sizes)
    if two_d.any() and not two_d.all() and w[two_d].sum() > w[~two_d].sum():
        w[two_d] *= w[~two_d].sum() / w[two_d].sum()
    return w / w.sum()


def _cut_margin(mask: np.ndarray, margin: Vec3) -> None:
    """Leave `margin` voxels at each face of a (channels, z, y, x) mask out of the loss."""
    for axis, m in enumerate(margin):
        if m:
            idx: list[slice | np.ndarray] = [slice(None)] * 4
            idx[axis + 1] = np.r_[0:m, mask.shape[axis + 1] - m: mask.shape[axis + 1]]
            mask[tuple(idx)] = False


def _batch(pairs, weights, augmenter, settings, offsets, margin, rng, two_d, voxel_size):
    """Raw (n, 1, z, y, x), affinity targets and masks, (with `settings.lsd`) descriptors and their mask, and
    the labels (n, z, y, x), None for a patch whose labels are per section."""
    raws, targets, masks, lsds, lsd_masks, patch_labels = [], [], [], [], [], []
    for _ in range(settings.batch_size):
        index = rng.choice(len(pairs), p=weights)
        pair = pairs[index]
        raw, labels = augmenter(pair.raw, pair.labels, settings.patch)
        affs, mask = affinities_from_labels(labels, offsets)
        flat = settings.labels_2d or two_d[index]
        if flat:
            mask[[c for c, o in enumerate(offsets) if o[0] != 0]] = False
        _cut_margin(mask, margin)
        raws.append(raw)
        targets.append(affs)
        masks.append(mask)
        patch_labels.append(None if flat else labels)
        if settings.lsd:
            if flat:  # per-section labels: descriptors of each section alone, z channels unknown
                descriptors = np.concatenate([shape_descriptors.local_shape_descriptors(
                    labels[z:z + 1], voxel_size, settings.lsd_sigma_nm, (1, *LSD_FACTOR[settings.arch][1:]))
                    for z in range(labels.shape[0])], axis=1)
            else:
                descriptors = shape_descriptors.local_shape_descriptors(
                    labels, voxel_size, settings.lsd_sigma_nm, LSD_FACTOR[settings.arch])
            known = np.repeat((labels != 0)[None], shape_descriptors.CHANNELS, axis=0)
            if flat:
                known[list(shape_descriptors.Z_CHANNELS)] = False
            _cut_margin(known, margin)
            lsds.append(descriptors)
            lsd_masks.append(known)
    batch = (np.stack(raws)[:, None], np.stack(targets), np.stack(masks))
    descriptors = (np.stack(lsds), np.stack(lsd_masks)) if settings.lsd else (None, None)
    return (*batch, *descriptors, patch_labels)


def _layout(c: UNetConfig) -> tuple:
    return c.downsample, c.kernels, c.encoder_convs, c.decoder_convs, c.channel_growth, c.skip


def init_difference(init: UNetConfig, asked: UNetConfig) -> str:
    """What differs between an --init model's architecture and the one the options ask for, said as the options
    that set it (`--arch aniso`, `--no-aux`, `--norm none`), so that a refusal says which to give."""
    said = []
    if _layout(init) != _layout(asked):
        arch = next((a for a in ARCHES if _layout(preset(a)) == _layout(init)), None)
        said.append(f"it is --arch {arch}" if arch else "its levels or kernels are those of neither --arch")
    aux = len(init.offsets) > len(NEAREST_OFFSETS)
    if aux != (len(asked.offsets) > len(NEAREST_OFFSETS)):
        said.append("it has the long-range outputs: leave out --no-aux" if aux else
                    "it has no long-range outputs: give --no-aux")
    if init.norm != asked.norm:
        said.append(f"it was trained with --norm {init.norm}")
    return "; ".join(said) or "aux outputs, norm"


def carried_settings(init: str | None, init_info: ModelInfo | None) -> dict:
    """What a fine-tuned model keeps of its --init model's json besides its normalisation: the inference settings
    `segment` uses by default (`tta`, `blank_band`) where that json gives them, and the small-segment rule
    (`absorb`), chosen for those weights on their validation splits, with a note saying so (before 2026-12-06 they
    were dropped: a fine-tuned `sstem` ran one flip, a 4-voxel blank band and no absorption). The new threshold is
    still chosen as every checkpoint is scored (one flip, no absorption), which the note says too."""
    if init_info is None:
        return {"inference": {}, "agglomeration": {}}
    given = json.loads(Path(init_info.path).with_suffix(".json").read_text()).get("inference") or {}
    inference = {k: v for k, v in given.items() if k in ("tta", "blank_band")}
    if inference:
        inference["note"] = (f"{', '.join(inference)} carried from --init {init} (chosen for its weights); the "
                             "threshold was chosen on one flip without absorption, as checkpoints are scored; "
                             "`segment --tta N` / `--blank-band N` override them")
    return {"inference": inference, "agglomeration": {"absorb": dict(init_info.absorb)} if init_info.absorb else {}}


def load_init(net: UNet, state: dict) -> None:
    """Load `state` into `net`; where the head's extra outputs differ (descriptors added or dropped), the head
    keeps its fresh rows beyond the ones both have; a narrower network is widened (`models.widening`)."""
    own = net.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in state and state[key].shape[0] != own[key].shape[0]:
            n = min(state[key].shape[0], own[key].shape[0])
            merged = own[key][:, :state[key].shape[1]].clone() if own[key].dim() > 1 else own[key].clone()
            merged[:n] = state[key][:n]
            state = {**state, key: merged}
    net.load_state_dict(widen_state(state, own))


def train(settings: TrainSettings, log=print) -> dict:
    """Train, validate every `val_every` iterations, keep the best checkpoint by validation VOI."""
    t_start = time.perf_counter()
    if len(settings.raw) != len(settings.labels) or not settings.raw:
        raise UserError(f"{len(settings.raw)} --raw but {len(settings.labels)} --labels: give one --labels for "
                        "each --raw (at least one pair)")
    if (settings.val_raw is None) != (settings.val_labels is None):
        raise UserError("give both --val-raw and --val-labels, or neither")
    if len(settings.eval_raw) != len(settings.eval_labels):
        raise UserError("give one --eval-labels for each --eval-raw")
    if len(settings.section_raw) != len(settings.section_labels):
        raise UserError("give one --section-labels for each --section-raw")
    held_out = [a for a in [settings.val_raw, settings.val_labels, *settings.eval_raw, *settings.eval_labels] if a]
    clash = overlapping_sections(settings.raw + settings.labels + settings.section_raw + settings.section_labels,
                                 held_out)
    if clash:
        raise UserError(f"training data overlaps held-out data: {clash[0]}")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = training_device(settings.device)
    workers = settings.loader_workers if settings.loader_workers is not None else default_workers(device)

    for flag, n in (("--base-channels", settings.base_channels), ("--max-channels", settings.max_channels)):
        if n is not None and n < 1:
            raise UserError(f"{flag} {n}: expected a channel count of at least 1")
    init_info = None
    if settings.init:
        from connectome.models.registry import read_info, resolve_model_path

        init_info = read_info(resolve_model_path(settings.init))
    offsets = NEAREST_OFFSETS + (AUX_OFFSETS[settings.arch] if settings.aux else ())
    try:
        config = preset(settings.arch, offsets)
        width = init_info.config if init_info is not None else config  # unless given: the --init model's width
        config = dataclasses.replace(config, norm=settings.norm,
                                     extra_outputs=shape_descriptors.CHANNELS if settings.lsd else 0,
                                     base_channels=settings.base_channels or width.base_channels,
                                     max_channels=settings.max_channels or width.max_channels)
    except ValueError as e:
        raise UserError(str(e)) from None
    if any(p % d for p, d in zip(settings.patch, config.divisor)):
        raise UserError(f"--patch {settings.patch} must be a multiple of {config.divisor} for arch {settings.arch}")
    if settings.malis_weight < 0:
        raise UserError(f"--malis-weight {settings.malis_weight}: expected a weight >= 0")
    if settings.loader_workers is not None and settings.loader_workers < 0:
        raise UserError(f"--loader-workers {settings.loader_workers}: expected 0 (batches made in the training "
                        f"process) or more")
    margin = settings.loss_margin if settings.loss_margin is not None else default_margin(settings.arch)
    if any(2 * m >= p for m, p in zip(margin, settings.patch)):
        raise UserError(f"--patch {settings.patch} leaves nothing inside the loss margin {margin}")

    pairs = [load_pair(r, l) for r, l in zip(settings.raw + settings.section_raw,
                                             settings.labels + settings.section_labels)]
    two_d = np.arange(len(pairs)) >= len(settings.raw)
    val = (load_pair(settings.val_raw, settings.val_labels)
           if settings.val_raw and settings.val_labels is not None else None)  # both or neither, checked above
    # checked now, not only after training (a bad --eval-raw was refused once the whole run was spent); read again
    # after training rather than held in memory through it
    for r, l in zip(settings.eval_raw, settings.eval_labels):
        load_pair(r, l)
    sizes = np.array([p.size for p in pairs], np.float64)
    weights = sampling_weights(sizes, two_d)
    if init_info is not None:
        init_config = dataclasses.replace(init_info.config, extra_outputs=config.extra_outputs)
        same_shape = dataclasses.replace(init_config, base_channels=config.base_channels,
                                         max_channels=config.max_channels) == config
        if not same_shape:
            raise UserError(f"--init {settings.init}: its architecture differs from --arch {settings.arch} "
                            f"with these options ({init_difference(init_config, config)})")
        if any(a > b for a, b in zip(init_config.channels, config.channels)):
            raise UserError(f"--init {settings.init}: its channels {init_config.channels} are wider than "
                            f"{config.channels} (--base-channels, --max-channels); expected the same or fewer")
        mean, std = init_info.mean, init_info.std  # the network learned on this normalisation
    else:
        all_raw = np.concatenate([p.raw.ravel() for p in pairs]).astype(np.float64) / 255.0
        mean, std = float(all_raw.mean()), float(all_raw.std()) or 1.0
        del all_raw
    # --voxel-size, else the data's own, else the --init model's (fine-tuning on an npz); never a made-up 1 nm
    voxel_size = training_voxel_size(settings.voxel_size, settings.raw,
                                     init_info.voxel_size if init_info else None)
    reordered: dict[str, list[int]] = {}
    pairs = [ordered_pair(p, settings, voxel_size, reordered) if not flat else p
             for p, flat in zip(pairs, two_d)]
    val = ordered_pair(val, settings, voxel_size, reordered) if val is not None else None

    net = UNet(config)
    if init_info is not None:
        load_init(net, torch.load(init_info.path, map_location="cpu", weights_only=True))
    # torch stubs: Module.to(memory_format=...) works and is documented but has no overload
    net = net.to(device).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    limit_s = settings.max_minutes * 60 if settings.max_minutes else math.inf

    def progress(it: int) -> float:
        """Fraction of the run done: by iterations, or by the time limit when that comes first."""
        return min(1.0, max(it / settings.iterations, (time.perf_counter() - t_start) / limit_s))

    def set_lr(it: int) -> None:  # cosine from lr down to lr / 10
        for g in opt.param_groups:
            g["lr"] = settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(it))))

    augmenter = Augmenter(augment_config(settings.arch), settings.seed)
    info = _info(settings, net, voxel_size, mean, std)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"training {settings.name}: {config.channels} channels, {len(offsets)} offsets, "
        f"{config.flops_per_voxel / 1e3:.1f} kFLOP/voxel, context {info.context}, "
        f"{sum(p.numel() for p in net.parameters())} parameters, {len(pairs)} training volumes "
        f"({int(sizes.sum())} voxels), device {device}")

    losses: list[float] = []
    lsd_losses: list[float] = []  # the descriptors' share of `losses` (with settings.lsd)
    malis_losses: list[float] = []  # the MALIS term before its weight (with settings.malis_weight)
    validation: list[dict] = []
    best: dict | None = None
    t_data = t_step = t_val = 0.0

    carried = carried_settings(settings.init, init_info)

    def meta(extra: dict) -> dict:
        return {
            "name": settings.name,
            "voxel_size": list(voxel_size),
            "normalisation": {"mean": mean, "std": std, "formula": "(raw / 255 - mean) / std"},
            "z_affinity": info.z_affinity,
            "agglomeration": {"chain": CHAIN, "scoring": SCORING, "aff_low": AFF_LOW, "aff_high": AFF_HIGH,
                              "in_plane": settings.arch == "aniso",
                              "threshold": best["threshold"] if best else None, **carried["agglomeration"]},
            **({"inference": carried["inference"]} if carried["inference"] else {}),
            **extra,
        }

    def validate(iteration: int, val: Pair) -> None:
        nonlocal best, t_val
        t0 = time.perf_counter()
        net.eval()
        scores = score_pair(LoadedModel(net, info, device), val, settings.thresholds, settings.labels_2d,
                            settings.arch == "aniso")
        net.train()
        top = min(scores, key=lambda s: s["voi"])
        entry = {"iteration": iteration, **top, "all": scores,
                 "loss": float(np.mean(losses[-settings.val_every:])) if losses else None}
        validation.append(entry)
        improved = best is None or top["voi"] < best["voi"]
        if improved:
            best = {"iteration": iteration, **top}
            save_model(out / settings.name, net, meta({"provenance": {"status": "checkpoint", "iteration": iteration}}))
        t_val += time.perf_counter() - t0
        log(f"  validation @ {iteration}: VOI {top['voi']:.3f} (split {top['voi_split']:.3f}, merge "
            f"{top['voi_merge']:.3f}) at threshold {top['threshold']}{'  *best*' if improved else ''} "
            f"[{time.perf_counter() - t0:.1f} s]")

    if init_info is not None and val is not None:
        # the --init weights are a checkpoint too, so a fine-tune that only validates worse keeps them (a lab's
        # retrain in place replaced a model of VOI 1.87 by one of 2.30: the first validation always saved)
        validate(0, val)
    net.train()
    done = 0
    batches = batch_stream(partial(_batch, pairs=pairs, weights=weights, settings=settings, offsets=offsets,
                                   margin=margin, two_d=two_d, voxel_size=voxel_size),
                           workers, rng, augmenter, settings.seed)
    try:
        for it in range(1, settings.iterations + 1):
            t0 = time.perf_counter()
            set_lr(it - 1)
            raw, target, mask, lsd_target, lsd_mask, patch_labels = next(batches)
            x = torch.from_numpy((raw - mean) / std).to(device).contiguous(memory_format=torch.channels_last_3d)
            y = torch.from_numpy(target).to(device, torch.float32)
            w = balance_weights(y, torch.from_numpy(mask).to(device))
            t1 = time.perf_counter()
            logits = net(x)
            n_aff = len(offsets)
            loss = (F.binary_cross_entropy_with_logits(logits[:, :n_aff], y, weight=w, reduction="sum")
                    / w.sum().clamp(min=1))
            if lsd_target is not None:
                known = torch.from_numpy(lsd_mask).to(device, torch.float32)
                error = (torch.sigmoid(logits[:, n_aff:]) - torch.from_numpy(lsd_target).to(device)) ** 2
                lsd_loss = (error * known).sum() / known.sum().clamp(min=1)
                lsd_losses.append(lsd_loss.item())
                loss = loss + settings.lsd_weight * lsd_loss
            if settings.malis_weight > 0:
                solid = [i for i, labels in enumerate(patch_labels) if labels is not None]
                if solid:
                    part = malis_loss(torch.sigmoid(logits[solid, :3]), np.stack([patch_labels[i] for i in solid]),
                                      margin, gap_axes=(1, 2) if settings.arch == "aniso" else (0, 1, 2))
                    malis_losses.append(part.item())
                    loss = loss + settings.malis_weight * part
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            done = it
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_step += t2 - t1
            if it % 50 == 0 or it == 1:
                lsd_part = f" (descriptors {np.mean(lsd_losses[-50:]):.4f})" if lsd_losses else ""
                lsd_part += f" (MALIS {np.mean(malis_losses[-50:]):.5f})" if malis_losses else ""
                log(f"iteration {it}/{settings.iterations}: loss {np.mean(losses[-50:]):.4f}{lsd_part} "
                    f"({(time.perf_counter() - t_start) / 60:.1f} min; data {t_data / it * 1e3:.0f} ms, "
                    f"step {t_step / it * 1e3:.0f} ms per iteration)")
            out_of_time = time.perf_counter() - t_start > limit_s
            if val is not None and (it % settings.val_every == 0 or it == settings.iterations or out_of_time):
                validate(it, val)
            if out_of_time:
                log(f"time limit of {settings.max_minutes} min reached after {it} iterations")
                break
    finally:
        batches.close()  # stops the loader's workers, if any

    if val is None:  # no validation: the last weights are the result
        save_model(out / settings.name, net, meta({"provenance": {"status": "checkpoint"}}))
    else:
        net.load_state_dict(torch.load(out / f"{settings.name}.pt", weights_only=True))
        if best is not None and best["iteration"] == 0:
            log(f"no checkpoint validated better than the --init weights ({best['voi']:.3f}): {settings.name} "
                "holds them")
    wall = time.perf_counter() - t_start

    evaluations = []
    for r, l in zip(settings.eval_raw, settings.eval_labels):
        pair = ordered_pair(load_pair(r, l), settings, voxel_size, reordered)
        net.eval()
        scores = score_pair(LoadedModel(net, info, device), pair, settings.thresholds, settings.labels_2d,
                            settings.arch == "aniso")
        chosen = next((s for s in scores if best and s["threshold"] == best["threshold"]), None)
        top = min(scores, key=lambda s: s["voi"])
        evaluations.append({"raw": r, "labels": l, "at_validation_threshold": chosen, "best_threshold": top})
        log(f"  evaluation on {r}: VOI {chosen['voi'] if chosen else float('nan'):.3f} at the validation "
            f"threshold; best over thresholds {top['voi']:.3f} at {top['threshold']}")

    curve = plot_curves(out / f"{settings.name}-loss.png", losses, validation,
                        f"{settings.name}: {settings.arch}, {done} it, batch {settings.batch_size}, "
                        f"patch {tuple(settings.patch)}")
    provenance = {
        "command": settings.command,
        "wall_time_s": round(wall, 1),
        "time_split_s": {"data": round(t_data, 1), "step": round(t_step, 1), "validation": round(t_val, 1)},
        "loader_workers": workers,
        "device": str(device) if device.type != "cpu" else f"cpu ({cpu_name()}, {settings.threads} threads)",
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {"train": [{"raw": r, "labels": l} for r, l in zip(settings.raw, settings.labels)]
                 + [{"raw": r, "labels": l, "labels_per_section": True}
                    for r, l in zip(settings.section_raw, settings.section_labels)],
                 "validation": {"raw": settings.val_raw, "labels": settings.val_labels} if val else None,
                 **({"section_order": reordered} if reordered else {})},
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("command",)},
        "iterations": done,
        "init": None if init_info is None else {
            "model": settings.init, "command": init_info.provenance.get("command"),
            "channels": list(init_info.config.channels),
            "iterations": init_info.provenance.get("iterations"),
            "wall_time_s": init_info.provenance.get("wall_time_s")},
        "stopped_by_time_limit": done < settings.iterations,
        "final_loss": float(np.mean(losses[-50:])),
        "final_lsd_loss": float(np.mean(lsd_losses[-50:])) if lsd_losses else None,
        "final_malis_loss": float(np.mean(malis_losses[-50:])) if malis_losses else None,
        "validation": {"best": best, "history": [{k: v for k, v in e.items() if k != "all"} for e in validation]},
        "evaluation": evaluations,
        "loss_curve": curve.name,
    }
    path = save_model(out / settings.name, net, meta({"provenance": provenance}))
    (out / f"{settings.name}-log.json").write_text(json.dumps({"losses": losses, "lsd_losses": lsd_losses,
                                                               "malis_losses": malis_losses,
                                                               "validation": validation}) + "\n")
    installed = None
    if settings.install:
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        for suffix in (".pt", ".json"):
            shutil.copyfile(path.with_suffix(suffix), WEIGHTS_DIR / f"{settings.name}{suffix}")
        installed = str(WEIGHTS_DIR / f"{settings.name}.pt")
    summary = {
        "name": settings.name,
        "weights": str(path),
        "json": str(path.with_suffix(".json")),
        "loss_curve": str(curve),
        "installed": installed,
        "iterations": done,
        "wall_time_s": round(wall, 1),
        **dict(zip(("first_loss", "final_loss"), loss_ends(losses, 10))),
        "validation": best,
        "evaluation": evaluations,
    }
    return summary


__all__ = ["TrainSettings", "train", "voi_over_thresholds", "score_pair", "AUX_OFFSETS"]

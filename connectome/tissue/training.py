"""Training the tissue network: 2-d patches from every source, masked cross-entropy, best checkpoint kept.

The network reads what the tissue stage feeds it (`network_input`, computed once per whole section:
predict.unit_intensity of levels.section_stats, the exact-zero margins filled as predict.classify fills
them), in training and in validation alike. Patches are drawn from the sources with fixed probabilities
(synthetic, VNC, EPFL), flipped and rotated, with random gain, offset, gamma and noise; now and then a
patch is replaced by a blank section (a constant grey plus a little noise) labelled `defect`, as the
synthetic generator's missing sections are. Every `val_every` iterations the network classifies the
held-out sections of each source; the checkpoint with the best mean balanced set-accuracy (per source,
the mean over its label sets of the fraction of pixels whose predicted class is in the set) is kept.
With `init`, the run continues that model: its network (levels, widths) is the one trained, and its own
weights are validated first (iteration 0) and stay the result unless a checkpoint beats them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from connectome.core.errors import UserError
from connectome.tissue import classes as T
from connectome.tissue.levels import stats_of
from connectome.tissue.loss import allowed_from_bits, balance_weights, masked_cross_entropy
from connectome.tissue.model import (
    WEIGHTS_DIR,
    build_net,
    load_state,
    preset,
    read_info,
    resolve_model_path,
    save_model,
)
from connectome.tissue.predict import fill_margins, no_data, unit_intensity
from connectome.tissue.sources import Sections

MEAN, STD = 0.5, 0.2  # input normalisation: (network_input - MEAN) / STD


@dataclass
class TissueTrainSettings:
    name: str
    out: str
    data_dir: str
    iterations: int = 6000
    batch_size: int = 8
    patch: int = 192
    source_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)  # synthetic, VNC, EPFL
    blank_probability: float = 0.03
    levels: int = 5
    lr: float = 2e-3
    seed: int = 0
    val_every: int = 200
    max_minutes: float | None = None
    threads: int = 1
    init: str | None = None
    install: bool = False
    synthetic_seeds: tuple[int, ...] = field(default_factory=tuple)
    command: str = ""


def network_input(raw: np.ndarray) -> np.ndarray:
    """float32 (Z, Y, X) in [0, 1]: whole sections as predict.classify shows them to the network (each mapped by
    its own levels.section_stats, exact-zero margins filled; the faces are the array's own)."""
    faces = [(0, raw.shape[1] - 1), (0, raw.shape[2] - 1)]
    return np.concatenate([fill_margins(unit_intensity(raw[z:z + 1], stats_of(raw[z:z + 1])),
                                        no_data(raw[z:z + 1], faces)).astype(np.float32)
                           for z in range(raw.shape[0])]).reshape(raw.shape)


def sample_batch(rng: np.random.Generator, sources: list[Sections], inputs: list[np.ndarray], weights, batch: int,
                 patch: int, blank_probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 1, P, P) float32 normalised input and (B, 1, P, P) uint8 target bit sets; `inputs`: network_input
    of each source's raw."""
    xs, ts = [], []
    p = np.asarray(weights, float) / np.sum(weights)
    for _ in range(batch):
        i = rng.choice(len(sources), p=p)
        s, unit = sources[i], inputs[i]
        z = rng.integers(s.raw.shape[0])
        y0, x0 = rng.integers(s.raw.shape[1] - patch + 1), rng.integers(s.raw.shape[2] - patch + 1)
        img = unit[z, y0:y0 + patch, x0:x0 + patch]
        tgt = s.target[z, y0:y0 + patch, x0:x0 + patch]
        k = int(rng.integers(4))
        img, tgt = np.rot90(img, k), np.rot90(tgt, k)
        if rng.random() < 0.5:
            img, tgt = img[:, ::-1], tgt[:, ::-1]
        if rng.random() < blank_probability:
            img = np.full_like(img, rng.uniform(0.0, 1.0))
            tgt = np.full_like(tgt, T.bits(T.DEFECT))
        else:
            img = np.clip(img * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1), 0, 1) ** rng.uniform(0.8, 1.25)
        img = img + rng.normal(0, rng.uniform(0, 0.03), img.shape)
        xs.append((np.clip(img, 0, 1) - MEAN) / STD)
        ts.append(np.ascontiguousarray(tgt))
    x = torch.from_numpy(np.stack(xs).astype(np.float32))[:, None, None]
    return x, torch.from_numpy(np.stack(ts))[:, None]


def evaluate_sections(net, sources: list[Sections], divisor: int, context: int,
                      inputs: list[np.ndarray] | None = None) -> list[dict]:
    """Per source: masked cross-entropy, balanced set-accuracy, and the recall of each label set; the network
    reads network_input of each source (`inputs`, computed here where None), mirrored past the faces."""
    net.eval()
    out = []
    inputs = inputs if inputs is not None else [network_input(s.raw) for s in sources]
    with torch.no_grad():
        for s, unit in zip(sources, inputs):
            losses: list[float] = []
            hit: dict[int, int] = {}
            count: dict[int, int] = {}
            for z in range(s.raw.shape[0]):
                h, w = s.raw.shape[1:]
                pad = [(context, context + (-h) % divisor), (context, context + (-w) % divisor)]
                img = np.pad(unit[z], pad, mode="reflect")  # as the stage mirrors (io.reflected.mirror_indices)
                x = torch.from_numpy((img - MEAN) / STD)[None, None, None]
                logits = net(x)[:, :, 0, context:context + h, context:context + w]
                tgt = torch.from_numpy(s.target[z])[None]
                losses.append(float(masked_cross_entropy(logits, tgt)))
                ok = allowed_from_bits(tgt, logits.shape[1]).gather(1, logits.argmax(1, keepdim=True))[:, 0]
                for v in torch.unique(tgt).tolist():
                    if v == 0:
                        continue
                    sel = tgt == v
                    hit[v] = hit.get(v, 0) + int(ok[sel].sum())
                    count[v] = count.get(v, 0) + int(sel.sum())
            recall = {label_set_name(v): hit[v] / count[v] for v in sorted(count)}
            out.append({"source": s.name, "loss": float(np.mean(losses)),
                        "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall})
    net.train()
    return out


def label_set_name(bitset: int) -> str:
    names = [T.NAMES[c] for c in range(T.N_CLASSES) if bitset >> c & 1]
    return names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"


def train_tissue(settings: TissueTrainSettings, train_sources: list[Sections], val_sources: list[Sections],
                 log: Callable[..., None] = print) -> dict:
    """Train, keep the best checkpoint as OUT/NAME.pt + .json; returns a summary."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    net, settings = _start_network(settings)
    config = net.config
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    os.makedirs(settings.out, exist_ok=True)
    path = os.path.join(settings.out, settings.name)
    divisor, context = config.divisor[1], config.context[1]
    voxel = tuple(float(v) for v in np.median([s.voxel_size for s in train_sources], axis=0))
    t0 = time.perf_counter()
    train_inputs = [network_input(s.raw) for s in train_sources]
    val_inputs = [network_input(s.raw) for s in val_sources]
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    losses: list[float] = []
    history: list[dict] = []
    best: dict | None = None
    it = 0
    if settings.init:  # the starting weights are the result to beat
        best = _validate(net, val_sources, divisor, context, val_inputs, 0, history, t0, log)
        save_model(path, net, _meta(settings, train_sources, val_sources, voxel, best, 0, [], t0))
        _write_history(path, history, losses)
    for it in range(1, settings.iterations + 1):
        progress = max(it / settings.iterations, (time.perf_counter() - t0) / budget if budget else 0.0)
        for g in opt.param_groups:
            g["lr"] = settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        x, t = sample_batch(rng, train_sources, train_inputs, settings.source_weights, settings.batch_size,
                            settings.patch, settings.blank_probability)
        logits = net(x)[:, :, 0]
        loss = masked_cross_entropy(logits, t[:, 0], balance_weights(t[:, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        stop = progress >= 1.0
        if it % settings.val_every == 0 or stop or it == settings.iterations:
            entry = _validate(net, val_sources, divisor, context, val_inputs, it, history, t0, log,
                              f"loss {np.mean(losses[-settings.val_every:]):.4f} ")
            if best is None or entry["score"] > best["score"]:
                best = entry
                meta = _meta(settings, train_sources, val_sources, voxel, best, it, losses, t0)
                save_model(path, net, meta)
                _write_history(path, history, losses)
        if stop:
            break
    _write_history(path, history, losses)
    installed = None
    if settings.install:
        installed = str(WEIGHTS_DIR / f"{settings.name}.pt")
        for ext in (".pt", ".json"):
            shutil.copyfile(path + ext, str(WEIGHTS_DIR / settings.name) + ext)
    return {"name": settings.name, "weights": path + ".pt", "iterations": it, "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-50:])), "validation": best, "installed": installed,
            "wall_time_s": time.perf_counter() - t0}


def _start_network(settings: TissueTrainSettings) -> tuple:
    """(the network trained, the settings with the `init` model's levels where there is one)."""
    if not settings.init:
        return build_net(preset(levels=settings.levels)), settings
    start = read_info(resolve_model_path(settings.init))
    if not start.sections_mapped:
        raise UserError(f"--init {settings.init}: it reads raw / 255, not sections mapped as training maps them "
                        f"(predict.unit_intensity); train from scratch instead")
    net = build_net(start.config)
    load_state(net, start.path)
    return net, replace(settings, levels=len(start.config.kernels))


def _validate(net, val_sources, divisor, context, val_inputs, it, history, t0, log, loss_text="") -> dict:
    """Validate at iteration `it`, append the entry to `history`, log it and return it."""
    val = evaluate_sections(net, val_sources, divisor, context, val_inputs)
    score = float(np.mean([v["balanced_accuracy"] for v in val]))
    history.append({"iteration": it, "score": score, "sources": val, "minutes": (time.perf_counter() - t0) / 60})
    log(f"it {it} {loss_text}validation balanced accuracy {score:.4f} "
        + " ".join(f"[{v['source']}: {v['balanced_accuracy']:.3f}]" for v in val))
    return history[-1]


def _meta(settings, train_sources, val_sources, voxel, best, it, losses, t0) -> dict:
    return {
        "name": settings.name,
        "voxel_size": list(voxel),
        "normalisation": {"mean": MEAN, "std": STD, "formula": "(unit - mean) / std",
                          "unit": "predict.unit_intensity: each whole section's levels.section_stats mapped to "
                                  "predict.TARGET (gain capped), / 255; exact-zero margins filled"},
        "provenance": {
            "command": settings.command,
            "settings": asdict(settings),
            "training_sources": [{"name": s.name, "sections": int(s.raw.shape[0]), "shape": list(s.raw.shape[1:]),
                                  "voxel_size": list(s.voxel_size)} for s in train_sources],
            "validation_sources": [s.name for s in val_sources],
            "iteration": it,
            "training_minutes": (time.perf_counter() - t0) / 60,
            "loss_at_checkpoint": float(np.mean(losses[-50:])) if losses else None,  # None: the --init weights
            "validation": best,
            "torch": torch.__version__,
        },
    }


def _write_history(path: str, history: list[dict], losses: list[float]) -> None:
    with open(path + "-history.json", "w") as f:
        json.dump({"validation": history, "loss": losses}, f)

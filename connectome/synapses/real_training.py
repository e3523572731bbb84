"""Training the cleft network on a real volume that has a cleft (synapse) mask but no partner
directions: the direction loss is masked off everywhere (`training.cleft_loss`), the model is saved
with `partners: false`. The best checkpoint, its threshold and minimum cleft size are chosen by
synapse detection F1 on a tuning split that training never sees; the test split is left alone.

    python -m connectome.synapses.real_training --data vnc --minutes 34 --name cleft-sstem

`vnc` (-> `cleft-sstem`): Drosophila larval VNC ssTEM (`drosophila_vnc_sstem/vnc_stack1.npz`, 50 x 4.6 x
4.6 nm): train on sections 0-11, tune on 12-14, test (benchmarks/synapses.py --real vnc) on 15-19;
synapses are the 3-d objects of `derived_synapses3d`.
`epfl` (-> `cleft-fib`): EPFL CA1 FIB-SEM slices (`epfl_ca1_markup/epfl_markup.npz`, 5 nm, not
neighbours: each slice is a volume of its own, the network never mixes sections): train on 24 of the
27 training slices, tune on slices 20-22, test on the 5 test slices; synapses are the 2-d components
of each slice's PSD mask.
    python -m connectome.synapses.real_training --data epfl --minutes 40 --name cleft-fib --seed 1 --aux

`--aux`: the network also learns the set's other masks (`RealSet.aux`) as extra outputs, dropped from the
saved model (the shipped `cleft-fib` was trained so).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from connectome.core.errors import UserError
from connectome.metrics.synapses import synapse_scores
from connectome.models.unet import UNet, UNetConfig
from connectome.synapses import model as M
from connectome.synapses.detect import cleft_table, predict_volume, synapses_in_memory
from connectome.synapses.training import cleft_loss, patch_window

# 4 in-plane downsamplings: 79 voxels (360 nm at 4.6 nm) of in-plane context on each side; `CONFIG_2D`
# never mixes sections (for sets of separate slices)
CONFIG = UNetConfig(base_channels=8, channel_growth=2.0, max_channels=64, downsample=((1, 2, 2),) * 4,
                    kernels=((1, 3, 3),) * 4 + ((3, 3, 3),), encoder_convs=(1, 2, 2, 2, 2),
                    decoder_convs=(1, 1, 1, 1), norm="none")
CONFIG_2D = UNetConfig(base_channels=8, channel_growth=2.0, max_channels=64, downsample=((1, 2, 2),) * 4,
                       kernels=((1, 3, 3),) * 5, encoder_convs=(1, 2, 2, 2, 2), decoder_convs=(1, 1, 1, 1),
                       norm="none")
TOLERANCE_NM = 200.0
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_VOXELS = (25, 50, 100, 200, 400, 800, 1600, 3200)
AUX_WEIGHT = 0.5  # the auxiliary masks' loss against the cleft loss (`--aux`)
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class Split:
    """Sections `sections` of the arrays `raw` and `mask` (and `objects`: synapse ids; None: the 2-d
    connected components of the mask in each section)."""

    raw: str
    mask: str
    sections: tuple[int, ...]
    objects: str | None = None


@dataclass(frozen=True)
class RealSet:
    """A real volume (or a set of separate slices) with a cleft mask and its train / tune / test splits."""

    path: str  # relative to the data root
    voxel_size: tuple[float, float, float]
    train: Split
    tune: Split
    test: Split
    config: UNetConfig = CONFIG
    separate_sections: bool = False  # the sections are not neighbours: every one is a volume of its own
    patch: tuple[int, int, int] = (5, 192, 192)
    margin: tuple[int, int, int] = (1, 24, 24)
    aux: tuple[str, ...] = ()  # other masks of the training split, extra training outputs with `--aux`


DATASETS = {
    "vnc": RealSet("drosophila_vnc_sstem/vnc_stack1.npz", (50.0, 4.6, 4.6),
                   Split("raw", "synapses", tuple(range(0, 12)), "derived_synapses3d"),
                   Split("raw", "synapses", (12, 13, 14), "derived_synapses3d"),
                   Split("raw", "synapses", (15, 16, 17, 18, 19), "derived_synapses3d"),
                   aux=("membranes", "mitochondria")),
    # 27 + 5 separate slices; tuning on three slices at least 14 slices (70 nm) from every training slice
    "epfl": RealSet("epfl_ca1_markup/epfl_markup.npz", (5.0, 5.0, 5.0),
                    Split("train_raw", "train_PSD", (*range(0, 20), 23, 24, 25, 26)),
                    Split("train_raw", "train_PSD", (20, 21, 22)),
                    Split("test_raw", "test_PSD", (0, 1, 2, 3, 4)),
                    CONFIG_2D, separate_sections=True, patch=(1, 256, 256), margin=(0, 24, 24),
                    aux=("train_vesicles", "train_mitochondrion", "train_membranes")),
}


def load(data: str, split: str, root: str | os.PathLike = DATA_ROOT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw uint8, cleft mask bool, synapse ids) of one split ("train", "tune", "test") of a set."""
    ds = DATASETS[data]
    sp: Split = getattr(ds, split)
    idx = list(sp.sections)
    with np.load(Path(root) / ds.path) as d:
        raw, mask = d[sp.raw][idx], d[sp.mask][idx].astype(bool)
        if sp.objects is not None:
            return raw, mask, d[sp.objects][idx]
    objects = np.zeros(mask.shape, np.uint32)
    for z in range(len(mask)):  # 2-d components, numbered on from the previous sections'
        lab = cc3d.connected_components(mask[z], connectivity=8, out_dtype=np.uint32)
        objects[z] = np.where(lab > 0, lab + objects.max(), 0)
    return raw, mask, objects


def load_aux(data: str, root: str | os.PathLike = DATA_ROOT) -> np.ndarray:
    """The set's auxiliary masks on its training sections, (len(aux), z, y, x) bool."""
    ds = DATASETS[data]
    idx = list(ds.train.sections)
    if not ds.aux:
        raise UserError(f"--aux: the {data} set names no auxiliary masks")
    with np.load(Path(root) / ds.path) as d:
        return np.stack([d[k][idx].astype(bool) for k in ds.aux])


def pieces(data: str, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """The arrays as the volumes they are: the whole stack, or each separate section on its own."""
    if not DATASETS[data].separate_sections:
        return [arrays]
    return [tuple(a[z:z + 1] for a in arrays) for z in range(len(arrays[0]))]


def synapse_points(objects: np.ndarray) -> np.ndarray:
    """Centroid (voxels, z y x) of each synapse id in `objects` (0 = none), ordered by id."""
    flat = objects.ravel()
    ids, inv = np.unique(flat[flat != 0], return_inverse=True)
    where = np.nonzero(objects)
    n = np.bincount(inv, minlength=len(ids))
    return np.stack([np.bincount(inv, weights=w, minlength=len(ids)) / n for w in where], 1) \
        if len(ids) else np.zeros((0, 3))


def detect(prob: np.ndarray, info: M.CleftModelInfo, voxel_size, threshold: float | None = None,
           min_voxels: int | None = None, table: dict | None = None) -> np.ndarray:
    """Synapse locations (voxels) from a uint8 cleft probability, as the cleft_fragments and synapses
    stages find them with one segment covering everything (no partners: one synapse per cleft object
    of at least `min_voxels`)."""
    seg = np.ones(prob.shape, np.uint32)
    vec = np.full((3, *prob.shape), 127, np.uint8)
    rows = synapses_in_memory(prob, vec, seg, info, voxel_size, threshold, min_voxels, table=table)
    return np.stack([rows["z"], rows["y"], rows["x"]], 1)


def tune_detection(parts: list[tuple[np.ndarray, np.ndarray]], info: M.CleftModelInfo, voxel_size) -> dict:
    """The threshold and minimum cleft size with the best detection F1 over `parts` ((uint8 cleft
    probability, synapse ids) per volume, counts pooled; ties: the first in grid order)."""
    gts = [synapse_points(obj) for _, obj in parts]
    best: dict = {}
    for threshold in THRESHOLDS:
        tables = [cleft_table(prob, np.zeros((3, *prob.shape), np.uint8), np.ones(prob.shape, np.uint32), info,
                              voxel_size, threshold) for prob, _ in parts]
        for min_voxels in MIN_VOXELS:
            tp = fp = fn = 0
            for (prob, _), gt, table in zip(parts, gts, tables):
                s = synapse_scores(detect(prob, info, voxel_size, threshold, min_voxels, table), gt, TOLERANCE_NM,
                                   voxel_size)
                tp, fp, fn = tp + s.true_positives, fp + s.false_positives, fn + s.false_negatives
            f1 = 2 * tp / max(2 * tp + fp + fn, 1)
            if not best or f1 > best["f1"]:
                best = {"threshold": threshold, "min_voxels": min_voxels, "f1": f1,
                        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "tp": tp, "fp": fp,
                        "fn": fn, "synapses": sum(len(g) for g in gts)}
    return best


def real_patch(raw: np.ndarray, cleft: np.ndarray, size, rng, near_cleft: bool, aux: np.ndarray | None = None):
    """A training patch (raw float32, cleft bool) with in-plane flips and transposition, a z flip and
    per-section contrast changes (anisotropic voxels: z is never exchanged with y or x); with `aux`
    ((k, z, y, x) masks), also their patch (k, *size), moved with it."""
    sl = patch_window(cleft, size, rng, near_cleft)
    r, c = raw[sl].astype(np.float32), cleft[sl]
    a = aux[(slice(None), *sl)] if aux is not None else np.zeros((0, *size), bool)
    for axis in range(3):
        if rng.random() < 0.5:
            r, c, a = np.flip(r, axis), np.flip(c, axis), np.flip(a, axis + 1)
    if rng.random() < 0.5 and size[1] == size[2]:
        r, c, a = r.transpose(0, 2, 1), c.transpose(0, 2, 1), a.transpose(0, 1, 3, 2)
    scale = rng.uniform(0.8, 1.2, (len(r), 1, 1)) * rng.uniform(0.9, 1.1)
    r = r * scale + rng.uniform(-20, 20, (len(r), 1, 1))
    r = np.clip(r, 0, 255).astype(np.float32)
    return (r, c) if aux is None else (r, c, a)


def aux_loss(y: torch.Tensor, aux: torch.Tensor, margin) -> torch.Tensor:
    """Class-balanced cross-entropy of the auxiliary outputs `y` (batch, k, z, y, x) against their masks,
    inside `margin` voxels of the patch faces, averaged over the k masks (0 for none)."""
    if aux.shape[1] == 0:
        return y.sum() * 0.0
    inner = (slice(None), slice(None), *(slice(m, s - m) for m, s in zip(margin, aux.shape[2:])))
    logits, target = y[inner], aux[inner]
    pos = target.mean(dim=(0, 2, 3, 4), keepdim=True).clamp(min=1e-3, max=1 - 1e-3)
    weight = torch.where(target > 0, 0.5 / pos, 0.5 / (1 - pos))
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


def with_aux_outputs(net: UNet, k: int) -> UNet:
    """`net` with `k` more outputs after the cleft model's four (new, randomly initialised channels)."""
    head = nn.Conv3d(net.head.in_channels, M.OUTPUTS + k, 1)
    with torch.no_grad():
        head.weight[:M.OUTPUTS].copy_(net.head.weight)
        head.bias[:M.OUTPUTS].copy_(net.head.bias)  # type: ignore[index, union-attr, arg-type]
    net.head = head
    return net


def cleft_head_only(net: UNet) -> UNet:
    """A copy of a network trained with auxiliary outputs whose head keeps the cleft model's four."""
    if net.head.out_channels == M.OUTPUTS:
        return net
    out = copy.deepcopy(net)
    out.keep_outputs(M.OUTPUTS)
    return out


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, raw: np.ndarray, cleft: np.ndarray, patch,
               margin, batch: int, rng, mean: float, std: float, aux: np.ndarray | None = None,
               aux_weight: float = AUX_WEIGHT) -> float:
    """One optimiser step on `batch` patches (70 % centred near a cleft); returns the cleft loss. No
    partner directions are known: the direction loss is zero and its outputs get no gradient. With
    `aux` ((k, z, y, x) masks), the network's outputs after the first four learn them too, weighted
    by `aux_weight`."""
    net.train()
    items = [real_patch(raw, cleft, patch, rng, rng.random() < 0.7, aux) for _ in range(batch)]
    x = torch.from_numpy(np.stack([i[0] for i in items])[:, None].copy())
    x = (x / 255.0 - mean) / std
    c = torch.from_numpy(np.stack([i[1] for i in items]).astype(np.float32))
    y = net(x)
    loss_c, loss_v = cleft_loss(y[:, :M.OUTPUTS], c, torch.zeros((batch, 3, *patch)), torch.zeros_like(c), margin)
    loss = loss_c + loss_v
    if aux is not None:
        a = torch.from_numpy(np.stack([i[2] for i in items]).astype(np.float32))
        loss = loss + aux_weight * aux_loss(y[:, M.OUTPUTS:], a, tuple(margin))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss_c.item())


def initial_net(data: str, init: str | None, mean: float, std: float) -> tuple[UNet, float, float]:
    """A new network of the set's architecture and the given normalisation, or the weights and the
    normalisation of the cleft model `init` (refused in one line if its architecture is another)."""
    ds = DATASETS[data]
    net = M.cleft_net(ds.config)
    if not init:
        return net, mean, std
    start = M.read_info(init)
    if start.config != ds.config or tuple(start.voxel_size) != tuple(ds.voxel_size):
        raise UserError(f"--init {init}: its architecture or voxel size {list(start.voxel_size)} is not the {data} "
                        f"set's cleft network's ({list(ds.voxel_size)} nm)")
    net.load_state_dict({k: v.float() for k, v in torch.load(start.path, map_location="cpu",
                                                               weights_only=True).items()})
    return net, start.mean, start.std


def train(name: str, minutes: float, data: str = "vnc", seed: int = 0, batch: int = 3, lr: float = 2e-3,
          threads: int = 1, validate_every_s: float = 150.0, validate_from: float = 0.4,
          root: str | os.PathLike = DATA_ROOT, out_dir: str | os.PathLike = M.WEIGHTS_DIR, init: str | None = None,
          aux: bool = False, log=print) -> dict:
    """Train for `minutes` on the set's training sections; from `validate_from` of the time on, after
    every `validate_every_s` seconds of training and at the end, score detection on the tuning sections
    and keep the best weights as `out_dir/name` (not earlier: a handful of tuning synapses would let a
    lucky, barely trained checkpoint win). With `init` (a cleft model of this set's architecture), start
    from its weights and normalisation. With `aux`, the network also learns the set's other masks
    (`RealSet.aux`: membranes, mitochondria, vesicles) as extra outputs, which the saved model drops."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ds = DATASETS[data]
    raw_t, mask_t, _ = load(data, "train", root)
    raw_v, _, obj_v = load(data, "tune", root)
    net, mean, std = initial_net(data, init, float(raw_t.mean() / 255.0), float(raw_t.std() / 255.0))
    aux_t = load_aux(data, root) if aux else None
    if aux_t is not None:
        net = with_aux_outputs(net, len(aux_t))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    info = M.CleftModelInfo(name, ds.config, ds.voxel_size, mean, std, 80.0, 0.5, 1, partners=False)
    base = {"voxel_size": list(ds.voxel_size), "normalisation": {"mean": mean, "std": std}, "vector_nm": 80.0,
            "partners": False}
    provenance = {"data": f"{ds.path}: train {ds.train.raw}/{ds.train.mask} sections {list(ds.train.sections)}; "
                          f"tuning (checkpoint, threshold, min_voxels) sections {list(ds.tune.sections)}; test "
                          f"{ds.test.raw} sections {list(ds.test.sections)} never used here",
                  "patch": list(ds.patch), "batch": batch, "lr": lr, "threads": threads,
                  "tolerance_nm": TOLERANCE_NM, "validated_from": f"{validate_from:.0%} of the training time",
                  "grid": {"thresholds": THRESHOLDS, "min_voxels": MIN_VOXELS},
                  "command": f"python -m connectome.synapses.real_training --data {data} --minutes {minutes:g} "
                             f"--name {name} --seed {seed} --threads {threads} --lr {lr:g}"
                             + (f" --init {init}" if init else "") + (" --aux" if aux else ""),
                  **({"aux": {"masks": list(ds.aux), "weight": AUX_WEIGHT}} if aux else {}),
                  **({"init": {"model": init, "provenance": M.read_info(init).provenance}} if init else {})}
    log(f"training {name} on {ds.path} sections {ds.train.sections}: {int(mask_t.sum())} cleft voxels; "
        f"tuning on {ds.tune.sections}: {len(synapse_points(obj_v))} synapses")
    # (raw, mask, aux masks stacked or None) per training volume, stacked once here, not per step
    train_parts = [(r, m, np.stack(a) if a else None)
                   for r, m, *a in pieces(data, raw_t, mask_t, *(aux_t if aux_t is not None else ()))]
    best: dict | None = None
    t0 = time.perf_counter()
    spent = 0.0  # training seconds, without validation
    next_val = max(validate_every_s, validate_from * minutes * 60)
    it = 0
    losses: list[float] = []
    while spent < minutes * 60:
        t_it = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, spent / (minutes * 60)))))
        r_p, m_p, a_p = train_parts[rng.integers(len(train_parts))] if len(train_parts) > 1 else train_parts[0]
        losses.append(train_step(net, opt, r_p, m_p, ds.patch, ds.margin, batch, rng, mean, std, a_p))
        it += 1
        spent += time.perf_counter() - t_it
        if it % 100 == 0:
            log(f"it {it} {spent:.0f} s  cleft loss {np.mean(losses[-100:]):.4f}")
        if spent >= next_val or spent >= minutes * 60:
            next_val += validate_every_s
            net.eval()
            model = M.LoadedCleftModel(cleft_head_only(net), info, torch.device("cpu"))
            parts = [(predict_volume(model, r)[0], o) for r, o in pieces(data, raw_v, obj_v)]
            r = tune_detection(parts, info, ds.voxel_size)
            r["voxel_f1"] = _voxel_f1(np.concatenate([p for p, _ in parts]) >= 128, obj_v > 0)
            r["iterations"] = it
            log(f"validation (tuning sections) at it {it}: {json.dumps(r)}")
            if best is None or (r["f1"], r["voxel_f1"]) > (best["f1"], best["voxel_f1"]):
                best = r
                meta = {**base, "threshold": r["threshold"], "min_voxels": r["min_voxels"],
                        "provenance": {**provenance, "iterations": it, "train_seconds": round(spent, 1),
                                       "tuning": r}}
                M.save(Path(out_dir) / name, cleft_head_only(net), meta)
                log(f"saved {Path(out_dir) / name}.pt (best so far)")
    log(f"done: {it} iterations, {spent:.0f} s training, {time.perf_counter() - t0:.0f} s in all; best {best}")
    return best or {}


def retune(name: str, data: str = "vnc", root: str | os.PathLike = DATA_ROOT, log=print) -> dict:
    """Pick the threshold and minimum cleft size of the saved model `name` again on the tuning sections
    (the grid of this module) and record them in its .json."""
    model = M.load(name, "cpu")
    info = model.info
    raw_v, _, obj_v = load(data, "tune", root)
    parts = [(predict_volume(model, r)[0], o) for r, o in pieces(data, raw_v, obj_v)]
    r = tune_detection(parts, info, info.voxel_size)
    log(f"retuned on the tuning sections: {json.dumps(r)}")
    meta = json.loads(Path(info.path).with_suffix(".json").read_text())
    meta["threshold"], meta["min_voxels"] = r["threshold"], r["min_voxels"]
    meta["provenance"] = {**meta["provenance"], "tuning": {**meta["provenance"].get("tuning", {}), **r},
                          "grid": {"thresholds": THRESHOLDS, "min_voxels": MIN_VOXELS}}
    Path(info.path).with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    M.read_info.cache_clear()
    return r


def _voxel_f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float(np.count_nonzero(pred & true))
    return 2 * tp / max(float(np.count_nonzero(pred) + np.count_nonzero(true)), 1.0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="vnc", choices=sorted(DATASETS))
    p.add_argument("--name", default="cleft-sstem")
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--out-dir", default=str(M.WEIGHTS_DIR))
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to a tenth)")
    p.add_argument("--init", default=None, help="start from this cleft model's weights (same set)")
    p.add_argument("--aux", action="store_true", help="also learn the set's other masks (membranes, mitochondria; "
                   "vesicles for epfl) as extra outputs, dropped from the saved model")
    p.add_argument("--tune-only", action="store_true", help="only pick the threshold and minimum size of --name")
    a = p.parse_args(argv)
    if a.tune_only:
        retune(a.name, a.data, a.data_root)
        return
    train(a.name, a.minutes, a.data, a.seed, lr=a.lr, threads=a.threads, root=a.data_root, out_dir=a.out_dir,
          init=a.init, aux=a.aux)


if __name__ == "__main__":
    main()

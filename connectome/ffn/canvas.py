"""Flood-filling inference: grow one object at a time from seeds, moving the FOV while the object's
probability on a face of the FOV passes the move threshold; many objects share one forward batch.

Determinism: seeds, moves (highest score first, ties by order queued) and acceptance (objects in the
order they finish) depend only on the input and the settings, so one input gives one output.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from connectome.core.geometry import vec3
from connectome.ffn.model import FFN, LOGIT_INIT, LOGIT_SEED, FFNInfo
from connectome.ffn.seeds import seed_order

MASK_LOGIT = -8.0  # POM of voxels that belong to an accepted object
LOGIT_LIMIT = 16.0  # stored POM logits are clipped to +-this (probabilities within 1e-7 of 0 and 1)


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@dataclass
class CanvasSettings:
    """Inference thresholds and limits."""

    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_size: int = 100
    batch: int = 8
    max_steps: int = 2000  # FOV evaluations per object
    reverse: bool = False  # seeds in reverse order (for consensus)


@dataclass
class _Object:
    """One object being filled: its POM (over the padded canvas), queued moves and touched box."""

    seed: tuple[int, int, int]
    pom: np.ndarray
    queue: list = field(default_factory=list)
    visited: set = field(default_factory=set)
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    steps: int = 0


class Canvas:
    """Segment one volume (uint8) with a flood-filling network: `segment()` -> int32 labels 1..n."""

    def __init__(self, net: FFN, info: FFNInfo, raw: np.ndarray, settings: CanvasSettings | None = None,
                 device: str | torch.device = "cpu"):
        self.net = net
        self.info = info
        self.settings = settings or CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size)
        self.device = torch.device(device)
        self.config = net.config
        self.radius = np.array(self.config.radius)
        self.shape = raw.shape
        pad = [(r, r) for r in self.radius]
        self.image = np.pad(info.normalise(raw), pad, mode="reflect" if min(raw.shape) > max(self.radius) else "edge")
        self.seg = np.zeros(self.image.shape, np.int32)  # padded; the pad stays 0
        self.inside = np.zeros(self.image.shape, bool)
        self.inside[tuple(slice(r, r + s) for r, s in zip(self.radius, raw.shape))] = True
        self.raw = raw
        self.stats = {"objects": 0, "rejected": 0, "steps": 0, "batches": 0}
        self._free: list[np.ndarray] = []
        self._counter = itertools.count()

    def _fov(self, centre) -> tuple[slice, slice, slice]:
        z, y, x = (slice(c - r, c + r + 1) for c, r in zip(centre, self.radius))
        return z, y, x

    def _new_pom(self) -> np.ndarray:
        return self._free.pop() if self._free else np.full(self.image.shape, LOGIT_INIT, np.float32)

    def _start(self, seed) -> _Object:
        c = vec3([int(v) + int(r) for v, r in zip(seed, self.radius)])
        obj = _Object(c, self._new_pom())
        obj.pom[c] = LOGIT_SEED
        heapq.heappush(obj.queue, (-1.0, next(self._counter), c))
        obj.lo, obj.hi = np.array(c), np.array(c) + 1
        return obj

    def _next_centre(self, obj: _Object):
        while obj.queue and obj.steps < self.settings.max_steps:
            _, _, c = heapq.heappop(obj.queue)
            if c in obj.visited or self.seg[c] != 0 or not self.inside[c]:
                continue
            obj.visited.add(c)
            return c
        return None

    def _forward(self, images: list[np.ndarray], poms: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.stack(images)[:, None]).to(self.device)
            p = torch.from_numpy(np.stack(poms)[:, None]).to(self.device)
            return self.net(x, p)[:, 0].cpu().numpy()

    def _moves(self, obj: _Object, centre, prob: np.ndarray) -> None:
        """Queue the FOV moves whose face of the FOV has an object probability >= the move threshold."""
        r = self.radius
        for axis, delta in enumerate(self.config.deltas):
            for sign in (-1, 1):
                index = [slice(None)] * 3
                index[axis] = r[axis] + sign * delta
                score = float(prob[tuple(index)].max())
                if score >= self.settings.move_threshold:
                    c = list(centre)
                    c[axis] += sign * delta
                    heapq.heappush(obj.queue, (-score, next(self._counter), tuple(c)))

    def _finish(self, obj: _Object) -> None:
        """Accept the object's voxels above the segment threshold (connected to its seed, unclaimed, large enough)."""
        lo, hi = obj.lo, obj.hi
        if lo is None or hi is None:
            raise RuntimeError("object finished before it was started")
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask = (obj.pom[box] >= logit(self.settings.segment_threshold)) & (self.seg[box] == 0) & self.inside[box]
        seed = tuple(s - a for s, a in zip(obj.seed, lo))
        accepted = False
        if mask[seed]:
            comps, _ = ndimage.label(mask)
            mask = comps == comps[seed]
            if int(mask.sum()) >= self.settings.min_size:
                self.stats["objects"] += 1
                self.seg[box][mask] = self.stats["objects"]
                accepted = True
        if not accepted:
            self.stats["rejected"] += 1
        obj.pom[box] = LOGIT_INIT
        self._free.append(obj.pom)

    def segment(self, seeds: np.ndarray | None = None) -> np.ndarray:
        """Fill objects from `seeds` (default: distance-transform maxima, then a grid); int32 labels."""
        if seeds is None:
            seeds = seed_order(self.raw, self.info.voxel_size, self.config.deltas)
        if self.settings.reverse:
            seeds = seeds[::-1]
        pending = iter(seeds.tolist())
        active: list[_Object] = []
        exhausted = False
        thr_seed = logit(0.5)
        while True:
            while len(active) < self.settings.batch and not exhausted:
                seed = next(pending, None)
                if seed is None:
                    exhausted = True
                    break
                c = tuple(int(v) + int(r) for v, r in zip(seed, self.radius))
                if self.seg[c] != 0 or any(o.pom[c] >= thr_seed for o in active):
                    continue
                active.append(self._start(seed))
            if not active:
                break
            batch, centres = [], []
            for obj in list(active):
                c = self._next_centre(obj)
                if c is None:
                    active.remove(obj)
                    self._finish(obj)
                    continue
                batch.append(obj)
                centres.append(c)
            if not batch:
                continue
            images, poms = [], []
            for obj, c in zip(batch, centres):
                fov = self._fov(c)
                images.append(self.image[fov])
                poms.append(obj.pom[fov])
            out = self._forward(images, poms)
            self.stats["batches"] += 1
            for obj, c, logits in zip(batch, centres, out):
                fov = self._fov(c)
                np.clip(logits, -LOGIT_LIMIT, LOGIT_LIMIT, out=logits)
                logits[self.seg[fov] != 0] = MASK_LOGIT
                obj.pom[fov] = logits
                obj.steps += 1
                self.stats["steps"] += 1
                if obj.lo is None or obj.hi is None:
                    raise RuntimeError("object stepped before it was started")
                obj.lo = np.minimum(obj.lo, [s.start for s in fov])
                obj.hi = np.maximum(obj.hi, [s.stop for s in fov])
                if obj.steps == 1 and logits[tuple(self.radius)] < thr_seed:
                    obj.queue.clear()  # the network does not keep the seed: reject early
                    continue
                self._moves(obj, c, 1.0 / (1.0 + np.exp(-logits)))
        return self.seg[tuple(slice(r, r + s) for r, s in zip(self.radius, self.shape))].copy()


def fill_unsegmented(labels: np.ndarray) -> np.ndarray:
    """Give each unsegmented voxel (0) the label of its nearest segmented voxel."""
    if labels.all() or not labels.any():
        return labels
    idx = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


def segment_volume(net: FFN, info: FFNInfo, raw: np.ndarray, settings: CanvasSettings | None = None,
                   device="cpu", fill: bool = True) -> tuple[np.ndarray, dict]:
    """Labels (int32; 0 = unsegmented unless `fill`) and statistics of one FFN pass over `raw`."""
    canvas = Canvas(net, info, raw, settings, device)
    labels = canvas.segment()
    return (fill_unsegmented(labels) if fill else labels), canvas.stats

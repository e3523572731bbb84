"""Flood-filling inference: grow objects from seeds, moving the FOV while the object's probability on
a face of the FOV passes the move threshold; many independent objects share one forward batch.

Independence rule (what makes batching safe): every active object claims the voxels where its
probability is >= 0.5 (`claim`, by start ticket). When a step makes two active objects claim a common
voxel, the later-started one is dropped (its POM cleared) and its seed waits until the earlier one
has finished, then starts again if it is still unsegmented; a seed within one FOV of a claimed voxel
waits the same way before it starts. So objects filled together never touch, and each object sees
the accepted objects that were there before it, as one at a time would.

Moves ("connected", the default): a FOV step may mark blobs that are not joined to the object, and only the part
joined to the seed is accepted at the end. Each object keeps its reach (`reach`: the parts, at the segment threshold
and 6-connected inside a FOV, that hold a voxel it reached before, starting from the seed), and the FOV moves only
through face voxels in its reach; with "face" (the reference's rule) it moves through any face voxel at the move
threshold and can walk, for thousands of steps, through blobs it never keeps.

Step budget: a network that floods through boundaries, or objects rejected after covering the whole
canvas, make the steps grow as seeds times volume; `step_budget` bounds a canvas's steps. Once it is
spent no new object starts: `stats["over_budget"]` counts the seeds that would have started, and the
voxels no object reached stay unsegmented.

Determinism: seeds, moves (highest score first, ties by order queued), collisions (by start ticket)
and acceptance (objects in the order they finish) depend only on the input and the settings.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

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
    batch: int = 1  # objects per forward batch: 1 on CPU (batching adds work there, see benchmarks/ffn_speed.py)
    max_steps: int = 2000  # FOV evaluations per object
    reverse: bool = False  # seeds in reverse order (for consensus)
    precision: str = "float32"  # the network's arithmetic: float32 or bfloat16 (the POM stays float32)
    # once the seed's own probability falls below the move threshold: "stop" moving (what is filled is accepted as
    # any object's), "reject" (stop and discard the object) or "continue" (the behaviour before the option)
    weak_seed: str = "stop"
    seed_margin: int = 1  # a seed with an accepted object's voxel within this many voxels (each axis) does not start
    # FOV evaluations of the whole canvas, as a multiple of the FOV positions that tile it (its voxels over the
    # movement step's box); once spent, no new object starts (those filling finish). 0: no limit
    step_budget: float = 20.0
    # where the FOV moves: "connected" (only through face voxels joined, at the segment threshold inside the FOV, to
    # what the object reached from its seed before) or "face" (any face voxel at the move threshold: the reference's
    # rule, and the behaviour before the option, which walks through blobs the object never keeps)
    moves: str = "connected"


@dataclass(eq=False)
class _Object:
    """One object being filled: its start ticket, seed (index, padded position), POM, queued moves, box."""

    ticket: int
    index: int
    seed: tuple[int, int, int]
    pom: np.ndarray
    queue: list = field(default_factory=list)
    visited: set = field(default_factory=set)
    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)
    steps: int = 0
    weak: bool = False  # its seed's probability fell below the move threshold

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


class Canvas:
    """Segment one volume (uint8) with a flood-filling network: `segment()` -> int32 labels 1..n."""

    def __init__(self, net: FFN, info: FFNInfo, raw: np.ndarray, settings: CanvasSettings | None = None,
                 device: str | torch.device = "cpu", origin=(0, 0, 0), mask: np.ndarray | None = None):
        """`mask` (raw's shape, True = excluded): no seed starts there, no object takes or moves through it."""
        self.net = net
        self.origin = tuple(int(o) for o in origin)  # global position of raw[0, 0, 0] (anchors the seed grid)
        self.info = info
        self.settings = settings or CanvasSettings(info.move_threshold, info.segment_threshold, info.min_size)
        self.device = torch.device(device)
        self.config = net.config
        self.radius = tuple(int(r) for r in self.config.radius)
        self.shape = raw.shape
        pad = [(r, r) for r in self.radius]
        self.image = np.pad(info.normalise(raw), pad, mode="reflect" if min(raw.shape) > max(self.radius) else "edge")
        self.seg = np.zeros(self.image.shape, np.int32)  # padded; the pad stays 0
        self.claim = np.zeros(self.image.shape, np.int32)  # ticket of the active object with POM >= 0.5; 0 none
        # ticket of the active object whose seed reaches the voxel (moves "connected"); None: not kept
        self.reach = np.zeros(self.image.shape, np.int32) if self.settings.moves == "connected" else None
        self.inside = np.zeros(self.image.shape, bool)
        self.inside[self._interior()] = True
        self.excluded: np.ndarray | None = None
        if mask is not None and mask.any():
            self.excluded = np.zeros(self.image.shape, bool)
            self.excluded[self._interior()] = mask
            self.inside &= ~self.excluded
        self.raw = raw
        self.stats = {"objects": 0, "rejected": 0, "restarts": 0, "steps": 0, "batches": 0, "fovs": 0,
                      "over_budget": 0}
        self.budget = budget_steps(self.settings.step_budget, raw.shape, self.config.deltas)
        self._free: list[np.ndarray] = []
        self._counter = itertools.count()
        self._tickets = itertools.count(1)
        self._move_logit = logit(self.settings.move_threshold)
        self._segment_logit = logit(self.settings.segment_threshold)
        self._input = torch.zeros((self.settings.batch, 2, *self.config.fov), dtype=torch.float32)  # reused
        if self.settings.precision not in ("float32", "bfloat16"):
            raise ValueError(f"CanvasSettings.precision must be 'float32' or 'bfloat16' (resolve 'auto' with "
                             f"connectome.models.inference.resolve_precision), got {self.settings.precision!r}")
        self._dtype = {"float32": None, "bfloat16": torch.bfloat16}[self.settings.precision]
        if self.settings.moves not in ("connected", "face"):
            raise ValueError(f"CanvasSettings.moves must be 'connected' or 'face', got {self.settings.moves!r}")
        self._faces = self._face_index()

    def _interior(self) -> tuple[slice, slice, slice]:
        return tuple(slice(r, r + s) for r, s in zip(self.radius, self.shape))  # type: ignore[return-value]

    def _face_index(self) -> list[tuple[int, int, tuple]]:
        """(axis, signed step, index of the FOV face) for the six moves."""
        out = []
        for axis, delta in enumerate(self.config.deltas):
            for sign in (-1, 1):
                index: list = [slice(None)] * 3
                index[axis] = self.radius[axis] + sign * delta
                out.append((axis, sign * delta, tuple(index)))
        return out

    def _fov(self, centre) -> tuple[slice, slice, slice]:
        return tuple(slice(c - r, c + r + 1) for c, r in zip(centre, self.radius))  # type: ignore[return-value]

    def _new_pom(self) -> np.ndarray:
        return self._free.pop() if self._free else np.full(self.image.shape, LOGIT_INIT, np.float32)

    def _start(self, index: int, centre: tuple[int, int, int]) -> _Object:
        obj = _Object(next(self._tickets), index, centre, self._new_pom())
        obj.pom[centre] = LOGIT_SEED
        self.claim[centre] = obj.ticket
        if self.reach is not None:
            self.reach[centre] = obj.ticket
        heapq.heappush(obj.queue, (-1.0, next(self._counter), centre))
        obj.lo, obj.hi = list(centre), [c + 1 for c in centre]
        return obj

    def _release(self, obj: _Object) -> None:
        """Clear the object's POM and claims; seeds waiting for it become ready."""
        box = obj.box()
        obj.pom[box] = LOGIT_INIT
        self._free.append(obj.pom)
        claims = self.claim[box]
        claims[claims == obj.ticket] = 0
        if self.reach is not None:
            reach = self.reach[box]
            reach[reach == obj.ticket] = 0
        for item in self._waiting.pop(obj.ticket, []):
            heapq.heappush(self._ready, item)

    def _next_centre(self, obj: _Object):
        while obj.queue and obj.steps < self.settings.max_steps:
            _, _, c = heapq.heappop(obj.queue)
            if c in obj.visited or self.seg[c] != 0 or not self.inside[c]:
                continue
            obj.visited.add(c)
            return c
        return None

    def _forward(self, images: list[np.ndarray], poms: list[np.ndarray]) -> np.ndarray:
        """New POM logits (n, *fov) for n (image, POM) FOVs, in one batch."""
        n = len(images)
        if n > self._input.shape[0]:
            self._input = torch.zeros((n, 2, *self.config.fov), dtype=torch.float32)
        x = self._input[:n]
        buf = x.numpy()
        for k, (image, pom) in enumerate(zip(images, poms)):
            buf[k, 0] = image
            buf[k, 1] = pom
        with torch.inference_mode():
            out = self.net.forward_stacked(x.to(self.device), self._dtype)
            return out[:, 0].cpu().numpy()

    def _reached(self, obj: _Object, fov, logits: np.ndarray) -> np.ndarray:
        """The FOV's voxels in the object's reach: the parts (at the segment threshold, 6-connected inside the FOV)
        that hold a voxel it reached before, which join its reach (`reach`); a move is made only through them,
        never into a blob the object does not reach from its seed."""
        assert self.reach is not None
        comps, n = ndimage.label(logits >= self._segment_logit)
        reach = self.reach[fov]
        keep = np.zeros(n + 1, bool)
        keep[comps[reach == obj.ticket]] = True
        keep[0] = False
        joined = keep[comps]
        reach[joined] = obj.ticket
        return joined

    def _queue_moves(self, obj: _Object, centre, logits: np.ndarray, where: np.ndarray | None = None) -> None:
        """Queue the FOV moves whose face of the FOV has an object probability >= the move threshold (on `where`'s
        voxels only, when given)."""
        for axis, step, face in self._faces:
            values = logits[face] if where is None else logits[face][where[face]]
            if not values.size:
                continue
            best = float(values.max())
            if best >= self._move_logit:
                c = list(centre)
                c[axis] += step
                score = 1.0 / (1.0 + np.exp(-best))
                heapq.heappush(obj.queue, (-score, next(self._counter), tuple(c)))

    def _finish(self, obj: _Object) -> None:
        """Accept the object's voxels above the segment threshold (connected to its seed, unclaimed, large enough)."""
        box = obj.box()
        mask = (obj.pom[box] >= self._segment_logit) & (self.seg[box] == 0) & self.inside[box]
        seed = tuple(s - a for s, a in zip(obj.seed, obj.lo))
        accepted = False
        if mask[seed] and not (obj.weak and self.settings.weak_seed == "reject"):
            comps, _ = ndimage.label(mask)
            mask = comps == comps[seed]
            if int(mask.sum()) >= self.settings.min_size:
                self.stats["objects"] += 1
                self.seg[box][mask] = self.stats["objects"]
                accepted = True
        if not accepted:
            self.stats["rejected"] += 1
        self._release(obj)

    def _drop(self, obj: _Object, blocker: int) -> None:
        """Drop an object that touched an earlier one; its seed waits for `blocker` to finish."""
        self.stats["restarts"] += 1
        self._release(obj)
        self._waiting.setdefault(blocker, []).append((obj.index, obj.seed))

    def _next_seed(self):
        """(index, padded seed): the readiest of the waiting seeds that were released and the fresh ones."""
        if self._ready and (self._fresh_head is None or self._ready[0][0] < self._fresh_head[0]):
            return heapq.heappop(self._ready)
        item, self._fresh_head = self._fresh_head, next(self._fresh, None)
        return item

    def _fill_batch(self, active: list[_Object]) -> None:
        while len(active) < self.settings.batch:
            item = self._next_seed()
            if item is None:
                return
            index, c = item
            if self.seg[c] != 0 or not self.inside[c]:
                continue
            m = self.settings.seed_margin
            if m and self.seg[tuple(slice(max(v - m, 0), v + m + 1) for v in c)].any():
                continue
            if self.budget is not None and self.stats["steps"] >= self.budget:
                self.stats["over_budget"] += 1  # a seed that would start: counted, not started
                continue
            near = self.claim[self._fov(c)]
            if near.any():  # within a FOV of an object being filled: try again once it has finished
                self._waiting.setdefault(int(near[near != 0].min()), []).append(item)
                continue
            active.append(self._start(index, c))

    def _update(self, obj: _Object, centre, logits: np.ndarray, active: list[_Object]) -> bool:
        """Store one step's logits; False when the object was dropped for touching an earlier object."""
        fov = self._fov(centre)
        logits[self.seg[fov] != 0] = MASK_LOGIT
        if self.excluded is not None:
            logits[self.excluded[fov]] = MASK_LOGIT  # so no move is queued through masked voxels either
        mine = (logits >= 0) & self.inside[fov]
        claims = self.claim[fov]
        others = claims[mine]
        others = np.unique(others[(others != 0) & (others != obj.ticket)])
        if len(others) and others[0] < obj.ticket:
            self._drop(obj, int(others[0]))
            return False
        for other in [o for o in active if o.ticket in set(others.tolist())]:
            active.remove(other)
            self._drop(other, obj.ticket)
        claims[claims == obj.ticket] = 0
        claims[mine] = obj.ticket
        obj.pom[fov] = logits
        obj.steps += 1
        self.stats["steps"] += 1
        obj.lo = [min(a, s.start) for a, s in zip(obj.lo, fov)]
        obj.hi = [max(b, s.stop) for b, s in zip(obj.hi, fov)]
        if obj.steps == 1 and logits[self.radius] < 0:
            obj.queue.clear()  # the network does not keep the seed: reject early
        elif self.settings.weak_seed != "continue" and obj.pom[obj.seed] < self._move_logit:
            obj.queue.clear()  # the seed got weak: the object stops here
            obj.weak = True
        else:
            self._queue_moves(obj, centre, logits, None if self.reach is None else self._reached(obj, fov, logits))
        return True

    def segment(self, seeds: np.ndarray | None = None) -> np.ndarray:
        """Fill objects from `seeds` (default: distance-transform maxima, then a grid); int32 labels."""
        if seeds is None:
            seeds = seed_order(self.image[self._interior()], self.info.voxel_size, self.config.deltas, self.origin,
                               cap=float(min(self.radius)))
        if self.settings.reverse:
            seeds = seeds[::-1]
        padded = [tuple(int(v) + r for v, r in zip(s, self.radius)) for s in np.asarray(seeds).tolist()]
        self._fresh = iter(enumerate(padded))
        self._fresh_head = next(self._fresh, None)
        self._ready: list = []
        self._waiting: dict[int, list] = {}
        active: list[_Object] = []
        while True:
            self._fill_batch(active)
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
            out = self._forward([self.image[self._fov(c)] for c in centres],
                                [obj.pom[self._fov(c)] for obj, c in zip(batch, centres)])
            np.clip(out, -LOGIT_LIMIT, LOGIT_LIMIT, out=out)
            self.stats["batches"] += 1
            self.stats["fovs"] += len(batch)
            for obj, c, logits in zip(batch, centres, out):
                if obj in active and not self._update(obj, c, logits, active):
                    active.remove(obj)
        return self.seg[self._interior()].copy()


def budget_steps(factor: float, shape, deltas) -> int | None:
    """The steps a canvas of `shape` may take: `factor` times the FOV positions, `deltas` apart, that tile it;
    None for no limit (factor 0)."""
    if not factor:
        return None
    positions = float(np.prod([-(-s // max(d, 1)) for s, d in zip(shape, deltas)]))
    return int(np.ceil(factor * positions))


def fill_unsegmented(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Give each unsegmented voxel (0) the label of its nearest segmented voxel; masked voxels stay 0."""
    if labels.all() or not labels.any():
        return labels
    idx = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    filled = labels[tuple(idx)]
    if mask is not None:
        filled[mask] = 0
    return filled


def segment_volume(net: FFN, info: FFNInfo, raw: np.ndarray, settings: CanvasSettings | None = None,
                   device="cpu", fill: bool = True) -> tuple[np.ndarray, dict]:
    """Labels (int32; 0 = unsegmented unless `fill`) and statistics of one FFN pass over `raw`."""
    canvas = Canvas(net, info, raw, settings, device)
    labels = canvas.segment()
    return (fill_unsegmented(labels) if fill else labels), canvas.stats

"""FFN agglomeration (Januszewski et al. 2018): two segments in contact are merged when the network,
started once on each side of their contact, fills into the other side from both.

For each pair of segments that touch (face-adjacent voxels, at least `min_contact` of them in a
block), a subvolume of `radius` voxels around their contact point is segmented twice with one seed
each: the deepest voxel of either segment near the contact (largest distance to its boundary). The
pair agrees when the object grown from A covers at least `agree` of what the object grown from B
covers of B in the subvolume, and the other way round (each side's own fill is the measure, so
boundary voxels that a segment took in the final fill and no object ever covers do not count). A
pair that touches in several blocks is decided by the block where it has the most contact (then the
lowest block index): a stated rule that makes the decision one per pair, independent of the order
blocks finish (it depends on the block layout through where the contact point lies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import edt
import numpy as np

from connectome.core.geometry import Box


@dataclass(frozen=True)
class AgglomerationSettings:
    radius: tuple[int, int, int]  # half-size of the subvolume around a contact point, voxels
    agree: float = 0.8  # share of the other segment's voxels in the subvolume the object must cover
    min_contact: int = 10  # fewest contact voxel pairs (in one block) for a pair to be tested


def contacts(seg: np.ndarray, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (k, 2; lo < hi) of segments that touch in `seg[start:]` or across its lower faces, their
    contact counts, and one contact voxel each (the one nearest the pair's mean contact position,
    in `seg`'s coordinates; the voxel on the higher side of the face)."""
    us, vs, where = [], [], []
    for axis in range(3):
        lo, hi = [slice(s, None) for s in start], [slice(s, None) for s in start]
        lo[axis] = slice(max(start[axis] - 1, 0), seg.shape[axis] - 1)
        hi[axis] = slice(max(start[axis] - 1, 0) + 1, seg.shape[axis])
        a, b = seg[tuple(lo)], seg[tuple(hi)]
        touch = (a != b) & (a != 0) & (b != 0)
        pos = np.argwhere(touch)
        pos += [h.start for h in hi]
        us.append(a[touch])
        vs.append(b[touch])
        where.append(pos)
    u, v, pos = np.concatenate(us), np.concatenate(vs), np.concatenate(where)
    if not len(u):
        return np.zeros((0, 2), seg.dtype), np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    pairs = np.stack([np.minimum(u, v), np.maximum(u, v)], axis=1)
    keys, inverse, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    mean = np.stack([np.bincount(inverse, pos[:, d]) for d in range(3)], axis=1) / counts[:, None]
    dist = ((pos - mean[inverse]) ** 2).sum(axis=1)
    order = np.lexsort((dist, inverse))  # per pair, the nearest contact first
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    return keys, counts, pos[first]


def seed_near(mask: np.ndarray, point: tuple[int, int, int], reach: float) -> tuple[int, int, int] | None:
    """The voxel of `mask` within `reach` voxels of `point` that lies deepest inside it."""
    depth = edt.edt(mask.astype(np.uint8), black_border=False)
    grid = np.ogrid[tuple(slice(0, s) for s in mask.shape)]
    near = sum((g - p) ** 2 for g, p in zip(grid, point)) <= reach**2
    depth = np.where(near & mask, depth, 0)
    if depth.max() <= 0:
        return None
    return tuple(int(c) for c in np.unravel_index(int(np.argmax(depth)), depth.shape))  # type: ignore[return-value]


def decide(fill, raw: np.ndarray, seg: np.ndarray, pair, point, settings: AgglomerationSettings
           ) -> tuple[bool, float, float]:
    """(agree, share of B covered from A, share of A covered from B) for one pair around `point`.

    `fill(raw_sub, seed) -> bool mask` runs the FFN from one seed; `raw`, `seg` hold the read box."""
    sub = Box.from_corners([max(p - r, 0) for p, r in zip(point, settings.radius)],
                           [min(p + r + 1, s) for p, r, s in zip(point, settings.radius, seg.shape)])
    s, r = seg[sub.to_slices()], raw[sub.to_slices()]
    local = tuple(p - o for p, o in zip(point, sub.offset))
    masks = [s == pair[0], s == pair[1]]
    objects = []
    for k in (0, 1):
        seed = seed_near(masks[k], local, float(min(settings.radius)) / 2)
        if seed is None:
            return False, 0.0, 0.0
        objects.append(fill(r, seed))
    shares = []
    for k in (0, 1):  # the other segment's voxels the object from this side covers, per voxel its own fill covers
        own = np.count_nonzero(objects[1 - k] & masks[1 - k])
        shares.append(min(np.count_nonzero(objects[k] & masks[1 - k]) / own, 1.0) if own else 0.0)
    return shares[0] >= settings.agree and shares[1] >= settings.agree, shares[0], shares[1]


def chosen_decisions(tables: dict[int, dict]) -> np.ndarray:
    """(k, 2) pairs to merge: each pair decided by the block where it has the most contact (then the lowest index)."""
    rows = [(t["pairs"], t["counts"], t["agree"], np.full(len(t["counts"]), i)) for i, t in sorted(tables.items())
            if len(t["counts"])]
    if not rows:
        return np.zeros((0, 2), np.uint64)
    pairs = np.concatenate([r[0] for r in rows]).astype(np.uint64)
    counts, agree, block = (np.concatenate([r[k] for r in rows]) for k in (1, 2, 3))
    order = np.lexsort((block, -counts, pairs[:, 1], pairs[:, 0]))
    p = pairs[order]
    first = order[np.r_[True, np.any(p[1:] != p[:-1], axis=1)]]
    return pairs[first][agree[first].astype(bool)]


def fill_from_seed(net, info, settings, device: str):
    """A `fill` for `decide`: one object grown by the canvas from one seed, as a bool mask."""
    from connectome.ffn.canvas import Canvas

    def fill(raw: np.ndarray, seed) -> np.ndarray:
        labels = Canvas(net, info, raw, settings, device).segment(np.array([seed]))
        return labels == 1

    return fill


def block_decisions(fill, raw: np.ndarray, seg: np.ndarray, read: Box, write: Box,
                    settings: AgglomerationSettings) -> dict[str, np.ndarray]:
    """The decisions of one block: the pairs touching in its write box (or across its lower faces)."""
    has_lower = tuple(w > r for w, r in zip(write.offset, read.offset))
    near = Box.from_corners([w - int(h) for w, h in zip(write.offset, has_lower)], write.end)
    pairs, counts, points = contacts(seg[near.relative_to(read)], tuple(int(h) for h in has_lower))
    keep = counts >= settings.min_contact
    pairs, counts, points = pairs[keep], counts[keep], points[keep] + np.subtract(near.offset, read.offset)
    agree = np.zeros(len(pairs), bool)
    shares = np.zeros((len(pairs), 2), np.float32)
    for k, (pair, point) in enumerate(zip(pairs.tolist(), points.tolist())):
        agree[k], shares[k, 0], shares[k, 1] = decide(fill, raw, seg, pair, tuple(point), settings)
    ids = np.unique(seg[write.relative_to(read)])
    return {"pairs": pairs.astype(np.uint64), "counts": counts.astype(np.int64), "agree": agree, "shares": shares,
            "points": (points + np.asarray(read.offset)).astype(np.int64), "ids": ids[ids != 0].astype(np.uint64)}

"""Neurite geometry: persistent random walks that steer around obstacles, and neurons built from them.

All positions are nm (z, y, x) with voxel i's centre at i * voxel_size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from connectome.synth import codes as K


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def random_unit(rng: np.random.Generator) -> np.ndarray:
    return unit(rng.standard_normal(3))


def perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to the unit vector d."""
    v = rng.standard_normal(3)
    v -= (v @ d) * d
    return unit(v)


@dataclass(frozen=True)
class Space:
    """The physical box of the volume in nm, and a margin that walks may wander outside it."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, shape, voxel_size) -> Space:
        vs = np.asarray(voxel_size, float)
        return cls(-vs / 2, np.asarray(shape) * vs - vs / 2)

    @property
    def extent(self) -> np.ndarray:
        return self.hi - self.lo

    @property
    def volume_um3(self) -> float:
        return float(np.prod(self.extent)) / 1e9

    def uniform(self, rng: np.random.Generator) -> np.ndarray:
        return self.lo + rng.random(3) * self.extent

    def inside(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        p = np.asarray(p)
        return np.all((p >= self.lo - margin) & (p <= self.hi + margin), axis=-1)


class Obstacles:
    """Capsules (axis a-b, radius R) that walks slide around instead of entering."""

    def __init__(self):
        self.a = np.zeros((0, 3))
        self.b = np.zeros((0, 3))
        self.R = np.zeros(0)

    def add(self, a, b, R) -> None:
        a = np.atleast_2d(np.asarray(a, float))
        b = np.atleast_2d(np.asarray(b, float))
        self.a = np.concatenate([self.a, a])
        self.b = np.concatenate([self.b, b])
        self.R = np.concatenate([self.R, np.broadcast_to(np.asarray(R, float), (len(a),))])

    def _closest(self, p: np.ndarray):
        ab = self.b - self.a
        length2 = np.maximum((ab * ab).sum(1), 1e-9)
        t = np.clip(((p - self.a) * ab).sum(1) / length2, 0.0, 1.0)
        c = self.a + t[:, None] * ab
        v = p - c
        return c, v, np.linalg.norm(v, axis=1)

    def near(self, p: np.ndarray, reach: float) -> Obstacles:
        """The obstacles whose surface lies within `reach` of p (a walk's local neighbourhood)."""
        sub = Obstacles()
        if len(self.R):
            _, _, d = self._closest(p)
            keep = d - self.R <= reach
            sub.a, sub.b, sub.R = self.a[keep], self.b[keep], self.R[keep]
        return sub

    def clearance(self, p: np.ndarray, r: float) -> float:
        """Smallest (distance to an obstacle surface) - r; negative when a ball of radius r at p overlaps one."""
        if not len(self.R):
            return np.inf
        _, _, d = self._closest(p)
        return float(np.min(d - self.R - r))

    def push(self, p: np.ndarray, r: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Move p out of every obstacle grown by r (a few rounds, deepest overlap first).

        Returns the new point and its remaining overlap depth (0 when clear).
        """
        if not len(self.R):
            return p, 0.0
        depth = np.zeros(1)
        for _ in range(4):
            c, v, d = self._closest(p)
            need = self.R + r
            depth = need - d
            k = int(np.argmax(depth))
            if depth[k] <= 0:
                return p, 0.0
            direction = v[k] / d[k] if d[k] > 1e-6 else random_unit(rng)
            p = c[k] + direction * need[k] * 1.001
        _, _, d = self._closest(p)
        return p, float(max(0.0, np.max(self.R + r - d)))


def walk(rng, start, direction, *, step, sigma, space: Space, margin, obstacles: Obstacles | None,
         radius, max_len) -> np.ndarray:
    """A persistent random walk from `start` until it leaves the box (grown by margin) or gets stuck."""
    pts = [np.asarray(start, float)]
    d = unit(np.asarray(direction, float))
    anchor, local = None, None
    for _ in range(int(max_len / step)):
        d = unit(d + sigma * rng.standard_normal(3))
        p = pts[-1] + step * d
        if obstacles is not None:
            if anchor is None or local is None or np.linalg.norm(pts[-1] - anchor) > 3 * step:
                anchor = pts[-1]  # refresh the obstacles that the next few steps can reach
                local = obstacles.near(anchor, radius + 5 * step)
            p, overlap = local.push(p, radius, rng)
            if overlap > 0.5 * radius:
                break  # wedged between obstacles: the neurite ends here
        move = p - pts[-1]
        n = np.linalg.norm(move)
        if n < 0.25 * step:
            break
        d = move / n
        pts.append(p)
        if not space.inside(p, margin):
            break
    return np.array(pts)


def through_walk(rng, start, direction, **kw) -> np.ndarray:
    """A walk through `start` in both directions: a neurite that crosses the volume."""
    fwd = walk(rng, start, direction, **kw)
    back = walk(rng, start, -np.asarray(direction, float), **kw)
    return np.concatenate([back[::-1], fwd[1:]])


def free_start(rng, space: Space, obstacles: Obstacles | None, r: float, tries: int = 10) -> np.ndarray:
    """A random point in the box clear of obstacles (or the last try, pushed out of them)."""
    p = space.uniform(rng)
    if obstacles is None:
        return p
    for _ in range(tries):
        if obstacles.clearance(p, r) >= 0:
            return p
        p = space.uniform(rng)
    return obstacles.push(p, r, rng)[0]


def arclength(pts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def smooth_noise_1d(rng, n: int, corr: int) -> np.ndarray:
    """Zero-mean, unit-ish amplitude noise along a path, correlated over about `corr` nodes."""
    raw = rng.standard_normal(n + 2 * corr)
    kernel = np.hanning(max(2 * corr + 1, 3))
    sm = np.convolve(raw, kernel / kernel.sum(), mode="same")[corr:corr + n]
    s = sm.std()
    return sm / s if s > 0 else sm


def tangents(pts: np.ndarray) -> np.ndarray:
    t = np.gradient(pts, axis=0) if len(pts) > 1 else np.array([[1.0, 0, 0]])
    n = np.linalg.norm(t, axis=1, keepdims=True)
    return t / np.where(n > 0, n, 1)


@dataclass
class Neuron:
    """One cell's geometry: skeleton nodes and edges, capsules to paint, and its mitochondria."""

    label: int
    cls: str
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    segs: list = field(default_factory=list)  # (p0, p1, r0, r1, label, compartment)
    forced: list = field(default_factory=list)  # painted before competing tubes, and locked
    mitos: list = field(default_factory=list)  # (p0, p1, r0, r1, label, organelle)
    volume_nm3: float = 0.0  # estimated, inside the box

    def add_path(self, pts, radii, comp, space: Space, parent: int | None = None, parent_r=None,
                 forced: bool = False) -> list[int]:
        """Append a centreline path as skeleton nodes/edges and as capsules (joined to `parent`)."""
        first = len(self.nodes)
        idx = list(range(first, first + len(pts)))
        self.nodes.extend(np.asarray(p, float) for p in pts)
        target = self.forced if forced else self.segs
        pairs = [(idx[i], idx[i + 1], radii[i], radii[i + 1]) for i in range(len(idx) - 1)]
        if parent is not None:
            pairs.insert(0, (parent, idx[0], parent_r if parent_r is not None else radii[0], radii[0]))
        for a, b, ra, rb in pairs:
            self.edges.append((a, b))
            pa, pb = self.nodes[a], self.nodes[b]
            target.append((pa, pb, ra, rb, self.label, comp))
            if space.inside((pa + pb) / 2):
                self.volume_nm3 += np.pi * ((ra + rb) / 2) ** 2 * np.linalg.norm(pb - pa)
        return idx

    def add_blob(self, centre, r, comp, space: Space, axis=None, length=0.0, forced=False) -> None:
        """A ball (or a short capsule along `axis`) painted but not added to the skeleton."""
        c = np.asarray(centre, float)
        half = (0.5 * length * np.asarray(axis, float)) if axis is not None else np.zeros(3)
        (self.forced if forced else self.segs).append((c - half, c + half, r, r, self.label, comp))
        if space.inside(c) and not forced:  # priority-painted blobs are not part of the free volume
            self.volume_nm3 += 4 / 3 * np.pi * r ** 3 + np.pi * r * r * length

    def add_mito(self, p0, p1, r) -> None:
        self.mitos.append((np.asarray(p0, float), np.asarray(p1, float), r, r, self.label, K.O_MITOCHONDRION))


@dataclass(frozen=True)
class NeuriteShapes:
    """Physical sizes (nm) of the neurites; ranges are sampled uniformly."""

    axon_radius: tuple = (45.0, 95.0)
    bouton_radius: tuple = (150.0, 270.0)
    bouton_spacing: tuple = (1500.0, 4500.0)
    dendrite_radius: tuple = (150.0, 350.0)
    branch_every: float = 2500.0  # mean path length between dendrite branch points
    spine_spacing: tuple = (350.0, 900.0)
    spine_neck_radius: tuple = (35.0, 60.0)
    spine_neck_length: tuple = (250.0, 800.0)
    spine_head_radius: tuple = (100.0, 200.0)
    myelin_axon_radius: tuple = (220.0, 350.0)
    g_ratio: float = 0.7  # inner / outer radius of a myelinated axon
    soma_radius_max: float = 5000.0
    mito_radius_max: float = 130.0


def make_axon(rng, label, space, obstacles, shapes: NeuriteShapes, start=None, direction=None) -> Neuron:
    """A thin, gently wandering axon crossing the volume, with en passant boutons beside it."""
    n = Neuron(label, K.AXON)
    r = rng.uniform(*shapes.axon_radius)
    step = max(2.0 * r, 60.0)
    start = free_start(rng, space, obstacles, r) if start is None else start
    direction = random_unit(rng) if direction is None else direction
    pts = through_walk(rng, start, direction, step=step, sigma=0.12, space=space, margin=400.0,
                       obstacles=obstacles, radius=r + 10.0, max_len=4 * np.linalg.norm(space.extent))
    radii = r * np.clip(1 + 0.15 * smooth_noise_1d(rng, len(pts), 4), 0.7, 1.4)
    n.add_path(pts, radii, K.C_AXON, space)
    s = arclength(pts)
    tang = tangents(pts)
    pos = rng.uniform(0, shapes.bouton_spacing[1])
    while pos < s[-1]:
        i = int(np.searchsorted(s, pos))
        i = min(i, len(pts) - 1)
        rb = rng.uniform(*shapes.bouton_radius)
        side = perpendicular(rng, tang[i])
        centre = pts[i] + side * 0.35 * rb
        n.add_blob(centre, rb, K.C_BOUTON, space, axis=tang[i], length=0.8 * rb)
        if rng.random() < 0.5:  # a mitochondrion in about half the boutons
            rm = min(0.4 * rb, shapes.mito_radius_max)
            off = perpendicular(rng, tang[i]) * 0.25 * rb
            n.add_mito(centre + off - tang[i] * 0.3 * rb, centre + off + tang[i] * 0.3 * rb, rm)
        pos += rng.uniform(*shapes.bouton_spacing)
    if len(pts) > 6 and rng.random() < 0.4:  # a thin mitochondrion along the shaft
        i = rng.integers(0, len(pts) - 5)
        n.add_mito(pts[i], pts[i + 4], 0.55 * r)
    return n


def _spines(rng, n: Neuron, pts, radii, idx, space, obstacles, shapes: NeuriteShapes, heads: list):
    """Spines along a dendrite path: a thin neck out of the shaft and a round head."""
    s = arclength(pts)
    tang = tangents(pts)
    pos = rng.uniform(0, shapes.spine_spacing[1])
    while pos < s[-1]:
        i = min(int(np.searchsorted(s, pos)), len(pts) - 1)
        pos += rng.uniform(*shapes.spine_spacing)
        d = perpendicular(rng, tang[i])
        rn = rng.uniform(*shapes.spine_neck_radius)
        rh = rng.uniform(*shapes.spine_head_radius)
        neck_end = pts[i] + d * (radii[i] + rng.uniform(*shapes.spine_neck_length))
        head = neck_end + d * 0.8 * rh
        if obstacles is not None and obstacles.clearance(head, rh) < 0:
            continue
        j = n.add_path([neck_end], [rn], K.C_SPINE, space, parent=idx[i], parent_r=rn)
        n.add_path([head], [rh], K.C_SPINE, space, parent=j[0], parent_r=rn)
        n.add_blob(head, rh, K.C_SPINE, space, axis=d, length=0.3 * rh)
        heads.append((head, rh))


def _dendrite_path(rng, n: Neuron, pts, r, space, obstacles, shapes, heads, parent=None,
                   parent_r=None, depth=0):
    radii = r * np.clip(1 + 0.12 * smooth_noise_1d(rng, len(pts), 3), 0.75, 1.3)
    radii *= np.linspace(1.0, 0.85, len(pts))  # slow taper
    idx = n.add_path(pts, radii, K.C_DENDRITE, space, parent=parent, parent_r=parent_r)
    if len(pts) > 2 and rng.random() < 0.8:  # mitochondria along the shaft
        for _ in range(rng.integers(1, 3)):
            i = rng.integers(0, len(pts) - 1)
            j = min(len(pts) - 1, i + rng.integers(2, 8))
            rm = min(0.4 * radii[i], shapes.mito_radius_max)
            off = perpendicular(rng, tangents(pts)[i]) * 0.3 * radii[i]
            n.add_mito(pts[i] + off, pts[j] + off, rm)
    _spines(rng, n, pts, radii, idx, space, obstacles, shapes, heads)
    if depth < 2:
        s = arclength(pts)
        pos = rng.exponential(shapes.branch_every)
        tang = tangents(pts)
        while pos < s[-1]:
            i = min(int(np.searchsorted(s, pos)), len(pts) - 1)
            pos += rng.exponential(shapes.branch_every)
            if not space.inside(pts[i]):
                continue
            angle = rng.uniform(0.5, 1.2)
            d = unit(np.cos(angle) * tang[i] + np.sin(angle) * perpendicular(rng, tang[i]))
            rc = 0.7 * radii[i]
            start = obstacles.push(pts[i] + d * radii[i], rc, rng)[0] if obstacles is not None else pts[i]
            child = walk(rng, start, d, step=max(rc, 80.0), sigma=0.1, space=space, margin=400.0,
                         obstacles=obstacles, radius=rc + 20.0, max_len=2 * np.linalg.norm(space.extent))
            if len(child) < 2:
                continue
            _dendrite_path(rng, n, child, rc, space, obstacles, shapes, heads, parent=idx[i],
                           parent_r=radii[i], depth=depth + 1)


def make_dendrite(rng, label, space, obstacles, shapes: NeuriteShapes, heads: list) -> Neuron:
    """A spiny dendrite crossing the volume, with branches."""
    n = Neuron(label, K.DENDRITE)
    r = rng.uniform(*shapes.dendrite_radius)
    start = free_start(rng, space, obstacles, r)
    pts = through_walk(rng, start, random_unit(rng), step=max(r, 80.0), sigma=0.1, space=space,
                       margin=500.0, obstacles=obstacles, radius=r + 20.0,
                       max_len=3 * np.linalg.norm(space.extent))
    _dendrite_path(rng, n, pts, r, space, obstacles, shapes, heads)
    return n


def make_soma_neuron(rng, label, centre, R, space, obstacles, shapes: NeuriteShapes, heads: list):
    """A cell body (a slightly elongated ball, painted with priority) with primary dendrites.

    Returns the neuron and its nucleus (centre, radius).
    """
    n = Neuron(label, K.SOMA)
    axis = random_unit(rng)
    length = 0.3 * R
    n.add_path([centre], [R], K.C_SOMA, space)
    n.add_blob(centre, R, K.C_SOMA, space, axis=axis, length=length, forced=True)
    nucleus_centre = centre + random_unit(rng) * 0.1 * R
    nucleus_r = 0.6 * R
    for _ in range(rng.integers(4, 12)):  # mitochondria in the cytoplasm around the nucleus
        d = random_unit(rng)
        c = nucleus_centre + d * rng.uniform(nucleus_r + 0.12 * R, 0.92 * R)
        t = perpendicular(rng, d)
        rm = min(0.05 * R, shapes.mito_radius_max)
        n.add_mito(c - t * 2 * rm, c + t * 2 * rm, rm)
    obstacles.add(centre - axis * length / 2, centre + axis * length / 2, R)
    for _ in range(rng.integers(2, 5)):
        d = random_unit(rng)
        r = float(np.clip(0.2 * R, shapes.dendrite_radius[0], 1.6 * shapes.dendrite_radius[1]))
        start = centre + d * (R + r + 30.0)
        if obstacles.clearance(start, r) < -1.0 or not space.inside(start, 500.0):
            continue
        pts = walk(rng, start, d, step=max(r, 80.0), sigma=0.08, space=space, margin=500.0,
                   obstacles=obstacles, radius=r + 20.0, max_len=2 * np.linalg.norm(space.extent))
        pts = np.concatenate([[centre + d * 0.5 * R], pts])
        _dendrite_path(rng, n, pts, r, space, obstacles, shapes, heads, parent=0, parent_r=r)
    return n, (nucleus_centre, nucleus_r)


def make_myelinated_axon(rng, axon_label, sheath_label, space, obstacles, shapes: NeuriteShapes):
    """A straight-ish thick axon (painted with priority) wrapped in a myelin sheath of a glial id."""
    axon = Neuron(axon_label, K.AXON)
    sheath = Neuron(sheath_label, K.GLIA)
    r_in = rng.uniform(*shapes.myelin_axon_radius)
    r_out = r_in / shapes.g_ratio
    start = free_start(rng, space, obstacles, r_out)
    pts = through_walk(rng, start, random_unit(rng), step=max(r_out, 100.0), sigma=0.04, space=space,
                       margin=800.0, obstacles=obstacles, radius=r_out + 20.0,
                       max_len=3 * np.linalg.norm(space.extent))
    axon.add_path(pts, np.full(len(pts), r_in), K.C_AXON, space, forced=True)
    for a, b in zip(pts[:-1], pts[1:]):
        sheath.forced.append((a, b, r_out, r_out, sheath_label, K.C_MYELIN))
    sheath.volume_nm3 = axon.volume_nm3 * ((r_out / r_in) ** 2 - 1)
    if len(pts) > 6:
        i = rng.integers(0, len(pts) - 5)
        axon.add_mito(pts[i], pts[i + 4], 0.35 * r_in)
    obstacles.add(pts[:-1], pts[1:], r_out)
    return axon, sheath

"""Local Sholl analysis: branching of a segment, measured where it is, the same in any block layout.

At every point of a coarse global lattice (about every `SPACING_NM`) that lies in a segment, a sphere of
radius R (each of `RADII_NM`) is sampled at points about `SAMPLE_NM` apart (each snapped to a voxel; the
distinct voxels are the sphere's samples); the samples in the centre's segment fall into connected pieces
(neighbouring samples joined), and their number is how many times the segment crosses the sphere: 2 along an
unbranched process, 3 or more where it branches, 1 at a tip, inside a body larger than the sphere, or beside
the axis of a process about as thick as the sphere. A process thinner than about `SAMPLE_NM` can slip between
the samples (0 or 1 crossing), and one thinner than about 1.4 lattice spacings can miss every lattice point. Samples
outside the volume count as outside the segment. Per segment the blocks add up the lattice points, the
crossings, the points with 3 or more crossings (branches), the points with one crossing that covers under half
the sphere's samples (tips) and the covered share of the samples (fill); `features.describe` turns them into
means and fractions."""

from __future__ import annotations

import functools

import numpy as np

RADII_NM = (120.0, 240.0)
SPACING_NM = 128.0  # lattice spacing; points sit at coordinate = step // 2 mod step on each axis
SAMPLE_NM = 40.0  # spacing of the samples on a sphere
TIP_FILL = 0.5
BATCH = 1024  # points per sphere graph
SUMS = ("sholl_points", *(f"sholl{int(r)}_{k}" for r in RADII_NM for k in ("cross", "branch", "tip", "fill")))
FEATURES = ("log_sholl_points", *(f"sholl{int(r)}_{k}" for r in RADII_NM
                                  for k in ("mean_crossings", "branch_fraction", "tip_fraction", "fill")))
MORPHOLOGY_COLUMNS = ("radius_nm", "sholl_points", "crossings", "branch_share", "tip_share")  # in segments.csv
PRIOR = {"cross": 2.0, "branch": 0.0, "tip": 0.0, "fill": 0.5}  # one pseudo-point: a segment without points


def steps(voxel_size) -> tuple[int, ...]:
    """The lattice step in voxels per axis."""
    return tuple(max(1, int(round(SPACING_NM / float(v)))) for v in voxel_size)


def reach(voxel_size) -> tuple[int, int, int]:
    """Voxels of context a block needs so that every sphere of its lattice points lies in its read box."""
    return tuple(int(np.ceil(max(RADII_NM) / float(v))) + 1 for v in voxel_size)  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def sphere(radius_nm: float, voxel_size: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, edges): the distinct voxel offsets (z, y, x) of a sphere's samples, and the pairs of offsets
    whose samples are neighbours. Samples: a Fibonacci sphere, about `SAMPLE_NM` apart."""
    n = max(12, int(np.ceil(4 * np.pi * radius_nm ** 2 / SAMPLE_NM ** 2)))
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (1 + 5 ** 0.5) * i
    unit = np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], 1)
    vs = np.asarray(voxel_size, float)
    voxels = np.round(unit * radius_nm / vs).astype(np.int64)
    offsets, which = np.unique(voxels, axis=0, return_inverse=True)
    which = which.ravel()
    spacing = np.sqrt(4 * np.pi / n) * radius_nm
    d = np.linalg.norm((unit[:, None] - unit[None]) * radius_nm, axis=2)
    a, b = np.nonzero(np.triu(d <= 1.5 * spacing, 1))
    pairs = np.stack([which[a], which[b]], 1)
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1), axis=0)
    return offsets, pairs


def crossings(seg: np.ndarray, points: np.ndarray, radius_nm: float, voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """(crossings, fill) per point: the pieces of the point's segment on the sphere around it, and the share
    of the sphere's samples (distinct voxels) in it. `seg` holds every sphere (zeros stand for outside the
    volume). Points go `BATCH` at a time, which bounds the memory of a large block."""
    offsets, pairs = sphere(float(radius_nm), tuple(float(v) for v in voxel_size))
    parts = [_crossings(seg, points[i:i + BATCH], offsets, pairs) for i in range(0, len(points), BATCH)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate([c for c, _ in parts]), np.concatenate([f for _, f in parts])


def _crossings(seg: np.ndarray, points: np.ndarray, offsets: np.ndarray, pairs: np.ndarray):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, u = len(points), len(offsets)
    at = points[:, None, :] + offsets[None]
    own = seg[points[:, 0], points[:, 1], points[:, 2]]
    inside = seg[at[..., 0], at[..., 1], at[..., 2]] == own[:, None]  # (n, u)
    both = inside[:, pairs[:, 0]] & inside[:, pairs[:, 1]]
    p, e = np.nonzero(both)
    nodes = n * u
    graph = coo_matrix((np.ones(len(p), np.int8), (p * u + pairs[e, 0], p * u + pairs[e, 1])), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    on = np.flatnonzero(inside.ravel())
    pieces = np.unique(labels[on])
    first = np.zeros(labels.max() + 1, np.int64)
    first[labels[on]] = on  # a node of each piece (every node of a piece is on one sphere)
    count = np.bincount(first[pieces] // u, minlength=n)
    return count, inside.mean(1)


def point_sums(seg: np.ndarray, points: np.ndarray, voxel_size) -> dict[str, np.ndarray]:
    """Per point, the values whose sums per segment are `SUMS`."""
    out = {"sholl_points": np.ones(len(points))}
    for r in RADII_NM:
        c, fill = crossings(seg, points, r, voxel_size)
        key = f"sholl{int(r)}"
        out[f"{key}_cross"] = c.astype(np.float64)
        out[f"{key}_branch"] = (c >= 3).astype(np.float64)
        out[f"{key}_tip"] = ((c == 1) & (fill < TIP_FILL)).astype(np.float64)
        out[f"{key}_fill"] = np.round(fill * 1024) / 1024  # exact sums in any order
    return out


def describe(sums: dict) -> np.ndarray:
    """(segments, len(FEATURES)): log(1 + lattice points), then per radius the mean crossings, the shares of
    branch and tip points and the mean fill, each with one pseudo-point of `PRIOR`."""
    points = sums["sholl_points"]
    cols = [np.log1p(points)]
    for r in RADII_NM:
        for k in ("cross", "branch", "tip", "fill"):
            cols.append((sums[f"sholl{int(r)}_{k}"] + PRIOR[k]) / (points + 1.0))
    return np.stack(cols, 1)


def morphology(sums: dict) -> dict[str, np.ndarray]:
    """The segment table's branching columns, at the largest radius: lattice points, mean crossings, and the
    shares of branch and tip points (NaN for a segment without lattice points: not measured)."""
    points = sums["sholl_points"]
    key = f"sholl{int(max(RADII_NM))}"
    per = np.where(points > 0, points, np.nan)
    return {"sholl_points": points, "crossings": sums[f"{key}_cross"] / per,
            "branch_share": sums[f"{key}_branch"] / per, "tip_share": sums[f"{key}_tip"] / per}

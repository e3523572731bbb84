"""Do the alignment's displacement estimates between real sections anchor to the tissue?

The real-stack test (tests/alignment/test_align_real_stacks.py) compares the alignment of a moved crop
with that of the untouched crop. Here the estimates themselves are compared, node by node, at the same
tissue: a node of the moved crop's section z and the untouched crop's pixel showing the same clean
position. Section z + 1 of each crop is first pre-warped into section z's frame, either exactly (the
moved crop: the known relative transform; the untouched crop needs none) or by the robust rigid fit of
the production matcher's displacements on a 32-px grid (`fit.robust_fit`, as the pair fits of the
global step). Then, per node, the displacement to the next section by

- the production matcher (`patches.SectionPair.match`: NCC from coarse to fine, then the affine
  Gauss-Newton refinement), search 16 px, patch 128 px as in the test;
- a dense Lucas-Kanade flow (Gaussian window `--sigma` px, 3 resolutions, 8 iterations each).

The moved crop's displacement is mapped to clean coordinates (S_{z+1}(x + d) - S_z(x)) and compared
with the untouched crop's at the same tissue. Stacks and draws as in the test (4 x 288 x 288 central
crops, 40 px margin, shifts <= 20 px, rotations <= 2 degrees, `distort(..., seed)`).

Run: .venv/bin/python benchmarks/alignment_anchoring.py [--stacks isbi vnc] [--seeds 1 2 3] [--sigma 16]
Prints a markdown table (recorded in benchmarks/results/alignment.md).
"""

from __future__ import annotations

import argparse

import numpy as np
from alignment_draws import MARGIN, SECTIONS, SIDE, SOURCES, central_crop  # the test's stacks and crops
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from connectome.alignment.fit import apply, robust_fit
from connectome.alignment.patches import PatchSettings, SectionPair
from connectome.alignment.synthetic import Distorted, Distortion, distort

PATCH, BORDER = 128, 64


def lucas_kanade(a: np.ndarray, b: np.ndarray, sigma: float, levels: int = 3, iterations: int = 8) -> np.ndarray:
    """Dense flow u (2, h, w) with a(x) ~ b(x + u(x)): Gaussian-weighted normal equations per pixel,
    coarse to fine (the window's local mean difference removed)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    u = None
    for level in range(levels - 1, -1, -1):
        f = 2 ** level
        al = zoom(gaussian_filter(a, f / 2), 1 / f, order=1) if f > 1 else a
        bl = zoom(gaussian_filter(b, f / 2), 1 / f, order=1) if f > 1 else b
        h, w = al.shape
        u = np.zeros((2, h, w)) if u is None else np.stack([zoom(c, (h / c.shape[0], w / c.shape[1]), order=1) * 2
                                                            for c in u])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        s = sigma / f
        for _ in range(iterations):
            warped = map_coordinates(bl, [yy + u[0], xx + u[1]], order=3, mode="nearest")
            gy, gx = np.gradient(warped)
            r = al - warped
            r = r - gaussian_filter(r, s)
            a11, a12, a22 = (gaussian_filter(v, s) for v in (gy * gy, gy * gx, gx * gx))
            b1, b2 = gaussian_filter(gy * r, s), gaussian_filter(gx * r, s)
            det = a11 * a22 - a12 ** 2 + 1e-9
            u[0] += np.clip((a22 * b1 - a12 * b2) / det, -1, 1)
            u[1] += np.clip((a11 * b2 - a12 * b1) / det, -1, 1)
    assert u is not None
    return u


def warp_into(b: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """b resampled at transform(x) for every pixel x of its frame."""
    h, w = b.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    q = apply(transform, np.stack([yy.ravel(), xx.ravel()], 1))
    return map_coordinates(b.astype(np.float64), [q[:, 0].reshape(h, w), q[:, 1].reshape(h, w)], order=3,
                           mode="nearest").astype(np.float32)


def exact_transform(d: Distorted, z: int) -> np.ndarray:
    """The (2, 3) transform taking section z's pixels to section z + 1's pixels showing the same clean point."""
    def section_map(k: int) -> tuple[np.ndarray, np.ndarray]:  # clean = R p + c0
        c, s = np.cos(d.rotations[k]), np.sin(d.rotations[k])
        r = np.array([[c, -s], [s, c]])
        centre = np.asarray(d.center)
        return r, centre + r @ (np.full(2, d.margin) - centre) + d.shifts[k]
    r0, c0 = section_map(z)
    r1, c1 = section_map(z + 1)
    m = r1.T @ r0
    return np.hstack([m, (r1.T @ (c0 - c1))[:, None]])


def rigid_fit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The robust rigid fit of the production matcher's displacements on a 32-px grid."""
    pair = SectionPair(a, b, (0, 0), a.shape)
    settings = PatchSettings(patch=PATCH, search=60, levels=3)
    axis = np.arange(BORDER, a.shape[0] - BORDER + 1, 32.0)
    gy, gx = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([gy.ravel(), gx.ravel()], 1)
    found = [pair.match(p, settings) for p in points]
    d = np.array([f[0] for f in found])
    corr = np.array([f[1] for f in found])
    fit, _ = robust_fit("rigid", points, d, corr >= 0.15, 8.0)
    assert fit is not None
    return fit


def displacements(a: np.ndarray, b: np.ndarray, transform: np.ndarray, nodes: np.ndarray, sigma: float):
    """Per node: (matcher, Lucas-Kanade) displacement from a to b, both measured after b is pre-warped
    by `transform` and composed with it (d = T(x + r) - x)."""
    warped = warp_into(b, transform)
    pair = SectionPair(a, warped, (0, 0), a.shape)
    settings = PatchSettings(patch=PATCH, search=16, levels=2)
    r_match = np.array([pair.match(p, settings)[0] for p in nodes])
    flow = lucas_kanade(a, warped, sigma)
    r_flow = np.stack([map_coordinates(flow[i], nodes.T, order=1) for i in range(2)], 1)
    return [apply(transform, nodes + r) - nodes for r in (r_match, r_flow)]


def compare(name: str, seed: int, sigma: float) -> list[str]:
    clean = central_crop(name)
    untouched = distort(clean, MARGIN, Distortion(max_shift=0, max_rotation=0), seed=0)
    moved = distort(clean, MARGIN, Distortion(max_shift=20, max_rotation=2), seed=seed)
    errors: dict[str, list[np.ndarray]] = {}
    identity = np.hstack([np.eye(2), np.zeros((2, 1))])
    axis = np.arange(BORDER, SIDE - BORDER + 1, 16.0)
    gy, gx = np.meshgrid(axis, axis, indexing="ij")
    grid = np.stack([gy.ravel(), gx.ravel()], 1)
    for z in range(SECTIONS - 1):
        am, bm = moved.raw[z].astype(np.float32), moved.raw[z + 1].astype(np.float32)
        au, bu = untouched.raw[z].astype(np.float32), untouched.raw[z + 1].astype(np.float32)
        sy, sx = moved.source(z, grid[:, 0], grid[:, 1])
        at_u = np.stack([sy, sx], 1) - MARGIN  # the untouched crop's pixel showing the same tissue
        keep = np.all((at_u >= BORDER) & (at_u <= SIDE - 1 - BORDER), axis=1)
        nodes_m, nodes_u = grid[keep], at_u[keep]
        for start, (tm, tu) in (("exact", (exact_transform(moved, z), identity)),
                                ("estimated", (rigid_fit(am, bm), rigid_fit(au, bu)))):
            dm = displacements(am, bm, tm, nodes_m, sigma)
            du = displacements(au, bu, tu, nodes_u, sigma)
            for method, a_d, b_d in zip(("matcher", "Lucas-Kanade"), dm, du):
                y1, x1 = moved.source(z + 1, nodes_m[:, 0] + a_d[:, 0], nodes_m[:, 1] + a_d[:, 1])
                y0, x0 = moved.source(z, nodes_m[:, 0], nodes_m[:, 1])
                e = np.hypot(y1 - y0 - b_d[:, 0], x1 - x0 - b_d[:, 1])
                errors.setdefault(f"{method}, {start} pre-warp", []).append(e)
    rows = []
    for key, per_pair in errors.items():
        e = np.concatenate(per_pair)
        pairs = " / ".join(f"{np.median(p):.2f}" for p in per_pair)
        rows.append(f"| {name}, seed {seed} | {key} | {np.median(e):.3f} | {np.percentile(e, 95):.2f} | {e.max():.2f} "
                    f"| {np.mean(e > 1.5):.1%} | {pairs} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stacks", nargs="+", default=["isbi", "vnc"], choices=sorted(SOURCES))
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--sigma", type=float, default=16.0, help="Lucas-Kanade window (Gaussian sigma, px)")
    a = p.parse_args()
    print("| stack, draw | estimate | median px | 95 % px | worst px | nodes > 1.5 px | median per pair (z 0-1 / 1-2 / 2-3) |")
    print("|---|---|---|---|---|---|---|")
    for name in a.stacks:
        for seed in a.seeds:
            for row in compare(name, seed, a.sigma):
                print(row, flush=True)


if __name__ == "__main__":
    main()

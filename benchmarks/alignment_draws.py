"""Real-stack alignment residuals over several draws and solve settings (the setting of
tests/alignment/test_align_real_stacks.py; issue 14's bar: median < 0.5 px, worst < 1.5 px).

For each stack (4 x 288 x 288 central crops of ISBI 2012 `train_raw` and Drosophila VNC stack 1,
40 px margin) the chain (`align_match`, then `align` with the test's stiff setting) runs on the
untouched crop and on crops moved by `distort(..., Distortion(max_shift=20, max_rotation=2), seed)`;
the global step (`SolveStep`) is then re-run on the same match tables with each other solve setting.
The residual is `residuals(moved, ..., reference=untouched alignment)` with the same solve setting.

`--checks` adds, per setting, on the first seed, what the residual measure says about alignments
that are wrong or right by construction: the untouched alignment against itself (0), no alignment
(zero fields), another draw's fields, and the moved alignment plus a smooth warp, independent per
section (misaligns the sections) or the same in every section (a common transform: not charged).

`--patches` adds, per draw, how far the moved crop's good patch displacements to the next section lie
from the untouched crop's at the same tissue, and the matcher's and the solves' errors on one real
section repeated under the draw's transforms (aligned by construction: no tissue change).

Run: .venv/bin/python benchmarks/alignment_draws.py [--stacks isbi vnc] [--seeds 1 2 3] [--refine]
     [--checks] [--patches] [--extra '{"bend 0.1": {"bend": 0.1}}'] [--patch 128] [--side 288] [--border 64]
Prints a markdown table (recorded in benchmarks/results/alignment.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from connectome.alignment.synthetic import Distorted, Distortion, distort, residuals

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = {"isbi": ("isbi2012/isbi2012.npz", "train_raw"), "vnc": ("drosophila_vnc_sstem/vnc_stack1.npz", "raw")}
SECTIONS, SIDE, MARGIN = 4, 288, 40  # as in the test
MATCH = {"patch": 128, "stride": 32, "search": 60, "levels": 3}
STIFF = {"model": "affine", "stretch": 0.001, "bend": 10.0, "anchor": 10.0}
SETTINGS: dict[str, dict] = {
    "stiff (the test's)": STIFF,
    "align default (elastic)": {},
    "elastic, bend 1": {"bend": 1.0},
}
REFINED: dict[str, dict] = {f"{name} + refine": {**s, "refine": True} for name, s in SETTINGS.items()}
BORDER, STEP = MATCH["patch"] // 2, 4


def central_crop(name: str) -> np.ndarray:
    relative, key = SOURCES[name]
    with np.load(DATA / relative) as f:
        raw = f[key]
    half = SIDE // 2 + MARGIN
    if 2 * half > min(raw.shape[1:]):
        sys.exit(f"--side {SIDE}: {name} sections are {raw.shape[1]} x {raw.shape[2]}, at most "
                 f"{min(raw.shape[1:]) - 2 * MARGIN} fits with the {MARGIN} px margin")
    cy, cx = raw.shape[1] // 2, raw.shape[2] // 2
    return np.ascontiguousarray(raw[:SECTIONS, cy - half:cy + half, cx - half:cx + half])


def chain(data: np.ndarray, root: str, client) -> str:
    """Run align_match and align (stiff) on `data`; the run's output directory."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume

    raw, out = os.path.join(root, "raw"), os.path.join(root, "out")
    vol = create_volume(raw, data.shape, data.dtype, (4, 64, 64), (40.0, 4.0, 4.0))
    vol.write(vol.box, data)
    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=(16, 512, 512), chunk_shape=(4, 64, 64)),
                       cluster=ClusterConfig(), stages=[StageConfig(stage="align_match", params=MATCH),
                                                        StageConfig(stage="align", params=STIFF)])
    execute(plan_run(config), client, progress=False)
    return root


def solved(root: str, label: str, settings: dict) -> dict:
    """The fields of the global step re-run with `settings` on the run's match tables."""
    from connectome.alignment.solve_step import SolveSettings, SolveStep

    path = os.path.join(root, "solves", label.replace(" ", "_"), "transforms.npz")
    SolveStep(os.path.join(root, "out", "tables", "matches"), path, SolveSettings(**settings),
              os.path.join(root, "raw")).run()
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def nodes_of(t: dict) -> tuple[np.ndarray, np.ndarray]:
    return t["nodes_y"], t["nodes_x"]


def smooth_warp(shape: tuple[int, ...], nodes: tuple[np.ndarray, np.ndarray], amplitude: float,
                common: bool, seed: int = 5) -> np.ndarray:
    """(sections, gy, gx, 2) smooth node displacements of `amplitude` px per axis (160 px wavelength)."""
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(*nodes, indexing="ij")
    out = np.zeros(shape)
    for z in range(shape[0]):
        for c in range(2):
            phase, fy, fx = rng.uniform(0, 2 * np.pi), *rng.uniform(-1, 1, 2)
            out[z, ..., c] = amplitude * np.sin(2 * np.pi * (fy * gy + fx * gx) / 160 + phase)
    if common:
        out[:] = out[0]
    return out


CHECKS = ("untouched vs itself", "no alignment (zero fields)", "another draw's fields", "the other draw, aligned",
          "moved alignment", "+ 1 px warp per section", "+ 3 px warp per section", "+ 3 px warp, all sections")


def checks(moved: Distorted, other: Distorted, t: dict[str, dict]) -> list[str]:
    """Median / worst residual (px) of each of CHECKS for one stack and setting."""
    untouched, nodes = t["untouched"]["untouched"], nodes_of(t["moved"])
    ref = (untouched, t["untouched"]["fields"], nodes_of(t["untouched"]))

    def res(d: Distorted, fields: np.ndarray) -> np.ndarray:
        return residuals(d, fields, nodes, border=BORDER, step=STEP, reference=ref)

    fields = t["moved"]["fields"].astype(np.float64)
    cases = [res(untouched, ref[1]), res(moved, 0 * fields), res(moved, t["other"]["fields"]),
             res(other, t["other"]["fields"]), res(moved, fields),
             res(moved, fields + smooth_warp(fields.shape, nodes, 1.0, False)),
             res(moved, fields + smooth_warp(fields.shape, nodes, 3.0, False)),
             res(moved, fields + smooth_warp(fields.shape, nodes, 3.0, True))]
    return [f"{np.median(r):.2f} / {r.max():.2f}" for r in cases]


def patch_disagreement(untouched: Distorted, u_root: str, moved: Distorted, m_root: str) -> str:
    """Cells: how far the moved crop's good k = 1 patch displacements lie from the untouched crop's at the
    same tissue (clean positions; the untouched ones interpolated between its nodes, inside them)."""
    from connectome.alignment.mesh import interpolate
    from connectome.alignment.solve_step import SolveSettings, load_matches, screen

    mu = load_matches(os.path.join(u_root, "out", "tables", "matches"))
    mm = load_matches(os.path.join(m_root, "out", "tables", "matches"))
    good = screen(mm, SolveSettings())[1][1]
    gy, gx = np.meshgrid(*mm.nodes, indexing="ij")
    off = []
    for z in range(len(mm.d[1])):
        d = mm.d[1][z]
        a = np.stack(moved.source(z, gy, gx), axis=-1)
        b = np.stack(moved.source(z + 1, gy + d[..., 0], gx + d[..., 1]), axis=-1)
        q = a - untouched.margin  # untouched crop coordinates (no rotation, no shift)
        expected = a + interpolate(mu.d[1][z], mu.nodes, q[..., 0], q[..., 1])
        inside = ((q[..., 0] >= mu.nodes[0][0]) & (q[..., 0] <= mu.nodes[0][-1]) & (q[..., 1] >= mu.nodes[1][0])
                  & (q[..., 1] <= mu.nodes[1][-1]) & good[z])
        off.append(np.linalg.norm(b - expected, axis=-1)[inside])
    e = np.concatenate(off)
    return f"{np.median(e):.2f} | {e.max():.1f} | {100 * np.mean(e > 1.5):.0f} % of {e.size}"


def identical(clean: np.ndarray, seed: int, root: str, client) -> str:
    """Cells: the matcher's and the solves' errors on one real section repeated (noise sigma 4) under the
    draw's shifts and rotations: a stack that is aligned by construction."""
    from connectome.alignment.solve_step import load_matches

    rng = np.random.default_rng(0)
    same = np.repeat(clean[:1].astype(np.float64), len(clean), axis=0) + rng.normal(0, 4, clean.shape)
    moved = distort(np.clip(np.rint(same), 0, 255).astype(clean.dtype), MARGIN,
                    Distortion(max_shift=20, max_rotation=2), seed=seed)
    chain(moved.raw, root, client)
    m = load_matches(os.path.join(root, "out", "tables", "matches"))
    gy, gx = np.meshgrid(*m.nodes, indexing="ij")
    worst = 0.0
    for k, d in m.d.items():
        for z in range(len(d)):
            a = np.stack(moved.source(z, gy, gx), axis=-1)
            b = np.stack(moved.source(z + k, gy + d[z][..., 0], gx + d[z][..., 1]), axis=-1)
            worst = max(worst, float(np.linalg.norm(a - b, axis=-1).max()))
    cells = [f"{worst:.3f}"]
    for label in ("stiff (the test's)", "align default (elastic)"):
        t = solved(root, label, SETTINGS[label])
        r = residuals(moved, t["fields"], nodes_of(t), border=BORDER, step=STEP)
        cells.append(f"{np.median(r):.3f} / {r.max():.3f}")
    return " | ".join(cells)


def main() -> None:
    global BORDER, SIDE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", nargs="+", default=sorted(SOURCES), choices=sorted(SOURCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--refine", action="store_true", help="also each setting with align params refine")
    parser.add_argument("--checks", action="store_true", help="the residual measure's sanity checks")
    parser.add_argument("--patches", action="store_true",
                        help="patch displacements of the moved vs the untouched crop; the matcher on identical sections")
    parser.add_argument("--extra", default="{}", help='more settings, JSON: {"bend 0.1": {"bend": 0.1}}')
    parser.add_argument("--patch", type=int, default=MATCH["patch"], help="align_match patch (the test's: 128)")
    parser.add_argument("--side", type=int, default=SIDE, help="crop side without the margin (the test's: 288)")
    parser.add_argument("--border", type=int, default=None,
                        help="px left out of the residual at each side (default: half the patch, as the test)")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    MATCH["patch"] = args.patch
    SIDE = args.side
    BORDER = args.patch // 2 if args.border is None else args.border
    settings = {**SETTINGS, **(REFINED if args.refine else {}), **json.loads(args.extra)}
    rows, check_rows, patch_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        for name in args.stacks:
            clean = central_crop(name)
            untouched = distort(clean, MARGIN, Distortion(max_shift=0, max_rotation=0), seed=0)
            u_root = chain(untouched.raw, os.path.join(tmp, name, "untouched"), client)
            for seed in args.seeds:
                moved = distort(clean, MARGIN, Distortion(max_shift=20, max_rotation=2), seed=seed)
                m_root = chain(moved.raw, os.path.join(tmp, name, f"seed{seed}"), client)
                other = distort(clean, MARGIN, Distortion(max_shift=20, max_rotation=2), seed=seed + 10)
                o_root = chain(other.raw, os.path.join(tmp, name, f"seed{seed + 10}"), client) \
                    if args.checks and seed == args.seeds[0] else None
                cells = []
                for label, s in settings.items():
                    tu, tm = solved(u_root, label, s), solved(m_root, label, s)
                    r = residuals(moved, tm["fields"], nodes_of(tm), border=BORDER, step=STEP,
                                  reference=(untouched, tu["fields"], nodes_of(tu)))
                    meets = np.median(r) < 0.5 and r.max() < 1.5
                    cells.append(f"{np.median(r):.2f} / {r.max():.2f}{' (bar met)' if meets else ''}")
                    if o_root is not None:
                        t = {"untouched": {**tu, "untouched": untouched}, "moved": tm,
                             "other": solved(o_root, label, s)}
                        check_rows.append(f"| {name}, seed {seed} vs {seed + 10} | {label} | "
                                          + " | ".join(checks(moved, other, t)) + " |")
                rows.append(f"| {name}, seed {seed} | " + " | ".join(cells) + " |")
                print(rows[-1], file=sys.stderr, flush=True)  # progress
                if args.patches:
                    patch_rows.append(f"| {name}, seed {seed} | {patch_disagreement(untouched, u_root, moved, m_root)} | "
                                      f"{identical(clean, seed, os.path.join(tmp, name, f'same{seed}'), client)} |")
    print("\n| stack, draw | " + " | ".join(settings) + " |")
    print("|---" * (len(settings) + 1) + "|")
    print("\n".join(rows))
    if check_rows:
        print("\n| stack, draws | setting | " + " | ".join(CHECKS) + " |")
        print("|---" * (len(CHECKS) + 2) + "|")
        print("\n".join(check_rows))
    if patch_rows:
        print("\n| stack, draw | moved vs untouched patches: median px | worst px | off by > 1.5 px "
              "| identical sections: worst patch error px | stiff residual | default residual |")
        print("|---" * 7 + "|")
        print("\n".join(patch_rows))


if __name__ == "__main__":
    main()

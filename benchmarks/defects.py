"""Region defect flags on real ssTEM stacks, before (the matching cue alone, as `region_flags(good,
measurable, flags)` computes it) and after (with the relative matching rule and the image cue), from the
same match tables.

Stacks: sections 0-11 of ISBI 2012 `train_raw` (512 x 512), Drosophila VNC stack 1 (central 512 x 512) and
the CREMI crop (250 x 250), each clean and with one defect in section 5 (`fold`, `crack`, `dirt` of
tests/alignment/test_defects_real.py); and the whole clean stacks (ISBI 30 sections, VNC 20 x 1024 x 1024,
CREMI 50 x 250 x 250 in its stored order). Each is aligned once with `connectome align` (its defaults); the
global step's screen is then re-run on the match tables (`solve_step.screen`, `section_flags`) and the region
flags taken both ways. A defect counts as detected where a flagged patch of section 5 touches it and none
lies away from it.

Run: .venv/bin/python benchmarks/defects.py [--work DIR] [--out benchmarks/results/defects.md]
(the aligned stacks are kept in DIR and resumed on a re-run)

The global step's time (`solve_step.SolveStep.run`, whose image cue reads every usable section whole) on a
synthetic stack of identical sections under independent noise (every section usable, none flagged), its match
tables made once by `align_match` (patch 64, stride 256, search 16, one level: the image cue does not depend on
them) and kept in DIR; the step is timed run here (no Dask client) and as one task on a local cluster of
`--workers` processes (as `connectome align` runs it):

    .venv/bin/python benchmarks/defects.py timing [--sections 200] [--side 1024] [--workers 2] [--repeat 3]
        [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests" / "alignment"))
sys.path.insert(0, str(ROOT / "tests"))

from test_defects_real import INSERT, touched  # noqa: E402

from connectome.alignment.defects import region_flags, section_flags  # noqa: E402
from connectome.alignment.overlap import SectionImages  # noqa: E402
from connectome.alignment.solve_step import SolveSettings, load_matches, screen  # noqa: E402

SETS = {"isbi": ("isbi2012/isbi2012.npz", "train_raw", (50, 4, 4)),
        "vnc": ("drosophila_vnc_sstem/vnc_stack1.npz", "raw", (50, 4.6, 4.6)),
        "cremi": ("cremi_sstem_crop/cremi_train.npz", "raw", (40, 4, 4))}
SECTIONS, DEFECT, SIDE = 12, 5, 512


def crop(name: str, whole: bool) -> np.ndarray:
    relative, key, _ = SETS[name]
    with np.load(DATA / relative) as f:
        raw = f[key]
    if whole:
        return raw
    h, w = raw.shape[1:]
    s = min(SIDE, h, w)
    return np.ascontiguousarray(raw[:SECTIONS, (h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2])


def aligned(work: str, label: str, data: np.ndarray, voxel) -> tuple[str, str]:
    raw = os.path.join(work, f"{label}.npz")
    if not os.path.exists(raw):
        np.savez(raw, raw=data)
    out = os.path.join(work, label)
    cmd = [sys.executable, "-m", "connectome.cli", "align", f"{raw}#raw", out, "--voxel-size",
           *(str(v) for v in voxel), "--section-order", "keep", "--json", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr[-2000:]}")
    return out, f"{raw}#raw"


def flags_both_ways(out: str, raw: str):
    m = load_matches(os.path.join(out, "tables", "matches"))
    s = SolveSettings()
    fits, good, measurable, _, _ = screen(m, s)
    count, total, total_sq, zeros = m.stats.T
    flags = section_flags(count, total, total_sq, zeros, good, measurable, s.min_std, s.max_zero_fraction,
                          s.min_good_fraction)
    before = region_flags(good, measurable, flags)
    after = region_flags(good, measurable, flags, corr=m.corr, fits=fits, images=SectionImages(raw), nodes=m.nodes,
                         patch=m.patch)
    return flags, before, after, m


def synthetic_tables(work: str, sections: int, side: int, workers: int, client) -> tuple[str, str]:
    """(raw address, match tables directory) of the timing stack, made (or resumed) in `work`."""
    from connectome.cluster.client import ClusterConfig
    from connectome.core.geometry import Box
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume, open_volume
    from connectome.synth import generate

    raw = os.path.join(work, f"synthetic_{sections}x{side}.zarr")
    done = os.path.join(raw, ".written")
    if not os.path.exists(done):
        base = generate((1, side, side), (40.0, 4.0, 4.0), seed=3).raw[0].astype(np.float64)
        vol = create_volume(raw, (sections, side, side), np.uint8, (1, min(side, 512), min(side, 512)),
                            (40.0, 4.0, 4.0))
        rng = np.random.default_rng(3)
        for z in range(sections):
            section = np.clip(np.rint(base + rng.normal(0, 4.0, base.shape)), 0, 255).astype(np.uint8)
            vol.write(Box((z, 0, 0), (1, side, side)), section[None])
        Path(done).touch()
    assert open_volume(raw).shape == (sections, side, side)
    out = os.path.join(work, f"synthetic_{sections}x{side}_out")
    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=(16, 512, 512)),
                       cluster=ClusterConfig(n_workers=workers),
                       stages=[StageConfig(stage="align_match",
                                           params={"patch": 64, "stride": 256, "search": 16, "levels": 1})])
    execute(plan_run(config), client, progress=False)
    return raw, os.path.join(out, "tables", "matches")


def _imported() -> None:
    import connectome.alignment.solve_step  # noqa: F401


def timing(args) -> None:
    import logging
    import time

    from distributed import Client, LocalCluster

    from connectome.alignment.solve_step import SolveStep

    os.makedirs(args.work, exist_ok=True)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        raw, tables = synthetic_tables(args.work, args.sections, args.side, args.workers, client)
        client.run(_imported)  # as after `align_match`'s blocks: the workers have imported the alignment
        step = SolveStep(tables, os.path.join(args.work, "timing", "transforms.npz"), SolveSettings(), raw)
        on_worker = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            summary = client.submit(step.run, pure=False).result()
            on_worker.append(round(time.perf_counter() - start, 2))
    finally:
        client.close()
        cluster.close()
    start = time.perf_counter()
    here = step.run()  # no Dask client in this process now
    alone = time.perf_counter() - start
    print(json.dumps({"sections": args.sections, "side": args.side, "workers": args.workers,
                      "step_on_a_worker_s": on_worker, "step_here_s": round(alone, 2),
                      "flagged_regions": [summary["flagged_regions"], here["flagged_regions"]],
                      "flagged_sections": [len(summary["flagged_sections"]), len(here["flagged_sections"])]}))


def main() -> None:
    if sys.argv[1:2] == ["timing"]:
        parser = argparse.ArgumentParser(prog="defects.py timing")
        parser.add_argument("--sections", type=int, default=200)
        parser.add_argument("--side", type=int, default=1024)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--work", default="/tmp/defects_timing")
        parser.add_argument("--repeat", type=int, default=3, help="runs of the step on a worker (each timed)")
        timing(parser.parse_args(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/defects_bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "defects.md"))
    parser.add_argument("--sets", nargs="+", default=sorted(SETS))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for name in args.sets:
        voxel = SETS[name][2]
        clean = crop(name, whole=False)
        for kind in ["clean", *sorted(INSERT)]:
            data = clean.copy()
            where = None
            if kind != "clean":
                data[DEFECT], where = INSERT[kind](data[DEFECT])
            out, raw = aligned(args.work, f"{name}_{kind}", data, voxel)
            flags, before, after, m = flags_both_ways(out, raw)
            row = {"set": name, "stack": f"{len(data)} x {data.shape[1]} x {data.shape[2]}", "kind": kind,
                   "section_flags": {int(z): int(flags[z]) for z in np.nonzero(flags)[0]}}
            for label, regions in (("before", before), ("after", after)):
                if where is None:
                    row[label] = {"false": int(regions.sum()), "detected": None}
                else:
                    near = touched(where, m.nodes[0], m.nodes[1], m.patch)
                    here = regions[DEFECT]
                    others = int(np.delete(regions, DEFECT, axis=0).sum())
                    row[label] = {"detected": bool(here.any() and not (here & ~near).any()),
                                  "on_defect": int((here & near).sum()), "false": others + int((here & ~near).sum())}
            rows.append(row)
            print(json.dumps(row), flush=True)
        out, raw = aligned(args.work, f"{name}_whole", crop(name, whole=True), voxel)
        flags, before, after, m = flags_both_ways(out, raw)
        per = {label: {int(z): int(n) for z, n in enumerate(r.reshape(len(r), -1).sum(1)) if n}
               for label, r in (("before", before), ("after", after))}
        row = {"set": name, "stack": "whole " + " x ".join(str(v) for v in m.shape), "kind": "clean",
               "section_flags": {int(z): int(flags[z]) for z in np.nonzero(flags)[0]},
               "before": {"false": int(before.sum()), "detected": None, "per_section": per["before"]},
               "after": {"false": int(after.sum()), "detected": None, "per_section": per["after"]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(rows, args.out)


def write(rows: list[dict], path: str) -> None:
    def cell(r):
        d = r["detected"]
        return ("-" if d is None else ("yes" if d else "no")) + f" / {r['false']}"

    lines = ["# Region defect flags on real ssTEM stacks", "",
             "Made by `.venv/bin/python benchmarks/defects.py` (`connectome align` defaults: patch 64, stride 64, "
             "search 80; one defect in section 5). Each cell: detected (a flagged patch of section 5 on the "
             "defect, none away from it) / false flagged patches (on the other sections, or away from the "
             "defect). Before: the matching cue alone; after: the relative matching rule and the image cue "
             "(`connectome/alignment/defects.py`). Section flags (1 blank, 2 missing, 3 matches neither neighbour) "
             "take a section out whole and its patches are not region-flagged.", "",
             "| set | stack | defect | before | after | section flags |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['stack']} | {r['kind']} | {cell(r['before'])} | {cell(r['after'])} | "
                     f"{r['section_flags'] or '-'} |")
    whole = [r for r in rows if r["stack"].startswith("whole")]
    if whole:
        lines += ["", "False flagged patches per section of the whole clean stacks (section: patches):", ""]
        for r in whole:
            lines.append(f"- {r['set']}: before {r['before']['per_section'] or 'none'}; "
                         f"after {r['after']['per_section'] or 'none'}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""The `align` preset: align_match -> (global solve) -> align, planned and run like any chain."""

from __future__ import annotations

import json
import os
import time

from connectome.alignment.reordering import (
    checked_order,
    in_recovered_order,
    order_finding,
    order_report,
    say_order,
    with_finding,
)
from connectome.cluster.client import ClusterConfig
from connectome.core.address import absolute
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import Plan, check_plan_resumable, execute, plan_run


def alignment_config(raw: str, out_dir: str, block_shape=(16, 512, 512), chunk_shape=None, voxel_size=None,
                     cluster: ClusterConfig | None = None, match: dict | None = None,
                     solve: dict | None = None, section_order: str = "auto") -> RunConfig:
    """A RunConfig for the alignment chain; `match` and `solve` are the two stages' parameters. Sections stored
    out of order (`section_order`: see `connectome.alignment.section_order`) are aligned, and the aligned volume
    written, in the order recovered from the images."""
    stages = [StageConfig(stage="align_match", params=match or {}), StageConfig(stage="align", params=solve or {})]
    order = checked_order(absolute(raw), voxel_size, section_order)
    if order is not None and say_order(raw, order, "aligning in the recovered order, the aligned volume is written "
                                                   "in it"):
        stages = in_recovered_order(stages, order.order)
    return with_finding(RunConfig(
        input=absolute(raw),
        output=os.path.abspath(out_dir),
        voxel_size=voxel_size,
        blocks=BlocksConfig(shape=tuple(block_shape), chunk_shape=tuple(chunk_shape) if chunk_shape else None),
        cluster=cluster or ClusterConfig(),
        stages=stages,
    ), order_finding(order))


def plan_alignment(config: RunConfig, overwrite: bool = False) -> Plan:
    """Validate input, parameters, blocks and resumability before any cluster starts."""
    plan = plan_run(config)
    check_plan_resumable(plan, overwrite)
    return plan


def run_alignment(plan: Plan, client, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the planned chain and summarise it (addresses, flagged sections, seconds per stage)."""
    out = plan.config.output
    start = time.perf_counter()
    reports = execute(plan, client, overwrite=overwrite, progress=progress)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "alignment", "solve.json")) as f:
        solve = json.load(f)
    return {
        "aligned": os.path.join(out, "aligned"),
        "defects": os.path.join(out, "defects"),
        "transforms": os.path.join(out, "alignment", "transforms.npz"),
        "sections": solve["sections"],
        "flagged_sections": solve["flagged_sections"],
        "flagged_regions": solve["flagged_regions"],
        "match_residual_median_px": solve["match_residual_median_px"],
        "patches_searched_again": solve.get("patches_searched_again", 0),
        "links": solve.get("links", []),  # (a solve from before 2026-12-06 recorded none)
        "breaks": solve.get("breaks", []),
        "seconds": round(seconds, 3),
        "stages": [r.to_json() for r in reports],
        **order_report(plan.config),
    }

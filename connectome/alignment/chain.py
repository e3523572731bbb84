"""The `align` preset: align_match -> (global solve) -> align, planned and run like any chain; and the label
volumes a lab carries with it (`--labels`, `--unalign`: `align_labels` / `unalign_labels`), one run each."""

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
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import Plan, check_outputs, check_plan_resumable, execute, plan_run

# what carries a label volume into each frame: option -> (stage, its output, the output's name in OUT_DIR)
CARRIERS = {"labels": ("align_labels", "aligned_labels"), "unalign": ("unalign_labels", "unaligned_labels")}


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


def recovered_order(config: RunConfig) -> list[int] | None:
    """The stored index of each aligned section where the alignment chain works in the recovered order, else None."""
    for stage in config.stages:
        if stage.stage == "reorder_sections":
            return [int(v) for v in stage.params["order"]]
    return None


def label_plans(config: RunConfig, labels=(), unalign=(), overwrite: bool = False) -> list[tuple[str, str, Plan]]:
    """(source, destination, plan) of each label volume to carry with the alignment `config` plans: `labels` (raw
    frame) into OUT/aligned_labels, OUT/aligned_labels_2, ... (`align_labels`), `unalign` (aligned frame: a
    segmentation of OUT/aligned) into OUT/unaligned_labels, ... (`unalign_labels`), in the order given; the same
    blocks, chunks and voxel size as `aligned`. Each is a run of its own whose done-markers live in its destination
    (so each resumes on its own), validated here before anything runs: a volume of another shape or voxel size,
    or not of integers, is one line."""
    order = recovered_order(config)
    plans = []
    for option, sources in (("labels", labels), ("unalign", unalign)):
        stage, output = CARRIERS[option]
        for i, source in enumerate(sources):
            name = output if i == 0 else f"{output}_{i + 1}"
            dst = os.path.join(config.output, name)
            address = absolute(source)
            if os.path.normpath(address) == os.path.normpath(dst):
                raise UserError(f"--{option} {source}: is the volume it would be written to ({dst}); expected a "
                                "volume outside it")
            carried = RunConfig(input=config.input, output=config.output, voxel_size=config.voxel_size,
                                blocks=config.blocks, cluster=config.cluster, retries=config.retries,
                                stages=[StageConfig(stage=stage, params={"order": order} if order else {},
                                                    inputs={"labels": address}, outputs={output: name})])
            try:
                plan = plan_run(carried, work_dir=dst, record_config=False)
            except UserError as e:  # (named by the option, not by the place of the stage in a config)
                raise UserError(f"--{option} {source}: {str(e).replace(f'stages.0 ({stage}): ', '')}") from None
            check_plan_resumable(plan, overwrite)
            check_outputs(plan, overwrite)
            plans.append((source, dst, plan))
    return plans


def run_label_plans(plans: list[tuple[str, str, Plan]], client, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Run the label plans (`label_plans`) after the alignment; their destinations by kind, and their reports."""
    out: dict[str, list] = {"aligned_labels": [], "unaligned_labels": [], "stages": []}
    for _, dst, plan in plans:
        reports = execute(plan, client, overwrite=overwrite, progress=progress)
        stage = plan.config.stages[0].stage
        out[next(o for s, o in CARRIERS.values() if s == stage)].append(dst)
        out["stages"].extend(r.to_json() for r in reports)
    return out

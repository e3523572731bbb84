"""The FFN segmentation chain as a run: ffn (per overlapping block) -> reconcile -> ffn_relabel."""

from __future__ import annotations

import os
import time

from connectome.alignment.footprints import check_mask_values, footprint_masking
from connectome.alignment.reordering import order_report, ordered_stages, with_finding
from connectome.cluster.client import ClusterConfig
from connectome.core.address import absolute
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.markers import DoneMarkers
from connectome.engine.plan import Plan, execute
from connectome.models.run_precision import recorded_precision


def ffn_config(raw: str, out_dir: str, model: str, block_shape=(64, 256, 256), chunk_shape=None, voxel_size=None,
               cluster: ClusterConfig | None = None, overlap=None, batch: int | None = None, reverse: bool = False,
               allow_voxel_mismatch: bool = False, mask: str | None = None, consensus: bool = False,
               agglomerate: bool = False, agree: float | None = None, precision: str | None = None, scale=None,
               consensus_model: str | None = None, weak_seed: str | None = None,
               seed_margin: int | None = None, step_budget: float | None = None, moves: str | None = None,
               section_order: str = "auto", blank_band: int | str | None = None,
               mask_values: list[int] | None = None, fill_blank: int | None = None) -> RunConfig:
    """A RunConfig for the FFN chain; the model is checked first (one line when unknown or not an FFN).
    With `consensus_model`, a second FFN's objects join the consensus (see `ffn.stages.FFNParams`).
    With `scale` (z, y, x), the network runs on the image downsampled by it (default: from the voxel sizes).
    `weak_seed` and `seed_margin`: the seed rules of `ffn.stages.FFNParams`, `step_budget` its bound on a block's
    FOV steps, `moves` its move rule (default: theirs). `agree`: FFN agglomeration's agreement threshold (default: the
    model's).
    With `mask` (nonzero = excluded; with `mask_values`, one of them), no seed starts, no object grows and no FOV
    moves into masked voxels; the padding of sections smaller than the stack's plane (`Volume.section_footprints`)
    is masked the same way.
    A model that reads affinities (`ffn.inputs`) gets the `affinities` stage of its affinity model first.
    Serial sections stored out of order are segmented in the order recovered from the images
    (`alignment.section_order.ordered_stages`). Blank regions and `blank_band` voxels beside them are masked too
    (`affinity.blank`; "off": not looked for), but for blank voxels with tissue within `fill_blank` sections above
    and below (default 2), which the networks read as the image interpolated between the two (a lost section is
    segmented through; 0: masked too)."""
    from connectome.ffn.inputs import affinity_model
    from connectome.ffn.registry import read_info, resolve_model_path

    try:
        reads = affinity_model(read_info(resolve_model_path(model)).input)
    except UserError as e:
        raise UserError(f"--method ffn: {e}") from None
    params: dict = {"model": model, "reverse": reverse}
    if consensus:
        params["consensus"] = True
    if consensus_model is not None:
        params["consensus_model"] = consensus_model
    if batch is not None:
        params["batch"] = batch
    if weak_seed is not None:
        params["weak_seed"] = weak_seed
    if seed_margin is not None:
        params["seed_margin"] = seed_margin
    if step_budget is not None:
        params["step_budget"] = step_budget
    if moves is not None:
        params["moves"] = moves
    if precision is not None:
        params["precision"] = precision
    if blank_band == "off":
        params["find_blank"] = False
    elif blank_band is not None:
        params["blank_band"] = blank_band
    fill = {} if fill_blank is None else {"fill_blank": fill_blank}
    params.update(fill)
    if overlap is not None:
        params["overlap"] = tuple(overlap)
    if scale is not None:
        params["scale"] = tuple(scale)
    if allow_voxel_mismatch:
        params["allow_voxel_mismatch"] = True
    image = {"affinities": "affinities"} if reads else {}
    mismatch = {"allow_voxel_mismatch": True} if allow_voxel_mismatch else {}
    prec = {"precision": precision} if precision is not None else {}
    blank = {k: params[k] for k in ("find_blank", "blank_band") if k in params}  # the affinities' blank regions too
    first = [StageConfig(stage="affinities", params={"model": reads, **mismatch, **prec, **blank, **fill})
             ] if reads else []
    mask_input, mask_stages = footprint_masking(raw, mask, check_mask_values(mask_values, mask))
    stages, finding = ordered_stages([
        *first,
        *mask_stages,
        StageConfig(stage="ffn", params=params, inputs={**image, **({"mask": mask_input} if mask_input else {})}),
        *(agglomeration_stages(model, allow_voxel_mismatch, image, precision,
                               0 if blank_band == "off" else fill_blank, agree) if agglomerate
          else [StageConfig(stage="ffn_relabel")])], raw, voxel_size, section_order, mask)
    return with_finding(RunConfig(
        input=absolute(raw), output=os.path.abspath(out_dir), voxel_size=voxel_size,
        blocks=BlocksConfig(shape=tuple(block_shape), chunk_shape=tuple(chunk_shape) if chunk_shape else None),
        cluster=cluster or ClusterConfig(), stages=stages), finding)


def agglomeration_stages(model: str, allow_voxel_mismatch: bool, image: dict | None = None,
                         precision: str | None = None, fill_blank: int | None = None,
                         agree: float | None = None) -> list[StageConfig]:
    """ffn_relabel writes `ffn_segments`; ffn_agglomerate tests their contacts (reading `image`'s inputs too, its
    blank voxels filled as the ffn stage's); ffn_merge writes `segmentation`."""
    params: dict = {"model": model, **({"allow_voxel_mismatch": True} if allow_voxel_mismatch else {}),
                    **({"precision": precision} if precision is not None else {}),
                    **({"fill_blank": fill_blank} if fill_blank is not None else {}),
                    **({"agree": agree} if agree is not None else {})}
    return [StageConfig(stage="ffn_relabel", outputs={"segmentation": "ffn_segments"}),
            StageConfig(stage="ffn_agglomerate", params=params, inputs=dict(image or {})),
            StageConfig(stage="ffn_merge")]


def run_ffn(plan: Plan, client, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the planned FFN chain and summarise it (`over_budget`: block index -> seeds its spent step budget kept
    from starting)."""
    start = time.perf_counter()
    reports = execute(plan, client, overwrite=overwrite, progress=progress)
    seconds = time.perf_counter() - start
    shape = plan.input_meta.shape
    out = plan.config.output
    return {"segmentation": os.path.join(out, "segmentation"), "ffn_fragments": os.path.join(out, "ffn_fragments"),
            "method": "ffn", "voxels": shape[0] * shape[1] * shape[2], "seconds": round(seconds, 3),
            "stages": [r.to_json() for r in reports], "blocks": len(DoneMarkers(plan.work_dir, "ffn").summaries()),
            "over_budget": over_budget(plan.work_dir), "precision": recorded_precision(plan.work_dir, "ffn"),
            **order_report(plan.config)}


def over_budget(work_dir: str) -> dict[int, int]:
    """The `ffn` blocks of a run that spent their step budget: index -> seeds not started."""
    return {i: int(s["over_budget"]) for i, s in DoneMarkers(work_dir, "ffn").summaries().items()
            if s.get("over_budget")}


def budget_warning(summary: dict) -> str | None:
    """The line that tells a user some blocks spent their step budget, or None."""
    spent = summary.get("over_budget") or {}
    if not spent:
        return None
    first = min(spent)
    return (f"warning: ffn: {len(spent)} of {summary['blocks']} blocks spent their step budget (block {first}: "
            f"{spent[first]} seeds not started); the voxels no object reached took the nearest object's label: "
            f"raise --ffn-step-budget (0: no limit)")

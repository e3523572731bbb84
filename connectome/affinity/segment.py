"""The affinity segmentation chain as a run: affinities -> fragments -> agglomerate -> relabel."""

from __future__ import annotations

import os
import sys
import time

from connectome.affinity.stages import AffinitiesStage
from connectome.alignment.footprints import check_mask_values, footprint_masking
from connectome.alignment.reordering import order_report, ordered_stages, with_finding
from connectome.cluster.client import ClusterConfig
from connectome.core.address import absolute
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import Plan, check_plan_resumable, execute, plan_run
from connectome.models.run_precision import recorded_precision

DEFAULT_THRESHOLD = 0.5
def two_d_model_warning(info) -> str | None:
    """The warning for a model trained on 2-D labels only (z affinity derived from x/y), else None."""
    if getattr(info, "z_affinity", "learned") != "from_xy":
        return None
    return (f"connectome: warning: model {info.name} was trained on 2-D labels only: its z affinities are "
            "derived from x/y, so on a 3-D volume it merges objects through neighbouring sections")


def warn_if_two_d_model(info, stream=None) -> str | None:
    """Print `two_d_model_warning` as one line on stderr (or `stream`); return it."""
    message = two_d_model_warning(info)
    if message is not None:
        print(message, file=stream if stream is not None else sys.stderr, flush=True)
    return message


def segmentation_config(
    raw: str,
    out_dir: str,
    model: str,
    block_shape=(64, 256, 256),
    chunk_shape=None,
    threshold: float | None = None,
    voxel_size=None,
    cluster: ClusterConfig | None = None,
    scoring: str | None = None,
    allow_voxel_mismatch: bool = False,
    edge_model: str | None = None,
    mask: str | None = None,
    tta: int | None = None,
    precision: str = "auto",
    min_segment_voxels: int | None = None,
    section_order: str = "auto",
    blank_band: int | str | None = None,
    fill_blank: int | None = None,
    mask_values: list[int] | None = None,
) -> RunConfig:
    """A RunConfig for the affinity chain; scoring and threshold default to the model's validated ones
    (learned scoring: its edge classifier's threshold). With `mask` (a uint8 volume of the raw's shape,
    nonzero = excluded), edges touching masked voxels get affinity 0 before the fragments; the padding of sections
    smaller than the stack's plane (`Volume.section_footprints`) is masked the same way. `tta` > 1 averages
    the affinities of that many flipped copies of each block (test-time augmentation; default: the model's).
    `min_segment_voxels`: segments under this size whose bounding box fits the model's `max_extent` join the
    neighbour they touch most after the merge (default: the model's; 0: none). `section_order`
    (`connectome.alignment.section_order`): serial sections stored out of order are segmented in the order
    recovered from the images (auto: where most stored neighbours are not neighbours; recover: always; keep:
    never), the segmentation written in the stored order. `blank_band`: voxels of tissue beside a blank region left
    out with it (`affinity.blank`; default the stage's, "off": blank regions are not looked for). `fill_blank`: the
    sections above and below from which the network's input interpolates a blank voxel (default the stage's; 0: none;
    `affinity.blank.fill_blank`). `mask_values`: the mask excludes only the voxels holding one of them (e.g. 2 3 of
    `align`'s defects: a lost section is then filled and predicted through, not a wall)."""
    from connectome.models.registry import read_info, resolve_model_path

    info = read_info(resolve_model_path(model))
    warn_if_two_d_model(info)
    if scoring is None:
        scoring = info.scoring
    agglomerate: dict = {}
    reads_image = False  # an edge classifier with the image's features: the agglomerate stage reads the raw too
    if scoring == "learned":
        from connectome.affinity.edge_classifier import (
            check_fitted_to,
            edges_path_for,
            load_classifier,
            resolve_edge_model,
        )

        edges = resolve_edge_model(edge_model) if edge_model else str(edges_path_for(model))
        if not os.path.isfile(edges):
            raise UserError(f"--scoring learned: model {model} has no edge classifier ({os.path.basename(edges)}); "
                            "give --edge-model FILE.json or train one with `connectome train edges`")
        check_fitted_to(edges, model)
        agglomerate = {"scoring": "learned", "edge_model": edges}
        classifier = load_classifier(edges)
        reads_image = classifier.reads_image
        if reads_image:  # the classifier reads the image as the network does: said here, as a mask stage may stand
            # between them (the agglomerate stage then cannot take it from the affinities stage)
            agglomerate["fill_blank"] = (0 if blank_band == "off" else fill_blank if fill_blank is not None
                                         else info.fill_blank)
        if threshold is None:
            threshold = classifier.threshold
    if threshold is None:
        threshold = info.threshold if info.threshold is not None else DEFAULT_THRESHOLD
        if info.threshold is None:
            print(f"connectome: warning: model {info.name} records no validated threshold (trained without "
                  f"--val-raw): merging at {DEFAULT_THRESHOLD}; give --threshold T", file=sys.stderr, flush=True)
    mask_input, mask_stages = footprint_masking(raw, mask, check_mask_values(mask_values, mask))
    masked = {"affinities": "masked_affinities"} if mask_input else {}
    absorb = dict(info.absorb)
    if min_segment_voxels is not None:
        if min_segment_voxels < 0:
            raise UserError(f"--min-segment-voxels {min_segment_voxels}: expected a number of voxels >= 0 (0: none)")
        absorb["min_voxels"] = min_segment_voxels
    if not absorb.get("min_voxels"):
        absorb = {}  # relabel's defaults, and its fingerprint from before the option
    stages = [
        StageConfig(stage="affinities", params={
            "model": model, **({"allow_voxel_mismatch": True} if allow_voxel_mismatch else {}),
            **({"tta": tta} if tta is not None else {}), **({"precision": precision} if precision != "auto" else {}),
            **({} if blank_band is None else {"find_blank": False} if blank_band == "off" else
               {"blank_band": blank_band}),
            **({} if fill_blank is None else {"fill_blank": fill_blank})}),
        *mask_stages,
        *([StageConfig(stage="mask_affinities", inputs={"mask": mask_input})] if mask_input else []),
        StageConfig(stage="fragments", inputs=masked, params={"in_plane": True} if info.in_plane else {}),
        StageConfig(stage="agglomerate", params=agglomerate,
                    inputs={**masked, **({"raw": "raw"} if reads_image else {})}),
        # learned: the tables' `sums` hold p(merge), which the merge averages like affinities
        StageConfig(stage="relabel", params={"threshold": threshold,
                                              "scoring": "mean" if scoring == "learned" else scoring, **absorb}),
    ]
    stages, finding = ordered_stages(stages, raw, voxel_size, section_order, mask)
    return with_finding(RunConfig(
        input=absolute(raw),
        output=os.path.abspath(out_dir),
        voxel_size=voxel_size,
        blocks=BlocksConfig(shape=tuple(block_shape), chunk_shape=tuple(chunk_shape) if chunk_shape else None),
        cluster=cluster or ClusterConfig(),
        stages=stages,
    ), finding)


def plan_segmentation(config: RunConfig, overwrite: bool = False) -> Plan:
    """Validate inputs, model, blocks and resumability before any cluster starts."""
    plan = plan_run(config)
    check_plan_resumable(plan, overwrite)
    return plan


def run_segmentation(plan: Plan, client, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the planned chain and summarise it (addresses, voxels, seconds per stage)."""
    config = plan.config
    start = time.perf_counter()
    reports = execute(plan, client, overwrite=overwrite, progress=progress)
    seconds = time.perf_counter() - start  # wall time, the global merge included
    shape = plan.input_meta.shape
    voxels = shape[0] * shape[1] * shape[2]
    return {
        "segmentation": os.path.join(config.output, "segmentation"),
        "affinities": os.path.join(config.output, "affinities"),
        "fragments": os.path.join(config.output, "fragments"),
        "threshold": next(s.params["threshold"] for s in config.stages if s.stage == "relabel"),
        "tta": next(p.stage.tta for p in plan.stages if isinstance(p.stage, AffinitiesStage)),  # model's unless given
        "precision": recorded_precision(plan.work_dir, "affinities"),
        "voxels": voxels,
        "seconds": round(seconds, 3),
        "stages": [r.to_json() for r in reports],
        **order_report(config),
    }


def check_method(method: str) -> None:
    if method not in ("affinities", "ffn"):
        raise UserError(f"--method {method}: expected 'affinities' or 'ffn'")

"""Runs on serial sections stored out of order: which runs check the order, and how a chain's stages are
rewired to work in the recovered order (`section_order` finds it) and to put their segmentation back."""

from __future__ import annotations

import sys

from connectome.alignment.section_order import (
    BAND,
    LOCAL_REACH,
    MAX_SECTIONS,
    MODES,
    SHUFFLED_BELOW,
    SectionOrder,
    section_order,
    serial_sections,
)
from connectome.core.address import absolute
from connectome.core.errors import UserError
from connectome.engine.config import RunConfig, StageConfig
from connectome.engine.registry import stage_class
from connectome.io import open_volume


def checked_order(address: str, voxel_size, mode: str = "auto") -> SectionOrder | None:
    """`section_order` of the raw volume at `address` for a run (segment, align), or None where it is not checked:
    `mode` keep; a volume with channels; under `auto`, a volume that is not serial sections (z voxel under twice
    the in-plane one, or the voxel size unknown). Under `auto` a stack of more than MAX_SECTIONS sections is
    checked for local disorder only (`section_order`)."""
    if mode not in MODES:
        raise UserError(f"--section-order {mode}: expected one of {', '.join(MODES)}")
    if mode == "keep":
        return None
    try:
        volume = open_volume(address)
    except UserError:
        return None  # planning the run says what is wrong with the input
    meta = volume.meta
    size = voxel_size if voxel_size is not None else (meta.voxel_size if meta.voxel_size_known else None)
    if meta.channels:  # not an EM image; the stage that reads it refuses it
        return None
    if mode == "auto" and (size is None or not serial_sections(size)):
        return None
    return section_order(volume, mode)


def order_warning(address: str, order: SectionOrder, what: str) -> str:
    """The one line that says a run works in the recovered order, and what it does with it (`what`)."""
    return (f"connectome: warning: the sections of {address} look out of order (only {order.kept_pairs:.0%} of "
            f"neighbouring sections are neighbours in the order recovered from the images; neighbour similarity "
            f"{order.stored_similarity:.2f} as stored, {order.recovered_similarity:.2f} recovered): {what} "
            "(--section-order keep: as stored)")


def kept_order_warning(address: str, order: SectionOrder) -> str | None:
    """Where the stored order is kept: the one line saying that a stack too long for `auto` looks out of order
    (`unrecovered`), or naming the sections that look out of place (`misplaced`); None where neither."""
    if order.unrecovered:
        return (f"connectome: warning: {address}: its {len(order.order)} sections look out of order (stored "
                f"neighbours are less than {SHUFFLED_BELOW:g} times as alike as sections {BAND} apart), but auto "
                f"recovers the order of up to {MAX_SECTIONS} sections only; the stored order is kept "
                "(--section-order recover: find the order, in a time that grows with the square of the sections)")
    if order.recovered or not order.misplaced:
        return None
    listed = ", ".join(str(z) for z in order.misplaced[:8]) + (", ..." if len(order.misplaced) > 8 else "")
    many = len(order.misplaced) > 1
    they, their = ("they are", "their") if many else ("it is", "its")
    return (f"connectome: warning: {address}: section{'s' if many else ''} {listed} (stored z) look"
            f"{'' if many else 's'} out of place: moved by up to {LOCAL_REACH} places, {they} more alike to {their} "
            "neighbours; the stored order is kept (--section-order recover: work in the order recovered from the "
            "images)")


def say_order(address: str, order: SectionOrder, what: str) -> bool:
    """Print on stderr the one line about a checked order: that the run works in the recovered order (`what`: what
    it does with it), or which sections look out of place in the stored order it keeps. True for the former."""
    line = order_warning(address, order, what) if order.recovered else kept_order_warning(address, order)
    if line:
        print(line, file=sys.stderr, flush=True)
    return order.recovered


def order_finding(order: SectionOrder | None) -> dict:
    """What a checked order says, for a run's `--json`: `{"order": "recovered", "sections": [...]}` where the run
    works in the recovered order; where it keeps the stored one, `{"order": "stored", "misplaced": [...]}` (the
    sections that look out of place) or `{"order": "stored", "out_of_order": true}` (a stack too long for `auto`);
    {} where there is nothing to say."""
    if order is None:
        return {}
    if order.recovered:
        return {"order": "recovered", "sections": list(order.order)}
    if order.unrecovered:
        return {"order": "stored", "out_of_order": True}
    if order.misplaced:
        return {"order": "stored", "misplaced": list(order.misplaced)}
    return {}


def with_finding(config: RunConfig, finding: dict) -> RunConfig:
    """`config` (a RunConfig) carrying `finding` (`order_finding`) for its `--json` (`order_report`)."""
    config._section_order = dict(finding)
    return config


def order_report(config: RunConfig) -> dict:
    """`{"section_order": ...}` for a run's `--json`: the order its stages (StageConfig) work in where they reorder
    its sections (`{"order": "recovered", "sections": [...]}`), else what the check found while the run was built
    (`order_finding`: sections out of place in the stored order it keeps), else {}."""
    for stage in config.stages:
        if stage.stage == "reorder_sections":
            return {"section_order": {"order": "recovered", "sections": list(stage.params["order"])}}
    finding = config._section_order
    return {"section_order": dict(finding)} if finding and finding.get("order") == "stored" else {}


def in_recovered_order(stages: list, order) -> list:
    """A chain's stages (StageConfig) run on the raw volume in `order` (stored index of each section): the
    `reorder_sections` stage first, every stage that reads the run's raw volume reading its copy instead; where
    the chain writes `segmentation`, it writes `ordered_segmentation`, and `restore_section_order` puts it back
    in the stored order last."""
    params = {"order": [int(v) for v in order]}
    renamed = {"raw": "ordered_raw", "segmentation": "ordered_segmentation"}
    out = [StageConfig(stage="reorder_sections", params=params)]
    writes_segmentation = False
    for stage in stages:
        cls = stage_class(stage.stage)
        optional = cls.optional_input_names()  # read only where the stage names them (agglomerate's raw)
        inputs = {name: renamed.get(stage.inputs.get(name, name), stage.inputs.get(name, name))
                  for name in cls.input_names()
                  if name in stage.inputs or (name in ("raw", "segmentation") and name not in optional)}
        outputs = dict(stage.outputs)
        for name in cls.output_names():
            if outputs.get(name, name) == "segmentation":
                outputs[name], writes_segmentation = "ordered_segmentation", True
        out.append(stage.model_copy(update={"inputs": inputs, "outputs": outputs}))
    if writes_segmentation:
        out.append(StageConfig(stage="restore_section_order", params=params, inputs={"ordered": "ordered_segmentation"},
                               outputs={"restored": "segmentation"}))
    return out


def ordered_stages(stages: list, raw: str, voxel_size, mode: str, mask: str | None = None) -> tuple[list, dict]:
    """A segmentation chain's stages as they run on `raw`: `in_recovered_order` where `checked_order` finds its
    sections out of order (said in one line on stderr), else as they are; and what the check found
    (`order_finding`). A `mask` is not reordered with the raw volume: such a run is refused."""
    order = checked_order(absolute(raw), voxel_size, mode)
    if order is not None and order.recovered and mask:
        raise UserError(f"--mask {mask}: the sections of {raw} look out of order, and a mask is not reordered "
                        "with them; give --section-order keep, or reorder the raw volume and the mask first")
    if order is None or not say_order(raw, order, "segmenting in the recovered order, the segmentation is written "
                                                  "in the stored order"):
        return stages, order_finding(order)
    return in_recovered_order(stages, order.order), order_finding(order)


def recorded_order(address: str) -> list[int] | None:
    """The recovered section order a run that wrote the volume at `address` (a local path) segmented it in: the
    `reorder_sections` stage of a run record in its folder that names it (a `segment` output's `segmentation`);
    None where none does, the order is the stored one, or the records cannot be read."""
    import os

    from connectome.engine.run_record import kept_runs

    path = os.path.normpath(os.path.abspath(address.split("#")[0]))
    directory, name = os.path.split(path)
    try:
        for record in kept_runs(directory):
            stages = [s for s in record.get("stages") or () if isinstance(s, dict)]
            names = {str(n) for s in stages for n in (s.get("outputs") or {}).values()} | {"segmentation"}
            for stage in stages:
                order = (stage.get("params") or {}).get("order")
                if stage.get("stage") == "reorder_sections" and name in names and isinstance(order, list):
                    if [int(v) for v in order] != list(range(len(order))):
                        return [int(v) for v in order]
    except (TypeError, ValueError, AttributeError):
        return None
    return None

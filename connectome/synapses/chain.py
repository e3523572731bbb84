"""The synapse chain as run stages (clefts, cleft_fragments, synapses, then the neurite types), to
append to a segmentation run or to run on a given segmentation."""

from __future__ import annotations

import os

from connectome.alignment.footprints import selected_mask
from connectome.engine.config import StageConfig
from connectome.synapses.stages import DEFAULT_MODEL
from connectome.synapses.table import SYNAPSES_FILE


def synapse_stages(model: str = DEFAULT_MODEL, segmentation: str | None = None, classifier: str | None = None,
                   allow_voxel_mismatch: bool = False, types: bool = True,
                   mask: str | None = None, fill_blank: int | None = None,
                   mask_values: list[int] | None = None) -> list[StageConfig]:
    """Stage configs; `segmentation` names the segmentation (default: the run's `segmentation` dataset);
    without `types`, the neurite type stages are left out (and a `classifier` is refused); `mask` (nonzero:
    no cleft there; with `mask_values`, only where it holds one of them: the `mask_values` stage first) is read by
    cleft_fragments; `fill_blank`: the clefts and segment_features stages' (`affinity.blank.fill_blank`;
    default their own)."""
    if classifier and not types:
        from connectome.core.errors import UserError

        raise UserError("--classifier names a neurite type classifier, but --no-types leaves the neurite types out")
    seg = {"segmentation": segmentation} if segmentation else {}
    mismatch = {"allow_voxel_mismatch": True} if allow_voxel_mismatch else {}
    fill = {} if fill_blank is None else {"fill_blank": fill_blank}
    clefts = {"model": model, **mismatch, **fill}
    mask, stages = selected_mask(mask, mask_values)
    stages += [
        StageConfig(stage="clefts", params=clefts),
        StageConfig(stage="cleft_fragments", params={"model": model},
                    inputs={**seg, **({"mask": mask} if mask else {})}),
        StageConfig(stage="synapses", params={"model": model}, inputs=seg),
    ]
    if types:
        stages += [StageConfig(stage="segment_features", params={**mismatch, **fill}, inputs=seg),
                   StageConfig(stage="neurite_types", params={**({"classifier": classifier} if classifier else {}),
                                                              **mismatch}, inputs=seg)]
    return stages


def synapse_outputs(out_dir: str, types: bool = True) -> dict[str, str]:
    from connectome.neurites.types import SEGMENTS_FILE

    paths = {"synapses": os.path.join(out_dir, SYNAPSES_FILE), "clefts": os.path.join(out_dir, "synapse_labels"),
             "cleft_probability": os.path.join(out_dir, "cleft_probability")}
    if types:
        paths.update(segments=os.path.join(out_dir, SEGMENTS_FILE),
                     neurite_classes=os.path.join(out_dir, "neurite_classes"))
    return paths

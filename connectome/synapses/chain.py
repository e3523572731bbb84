"""The synapse chain as run stages (clefts, cleft_fragments, synapses, then the neurite types), to
append to a segmentation run or to run on a given segmentation."""

from __future__ import annotations

import os

from connectome.engine.config import StageConfig
from connectome.synapses.stages import DEFAULT_MODEL
from connectome.synapses.table import SYNAPSES_FILE


def synapse_stages(model: str = DEFAULT_MODEL, segmentation: str | None = None, classifier: str | None = None,
                   allow_voxel_mismatch: bool = False) -> list[StageConfig]:
    """Stage configs; `segmentation` names the segmentation (default: the run's `segmentation` dataset)."""
    seg = {"segmentation": segmentation} if segmentation else {}
    clefts = {"model": model, **({"allow_voxel_mismatch": True} if allow_voxel_mismatch else {})}
    return [
        StageConfig(stage="clefts", params=clefts),
        StageConfig(stage="cleft_fragments", params={"model": model}, inputs=seg),
        StageConfig(stage="synapses", params={"model": model}, inputs=seg),
        StageConfig(stage="segment_features", inputs=seg),
        StageConfig(stage="neurite_types", params={"classifier": classifier} if classifier else {}, inputs=seg),
    ]


def synapse_outputs(out_dir: str) -> dict[str, str]:
    from connectome.neurites.types import SEGMENTS_FILE

    return {"synapses": os.path.join(out_dir, SYNAPSES_FILE), "segments": os.path.join(out_dir, SEGMENTS_FILE),
            "clefts": os.path.join(out_dir, "synapse_labels"),
            "cleft_probability": os.path.join(out_dir, "cleft_probability"),
            "neurite_classes": os.path.join(out_dir, "neurite_classes")}

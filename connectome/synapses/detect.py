"""The synapse chain in memory, on one array: what the stages compute blockwise, for validation
during training and for quick checks (the stages themselves run blockwise through the engine)."""

from __future__ import annotations

import math

import numpy as np

from connectome.core.geometry import Box
from connectome.synapses import model as M
from connectome.synapses.fragments import fragment_table, label_block
from connectome.synapses.interface import load_classifier
from connectome.synapses.merge import synapse_rows


def predict_volume(model: M.LoadedCleftModel, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 cleft probability and partner vectors for a whole array (mirrored at its faces, as blockwise)."""
    info = model.info
    c = info.context
    core = [math.ceil(s / d) * d for s, d in zip(raw.shape, info.divisor)]
    pad = [(ci, ci + pc - s) for ci, pc, s in zip(c, core, raw.shape)]
    src = np.pad(raw, pad, mode="symmetric" if min(raw.shape) == 1 else "reflect")
    prob, vec = M.predict(model, src)
    inner = tuple(slice(ci, ci + s) for ci, s in zip(c, raw.shape))
    return M.probability_as_uint8(prob[inner]), M.vectors_as_uint8(vec[(slice(None), *inner)])


def cleft_table(prob: np.ndarray, vectors: np.ndarray, seg: np.ndarray, info: M.CleftModelInfo, voxel_size,
                threshold: float | None = None, raw: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The cleft_fragments stage's table for one array (one block)."""
    box = Box.from_shape(seg.shape)
    frag = label_block(prob, info.threshold if threshold is None else threshold, 0)
    vec = M.vectors_from_uint8(vectors) if info.partners else None
    return fragment_table(frag, prob, vec, seg, box, box, box, info.vector_nm, voxel_size, raw)


def synapses_in_memory(prob: np.ndarray, vectors: np.ndarray, seg: np.ndarray, info: M.CleftModelInfo,
                       voxel_size, threshold: float | None = None, min_voxels: int | None = None,
                       split: bool = True, raw: np.ndarray | None = None, classifier: str | None = None,
                       table: dict[str, np.ndarray] | None = None) -> dict:
    """The synapse table's columns for one array, as the cleft_fragments and synapses stages make it
    (with `raw` and a partner `classifier` name: its pre partners, else the direction votes');
    `table`: cleft_table's result, already computed for this threshold."""
    if table is None:
        table = cleft_table(prob, vectors, seg, info, voxel_size, threshold, raw)
    clf = load_classifier(classifier) if classifier and raw is not None else None
    rows, _ = synapse_rows(table, info.min_voxels if min_voxels is None else min_voxels, voxel_size,
                           info.partners, split, clf)
    return rows

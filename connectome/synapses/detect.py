"""The synapse chain in memory, on one array: what the stages compute blockwise, for validation
during training and for quick checks (the stages themselves run blockwise through the engine)."""

from __future__ import annotations

import math

import numpy as np

from connectome.core.geometry import Box
from connectome.synapses import model as M
from connectome.synapses import partner_network as PN
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
                threshold: float | None = None, raw: np.ndarray | None = None,
                core_threshold: float | None = None, network: str | None = None) -> dict[str, np.ndarray]:
    """The cleft_fragments stage's table for one array (one block); `threshold` and `core_threshold`
    default to the model's; with `raw` and a partner `network`, its scores (partner_network.py)."""
    box = Box.from_shape(seg.shape)
    core = info.core_threshold if core_threshold is None and threshold is None else core_threshold
    frag = label_block(prob, info.threshold if threshold is None else threshold, 0, core)
    vec = M.vectors_from_uint8(vectors) if info.partners else None
    table = fragment_table(frag, prob, vec, seg, box, box, box, info.vector_nm, voxel_size, raw, core)
    if network and raw is not None:
        scores = PN.network_sums(table, raw, seg, prob, box, network)
        table["iface_stats"] = np.concatenate([table["iface_stats"], scores], 1)
    return table


def synapses_in_memory(prob: np.ndarray, vectors: np.ndarray, seg: np.ndarray, info: M.CleftModelInfo,
                       voxel_size, threshold: float | None = None, min_voxels: int | None = None,
                       split: bool = True, raw: np.ndarray | None = None, classifier: str | None = None,
                       table: dict[str, np.ndarray] | None = None, edge_min_voxels: int | None = None,
                       core_min_voxels: int | None = None, satellite_nm: float | None = None,
                       satellite_ratio: float | None = None, vote_split_voxels: int | None = None) -> dict:
    """The synapse table's columns for one array, as the cleft_fragments and synapses stages make it
    (with `raw` and a partner `classifier` name: its pre partners, else the direction votes');
    `table`: cleft_table's result, already computed for this threshold; `edge_min_voxels` (default:
    the model's when `min_voxels` is not given) for cleft objects cut by the array's faces;
    `core_min_voxels` (default: the model's when `table` is not given) splits objects by their cores;
    `satellite_nm` and `satellite_ratio` (default: the model's when `min_voxels` is not given) drop
    pieces of a larger synapse's density (merge.satellites); `vote_split_voxels` (default: the model's when
    `min_voxels` is not given) splits off other boutons' votes (merge.vote_splits)."""
    clf = load_classifier(classifier) if classifier and raw is not None else None
    if table is None:
        network = clf.network if clf and clf.network and PN.read_info(clf.network).fits(voxel_size) else None
        table = cleft_table(prob, vectors, seg, info, voxel_size, threshold, raw, network=network)
        core_min_voxels = info.core_min_voxels if core_min_voxels is None and threshold is None else core_min_voxels
    if min_voxels is None:
        edge_min_voxels = info.edge_min_voxels if edge_min_voxels is None else edge_min_voxels
        satellite_nm = info.satellite_nm if satellite_nm is None else satellite_nm
        vote_split_voxels = info.vote_split_voxels if vote_split_voxels is None else vote_split_voxels
    ratio = satellite_ratio if satellite_ratio is not None else info.satellite_ratio
    rows, _ = synapse_rows(table, info.min_voxels if min_voxels is None else min_voxels, voxel_size,
                           info.partners, split, clf, edge_min_voxels, core_min_voxels, satellite_nm, ratio,
                           vote_split_voxels)
    return rows

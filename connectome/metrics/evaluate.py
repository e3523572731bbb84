"""Evaluate a segmentation volume against a ground-truth volume, reading both box by box.

One pass over a BlockGrid: each block reads its box from both volumes, tabulates its contingency
table and reads the segment and gt ids at the skeleton nodes that fall inside it. Only those small
summaries are kept, so the volumes themselves never need to fit in memory. The one whole-volume
step is skeletonising the ground truth with kimimaro when no skeleton file is given; pass
precomputed skeletons (`Skeletons.save`) for volumes that do not fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from connectome.errors import UserError
from connectome.geometry import Block, BlockGrid
from connectome.metrics.contingency import Contingency, ContingencyAccumulator, check_label_dtype
from connectome.metrics.erl import expected_run_length
from connectome.metrics.rand import adapted_rand_stats
from connectome.metrics.skeletons import NodeLookup, Skeletons
from connectome.metrics.voi import voi_from_table
from connectome.volumes import Volume, open_volume

DEFAULT_BLOCK_SHAPE = (128, 256, 256)


@dataclass(frozen=True)
class BlockSummary:
    """What one block contributes: its table and the ids at the skeleton nodes inside it."""

    table: Contingency
    nodes: np.ndarray
    seg_at_nodes: np.ndarray
    gt_at_nodes: np.ndarray


def evaluate_block(seg: Volume, gt: Volume, block: Block, lookup: NodeLookup) -> BlockSummary:
    """Read one block's write box from both volumes and summarise it."""
    box = block.write_box
    s, g = seg.read(box), gt.read(box)
    table = Contingency.from_arrays(s, g)
    nodes, seg_values = lookup.values(block, s)
    _, gt_values = lookup.values(block, g)
    return BlockSummary(table, nodes, seg_values.astype(np.uint64), gt_values.astype(np.uint64))


def _open_pair(seg_address: str, gt_address: str) -> tuple[Volume, Volume]:
    seg, gt = open_volume(seg_address), open_volume(gt_address)
    for name, vol in (("seg", seg), ("gt", gt)):
        if vol.meta.channels is not None:
            raise UserError(f"{vol.address}: expected a label volume, found {vol.meta.channels} channels")
        try:
            check_label_dtype(vol.dtype, f"{name} {vol.address}")
        except TypeError as e:
            raise UserError(str(e)) from None
    if seg.shape != gt.shape:
        raise UserError(
            f"shape mismatch: seg {seg.address} is {list(seg.shape)}, gt {gt.address} is {list(gt.shape)}"
        )
    return seg, gt


def _skeletons_for(skeletons, gt: Volume, voxel_size) -> Skeletons:
    if isinstance(skeletons, Skeletons):
        return skeletons
    if skeletons is not None:
        return Skeletons.load(str(skeletons))
    return Skeletons.from_labels(gt.read(gt.box), voxel_size)  # whole-volume: see module docstring


def evaluate_volumes(
    seg_address: str,
    gt_address: str,
    block_shape: Sequence[int] = DEFAULT_BLOCK_SHAPE,
    skeletons: Skeletons | str | None = None,
    voxel_size: Sequence[float] | None = None,
) -> dict:
    """VOI, adapted Rand, ERL and merge/split counts of `seg_address` against `gt_address`.

    `skeletons`: a Skeletons, a path to a skeleton .npz, or None to skeletonise the gt with
    kimimaro. `voxel_size` (nm, z y x) defaults to the gt volume's own. Keys of the result:
    voi_split, voi_merge, voi, arand, arand_precision, arand_recall, erl_nm, max_erl_nm (ERL of the
    gt scored against itself), merges, splits, merged_edges, omitted_edges, skeletons,
    skeleton_length_nm, voxels, labelled_voxels, blocks, block_shape, voxel_size, seconds.
    """
    start = time.perf_counter()
    seg, gt = _open_pair(seg_address, gt_address)
    voxel_size = tuple(float(v) for v in (voxel_size or gt.meta.voxel_size))
    if len(voxel_size) != 3 or any(v <= 0 for v in voxel_size):
        raise UserError(f"voxel size: expected 3 positive values (z y x nm), found {list(voxel_size)}")
    grid = BlockGrid(gt.box, block_shape)
    skel = _skeletons_for(skeletons, gt, voxel_size)
    lookup = NodeLookup(skel, grid)

    tables = ContingencyAccumulator()
    seg_at_nodes = np.zeros(len(skel.nodes), np.uint64)
    gt_at_nodes = np.zeros(len(skel.nodes), np.uint64)
    for block in grid:
        part = evaluate_block(seg, gt, block, lookup)
        tables.add(part.table)
        seg_at_nodes[part.nodes] = part.seg_at_nodes
        gt_at_nodes[part.nodes] = part.gt_at_nodes
    table = tables.result()

    if not np.any(table.gt != 0):
        raise UserError(f"{gt.address}: ground truth has no labelled voxels (gt == 0 everywhere)")
    split, merge = voi_from_table(table)
    rand = adapted_rand_stats(table)
    run = expected_run_length(skel, seg_at_nodes, voxel_size)
    best = expected_run_length(skel, gt_at_nodes, voxel_size)
    return {
        "voi_split": split,
        "voi_merge": merge,
        "voi": split + merge,
        "arand": rand.error,
        "arand_precision": rand.precision,
        "arand_recall": rand.recall,
        "erl_nm": run.erl_nm,
        "max_erl_nm": best.erl_nm,
        "merges": run.merges,
        "splits": run.splits,
        "merged_edges": run.merged_edges,
        "omitted_edges": run.omitted_edges,
        "skeletons": int(len(np.unique(skel.skeleton_ids))),
        "skeleton_length_nm": run.total_length_nm,
        "voxels": table.total,
        "labelled_voxels": int(table.count[table.gt != 0].sum()),
        "blocks": len(grid),
        "block_shape": list(grid.block_shape),
        "voxel_size": list(voxel_size),
        "seconds": time.perf_counter() - start,
    }

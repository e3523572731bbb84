"""Which blocks hold fragments of which object: the index the joins work from.

Each object is owned by the block of the joining stage that holds the lower corner of the first
block (lowest index) with a fragment of it; that block's task joins it, so objects are joined in
parallel and one task holds only its own objects' fragments.
The index grows with (object, block) pairs, not with voxels.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Box

_BLOCK_FILE = re.compile(r"^(\d+)\.npz$")


def block_tables(tables_dir: str) -> list[tuple[int, str]]:
    """(block index, path) of every block's table in `tables_dir`, by block index."""
    found = []
    for name in os.listdir(tables_dir):
        m = _BLOCK_FILE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(tables_dir, name)))
    return sorted(found)


def build_index(tables_dir: str, sizes: bool = False) -> dict[str, np.ndarray]:
    """ids (sorted); per id the lower corner of its first block's write box (`owner`, voxels z y x);
    CSR `starts`/`blocks` of the blocks holding each id; `boxes` (block index -> write box offset and
    end, -1 for none); with `sizes`, the summed `voxels` column of the tables."""
    ids_parts, block_parts, voxel_parts, boxes = [], [], [], {}
    for index, path in block_tables(tables_dir):
        with np.load(path) as t:
            ids = t["ids"]
            boxes[index] = t["write_box"]
            ids_parts.append(ids)
            block_parts.append(np.full(ids.size, index, np.int64))
            if sizes:
                voxel_parts.append(t["voxels"])
    if not ids_parts:
        raise UserError(f"{tables_dir}: no block tables; run the stage that writes them first")
    ids = np.concatenate(ids_parts).astype(np.uint64)
    blocks = np.concatenate(block_parts)
    order = np.lexsort((blocks, ids))
    ids, blocks = ids[order], blocks[order]
    unique, starts = np.unique(ids, return_index=True)
    box_table = np.full((max(boxes) + 1, 6), -1, np.int64)
    for index, box in boxes.items():
        box_table[index] = box
    out = {"ids": unique, "owner": box_table[blocks[starts], :3], "blocks": blocks, "boxes": box_table,
           "starts": np.append(starts, ids.size).astype(np.int64)}
    if sizes:
        voxels = np.concatenate(voxel_parts).astype(np.int64)[order]
        out["voxels"] = np.add.reduceat(voxels, starts) if unique.size else np.zeros(0, np.int64)
    return out


def save_index(path: str, index: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, allow_pickle=False, **index)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def load_index(path: str) -> dict[str, np.ndarray]:
    """The index at `path`, cached per worker while the file is unchanged."""
    return _load(path, os.path.getmtime(path))


def owned_shards(index: dict[str, np.ndarray], write_box: Box) -> list[tuple[int, np.ndarray]]:
    """(shard, the rows of its objects in the index) of every shard whose owner corner (`shard_owner`) lies in
    `write_box` (so any grid of the joining stage writes every shard exactly once)."""
    owners = index["shard_owner"]
    mine = np.flatnonzero(np.all((owners >= np.array(write_box.offset)) & (owners < np.array(write_box.end)), axis=1))
    by_shard = np.argsort(index["shard"], kind="stable")
    bounds = np.searchsorted(index["shard"][by_shard], [mine, mine + 1])
    return [(int(shard), by_shard[lo:hi]) for shard, lo, hi in zip(mine, *bounds)]

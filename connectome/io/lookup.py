"""Fragment -> segment lookup tables: where they live, written atomically, read (cached per worker),
and applied to a block of fragments."""

from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np


def lut_path(tables_dir: str, params: dict, prefix: str = "lut") -> str:
    """Where the lookup table made with `params` from the tables in `tables_dir` lives (beside them)."""
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.normpath(os.path.join(tables_dir, os.pardir, f"{prefix}-{tag}.npz"))


def save_lut(path: str, keys: np.ndarray, values: np.ndarray) -> None:
    """Write a lookup table atomically (sorted fragment ids `keys` -> segment ids `values`)."""
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, fragments=keys, segments=values)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=2)
def _load_lut(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as t:
        return t["fragments"], t["segments"]


def load_lut(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The (fragments, segments) arrays of a lookup table, cached per worker while the file is unchanged."""
    return _load_lut(path, os.path.getmtime(path))


def relabel(fragments: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map fragment ids through the sorted lookup table; 0 stays 0."""
    out = np.zeros(fragments.shape, np.uint64)
    nz = fragments != 0
    ids = fragments[nz]
    if ids.size == 0:  # nothing segmented here (a masked block; a run that found no object has an empty table)
        return out
    idx = np.searchsorted(keys, ids)
    idx_clipped = np.minimum(idx, len(keys) - 1)
    if len(keys) == 0 or not np.array_equal(keys[idx_clipped], ids):
        raise RuntimeError("fragment ids missing from the lookup table; re-run the agglomerate stage")
    out[nz] = values[idx_clipped]
    return out


# Sharded tables: one file per block, so relabelling a block reads only that block's fragments.

def shards_path(tables_dir: str, params: dict, prefix: str = "lut") -> str:
    """Where the lookup table made with `params` lives sharded by block: a directory beside the tables."""
    return lut_path(tables_dir, params, prefix)[: -len(".npz")] + ".shards"


def shard_path(directory: str, block: int) -> str:
    return os.path.join(directory, f"{block}.npz")


def save_shard(directory: str, block: int, keys: np.ndarray, values: np.ndarray) -> None:
    """Write block `block`'s part of a lookup table atomically (its fragments, sorted -> segments)."""
    os.makedirs(directory, exist_ok=True)
    order = np.argsort(keys, kind="stable")
    path = shard_path(directory, block)
    tmp = os.path.join(directory, f".{block}.{os.getpid()}.tmp.npz")
    np.savez(tmp, fragments=np.asarray(keys, np.uint64)[order], segments=np.asarray(values, np.uint64)[order])
    os.replace(tmp, path)


def save_shards(directory: str, keys: np.ndarray, values: np.ndarray) -> None:
    """Split a whole lookup table (sorted `keys` -> `values`) into one shard per block, by the block
    each fragment id names (`core.ids`: the high 32 bits)."""
    owner = (np.asarray(keys, np.uint64) >> np.uint64(32)).astype(np.int64)
    blocks, start = np.unique(owner, return_index=True)
    stop = np.append(start[1:], len(keys))
    for block, a, b in zip(blocks.tolist(), start.tolist(), stop.tolist()):
        save_shard(directory, block, keys[a:b], values[a:b])
    os.makedirs(directory, exist_ok=True)


def load_shard(directory: str, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The (fragments, segments) of one block's shard."""
    with np.load(shard_path(directory, block)) as t:
        return t["fragments"], t["segments"]

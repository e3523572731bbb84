"""Neuroglancer's sharded format (`neuroglancer_uint64_sharded_v1`): many values keyed by uint64 in a few
shard files, each read with two small range requests (shard index, minishard index) and one for the value.

A key goes to shard `(h >> minishard_bits) & (2**shard_bits - 1)` and minishard `h & (2**minishard_bits - 1)`
of its hash h (murmurhash3_x86_128 of the 8 little-endian key bytes, low 64 bits). A shard file
(`<shard in hex>.shard`) is: the shard index (per minishard: uint64 start, end of its minishard index,
relative to the end of the shard index), the values, then the minishard indices (uint64 [3, n]: keys,
value starts and value sizes, the first two delta-coded; starts relative to the end of the shard index).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

SPEC_TYPE = "neuroglancer_uint64_sharded_v1"


def sharding_spec(n_keys: int, total_bytes: int, shard_bytes: int = 64 << 20, minishard_keys: int = 256) -> dict:
    """Shard and minishard bits so that a shard holds about `shard_bytes` and a minishard about
    `minishard_keys` keys (as igneous sizes them); raw encoding, murmurhash."""
    shard_bits = max(0, math.ceil(math.log2(max(1.0, total_bytes / shard_bytes))))
    per_shard = n_keys / 2**shard_bits
    minishard_bits = max(0, math.ceil(math.log2(max(1.0, per_shard / minishard_keys))))
    return {"@type": SPEC_TYPE, "preshift_bits": 0, "hash": "murmurhash3_x86_128",
            "minishard_bits": minishard_bits, "shard_bits": shard_bits,
            "minishard_index_encoding": "raw", "data_encoding": "raw"}


def hashed(keys: Iterable[int], spec: dict) -> np.ndarray:
    from cloudvolume.datasource.precomputed import mmh3

    keys = np.asarray(list(keys), np.uint64) >> np.uint64(spec["preshift_bits"])
    if spec["hash"] == "identity":
        return keys
    return np.array([mmh3.hash64(np.uint64(k).tobytes(), x64arch=False)[0] & (2**64 - 1) for k in keys], np.uint64)


def locate(keys: Iterable[int], spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """(shard, minishard) of each key."""
    h = hashed(keys, spec)
    minishard = h & np.uint64(2 ** spec["minishard_bits"] - 1)
    shard = (h >> np.uint64(spec["minishard_bits"])) & np.uint64(2 ** spec["shard_bits"] - 1)
    return shard.astype(np.int64), minishard.astype(np.int64)


def shard_name(shard: int, spec: dict) -> str:
    return f"{shard:0{math.ceil(spec['shard_bits'] / 4)}x}.shard"


def encode_shard(entries: list[tuple[int, bytes, bytes]], spec: dict) -> bytes:
    """One shard file from (key, value, prefix) of the keys that hash to it; `prefix` is stored right
    before the value but outside it (the multi-resolution mesh format keeps an object's fragments
    there, in front of its manifest)."""
    n_mini = 2 ** spec["minishard_bits"]
    keys = [k for k, _, _ in entries]
    _, minishards = locate(keys, spec) if entries else (None, np.zeros(0, np.int64))
    order = sorted(range(len(entries)), key=lambda i: (int(minishards[i]), keys[i]))
    data, at = [], 0
    rows: list[list[tuple[int, int, int]]] = [[] for _ in range(n_mini)]
    for i in order:
        key, value, prefix = entries[i]
        data += [prefix, value]
        at += len(prefix)
        rows[int(minishards[i])].append((key, at, len(value)))
        at += len(value)
    index = np.zeros((n_mini, 2), "<u8")
    tails = []
    for m, row in enumerate(rows):
        if not row:
            index[m] = at
            continue
        k = np.array([r[0] for r in row], np.uint64)
        start = np.array([r[1] for r in row], np.uint64)
        size = np.array([r[2] for r in row], np.uint64)
        table = np.stack([np.diff(k, prepend=np.uint64(0)),
                          start - np.concatenate([[np.uint64(0)], start[:-1] + size[:-1]]).astype(np.uint64), size])
        encoded = table.astype("<u8").tobytes()
        index[m] = (at, at + len(encoded))
        tails.append(encoded)
        at += len(encoded)
    return index.tobytes() + b"".join(data) + b"".join(tails)


def read_value(directory: str, key: int, spec: dict) -> tuple[bytes, str, int] | None:
    """(value, shard file, the value's offset in that file) of `key`, or None when it is not stored."""
    import os

    shard, minishard = (int(v[0]) for v in locate([key], spec))
    path = os.path.join(directory, shard_name(shard, spec))
    if not os.path.isfile(path):
        return None
    base = 16 * 2 ** spec["minishard_bits"]
    with open(path, "rb") as f:
        f.seek(16 * minishard)
        start, end = (int(v) for v in np.frombuffer(f.read(16), "<u8"))
        f.seek(base + start)
        table = np.frombuffer(f.read(end - start), "<u8").reshape(3, -1)
        keys = np.cumsum(table[0])
        ends = np.cumsum(table[1] + np.concatenate([[0], table[2][:-1]]).astype(np.uint64))
        hit = np.flatnonzero(keys == np.uint64(key))
        if hit.size == 0:
            return None
        offset = base + int(ends[hit[0]])
        f.seek(offset)
        return f.read(int(table[2][hit[0]])), path, offset

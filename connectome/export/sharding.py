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
from collections.abc import Iterable, Sequence

import numpy as np

SPEC_TYPE = "neuroglancer_uint64_sharded_v1"
Data = bytes | memoryview  # bytes, or a view of them (an array's `.data`)


def sharding_spec(n_keys: int, total_bytes: int, shard_bytes: int = 64 << 20, minishard_keys: int = 256) -> dict:
    """Shard and minishard bits so that a shard holds about `shard_bytes` and a minishard about
    `minishard_keys` keys (as igneous sizes them); raw encoding, murmurhash."""
    shard_bits = max(0, math.ceil(math.log2(max(1.0, total_bytes / shard_bytes))))
    per_shard = n_keys / 2**shard_bits
    minishard_bits = max(0, math.ceil(math.log2(max(1.0, per_shard / minishard_keys))))
    return {"@type": SPEC_TYPE, "preshift_bits": 0, "hash": "murmurhash3_x86_128",
            "minishard_bits": minishard_bits, "shard_bits": shard_bits,
            "minishard_index_encoding": "raw", "data_encoding": "raw"}


def _keys(keys: Iterable[int]) -> np.ndarray:
    return keys.astype(np.uint64) if isinstance(keys, np.ndarray) else np.asarray(list(keys), np.uint64)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def murmurhash3_x86_128_low64(keys: np.ndarray) -> np.ndarray:
    """The low 64 bits of murmurhash3_x86_128 (seed 0) of each key's 8 little-endian bytes, for all keys at once:
    the reference algorithm with its 16-byte block loop and tail switch unrolled for an 8-byte input."""
    words = np.ascontiguousarray(keys, "<u8").view("<u4").reshape(-1, 2)
    c1, c2, c3 = np.uint32(0x239B961B), np.uint32(0xAB0E9789), np.uint32(0x38B34AE5)
    length = np.uint32(8)
    h1 = (_rotl(words[:, 0] * c1, 15) * c2) ^ length  # tail bytes 0-3 (k1), then the length
    h2 = (_rotl(words[:, 1] * c2, 16) * c3) ^ length  # tail bytes 4-7 (k2)
    # h3 and h4 took no bytes: each is the length
    h1 = h1 + h2 + length + length
    h2 = h2 + h1
    h3 = _fmix(length + h1)
    h4 = _fmix(length + h1)
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = h1 + h2 + h3 + h4
    h2 = h2 + h1
    return (h2.astype(np.uint64) << np.uint64(32)) | h1.astype(np.uint64)


def hashed(keys: Iterable[int], spec: dict) -> np.ndarray:
    keys = _keys(keys) >> np.uint64(spec["preshift_bits"])
    if spec["hash"] == "identity":
        return keys
    if spec["hash"] != "murmurhash3_x86_128":
        raise ValueError(f"unknown sharding hash {spec['hash']!r}")
    return murmurhash3_x86_128_low64(keys)


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
    keys = np.array([k for k, _, _ in entries], np.uint64)
    _, minishards = locate(keys, spec)
    order = np.lexsort((keys, minishards))  # stable: entries of one key keep their order
    stored = [entries[i] for i in order]
    return shard_file(keys[order], minishards[order], np.array([len(v) for _, v, _ in stored], np.uint64),
                      b"".join(part for _, value, prefix in stored for part in (prefix, value)), spec,
                      np.array([len(p) for _, _, p in stored], np.uint64))


def shard_file(keys: np.ndarray, minishards: np.ndarray, sizes: np.ndarray, data: Data, spec: dict,
               prefixes: np.ndarray | None = None) -> bytes:
    """One shard file from its entries in stored order (`shard_parts`)."""
    return b"".join(shard_parts(keys, minishards, sizes, data, spec, prefixes))


def group_parts(counts: np.ndarray, widths: Sequence[int | np.ndarray]) -> np.ndarray:
    """Which part each item of a sequence of groups is: group g is `widths[0][g]` items of part 0, then
    `widths[1][g]` of part 1, ...; so `out[kind == p] = part_p` fills part p of every group in order."""
    parts = np.stack([np.broadcast_to(np.asarray(w, np.int64), counts.shape) for w in widths], 1).ravel()
    return np.repeat(np.tile(np.arange(len(widths), dtype=np.uint8), counts.size), parts)


def shard_parts(keys: np.ndarray, minishards: np.ndarray, sizes: np.ndarray, data: Data, spec: dict,
                prefixes: np.ndarray | None = None) -> tuple[bytes, Data, bytes]:
    """One shard file, as (shard index, data, minishard indices), from its entries in stored order (by minishard,
    then key): `keys`, their `minishards` (`locate`), the values' `sizes` in bytes, and `data`, each entry's prefix
    (`prefixes` bytes, none by default) and value concatenated in that order. Vectorised: no Python work per entry."""
    n_mini = 2 ** spec["minishard_bits"]
    keys = np.asarray(keys, np.uint64)
    minishards = np.asarray(minishards, np.int64)
    sizes = np.asarray(sizes, np.uint64)
    n = keys.size
    if n and (np.diff(minishards) < 0).any():
        raise ValueError("shard entries must be in stored order (by minishard)")
    ends = np.cumsum(sizes if prefixes is None else np.asarray(prefixes, np.uint64) + sizes, dtype=np.uint64)
    total = int(ends[-1]) if n else 0
    if total != memoryview(data).nbytes:
        raise ValueError(f"shard data holds {memoryview(data).nbytes} bytes, its entries {total}")
    counts = np.bincount(minishards, minlength=n_mini)
    # the minishard indices: per minishard uint64 [3, count] (keys, value starts, sizes), the keys and starts
    # delta-coded within the minishard (a start from the previous value's end)
    first = np.ones(n, bool)
    first[1:] = minishards[1:] != minishards[:-1]
    starts = ends - sizes
    key_deltas = keys.copy()
    key_deltas[1:] -= keys[:-1]
    key_deltas[first] = keys[first]
    start_deltas = starts.copy()
    start_deltas[1:] -= ends[:-1]
    start_deltas[first] = starts[first]
    table = np.empty(3 * n, "<u8")
    kind = group_parts(counts, (counts, counts, counts))
    for part, values in enumerate((key_deltas, start_deltas, sizes)):
        table[kind == part] = values
    index = np.empty((n_mini, 2), "<u8")
    index[:, 0] = total + 24 * (np.cumsum(counts) - counts)
    index[:, 1] = index[:, 0] + 24 * counts
    return index.tobytes(), data, table.tobytes()


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

"""The contingency table of two label volumes: (seg id, gt id) -> voxel count, built block by block.

Every segmentation metric here (VOI, adapted Rand, the majority mapping used by the synapse
partner check) is a function of this table, and the table of a volume is the sum of the tables
of any tiling of it. So a volume larger than memory is evaluated by reading it box by box,
tabulating each box and merging the tables: the result equals the whole-volume table exactly.
Memory grows with the number of distinct (seg, gt) pairs, not with the number of voxels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import fastremap
import numpy as np

# Voxels tabulated per step inside `from_arrays`: bounds the temporaries of a whole-array call.
SLAB_VOXELS = 1 << 24


def check_label_dtype(dtype, name: str) -> None:
    """Raise TypeError unless `dtype` is an integer dtype (labels are ids, not intensities)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{name}: expected integer labels, found dtype {dtype}")


def wrapped_ignore_id(labels: np.ndarray) -> int | None:
    """The largest value of a 32- or 64-bit unsigned label array where it occurs (-1 written unsigned: the 'ignore'
    label of CREMI-style files, which would be scored or learned as one object spanning all it covers), else None."""
    if labels.dtype.kind != "u" or labels.dtype.itemsize < 4 or not labels.size:
        return None
    top = np.iinfo(labels.dtype).max
    return int(top) if labels.max() == top else None


def _renumber(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels as 1..k in a small dtype, the original id of each new id 0..k as uint64)."""
    renumbered, mapping = fastremap.renumber(labels, start=1, preserve_zero=False)
    original = np.zeros(len(mapping) + 1, np.uint64)
    original[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(
        mapping.keys(), labels.dtype, len(mapping)
    ).astype(np.uint64)
    return renumbered, original


def _pairs_in_slab(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seg ids, gt ids, counts) of two equal-length 1-d label arrays, sorted by (seg, gt)."""
    # fastremap's hash-based renumbering is ~10x faster than a sort-based np.unique(return_inverse)
    seg_new, seg_ids = _renumber(seg)
    gt_new, gt_ids = _renumber(gt)
    n_gt = len(gt_ids)
    key_type = np.uint32 if len(seg_ids) * n_gt < 2**32 else np.uint64
    key = seg_new.astype(key_type)
    np.multiply(key, key_type(n_gt), out=key)
    np.add(key, gt_new.astype(key_type, copy=False), out=key)
    present, counts = fastremap.unique(key, return_counts=True)
    present = present.astype(np.int64)
    seg_col, gt_col = seg_ids[present // n_gt], gt_ids[present % n_gt]
    # renumbering follows first appearance, not id order: sort the (small) table
    order = np.lexsort((gt_col, seg_col))
    return seg_col[order], gt_col[order], counts.astype(np.int64)[order]


def _reduce(seg: np.ndarray, gt: np.ndarray, count: np.ndarray) -> Contingency:
    """Sum the counts of repeated (seg, gt) pairs; the result is sorted by (seg, gt)."""
    if len(seg) == 0:
        return Contingency.empty()
    order = np.lexsort((gt, seg))
    seg, gt, count = seg[order], gt[order], count[order]
    starts = np.flatnonzero(np.r_[True, (seg[1:] != seg[:-1]) | (gt[1:] != gt[:-1])])
    return Contingency(seg[starts], gt[starts], np.add.reduceat(count, starts))


@dataclass(frozen=True)
class Contingency:
    """Voxel counts per (seg id, gt id) pair, sorted by (seg, gt); ids are uint64.

    The table keeps gt == 0 (the metrics drop it themselves, adapted Rand needs its voxel count).
    """

    seg: np.ndarray
    gt: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> Contingency:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def from_arrays(cls, seg: np.ndarray, gt: np.ndarray) -> Contingency:
        """Tabulate two integer label arrays of one shape (signed ids are read as uint64)."""
        seg, gt = np.asarray(seg), np.asarray(gt)
        if seg.shape != gt.shape:
            raise ValueError(f"seg shape {seg.shape} != gt shape {gt.shape}")
        check_label_dtype(seg.dtype, "seg")
        check_label_dtype(gt.dtype, "gt")
        seg, gt = seg.reshape(-1), gt.reshape(-1)
        if seg.size == 0:
            return cls.empty()
        parts = [
            _pairs_in_slab(seg[i : i + SLAB_VOXELS], gt[i : i + SLAB_VOXELS])
            for i in range(0, seg.size, SLAB_VOXELS)
        ]
        if len(parts) == 1:
            return cls(*parts[0])
        return cls.merge(cls(*p) for p in parts)

    @classmethod
    def merge(cls, tables: Iterable[Contingency]) -> Contingency:
        """The table of the union of disjoint regions, from the regions' tables."""
        tables = list(tables)
        if not tables:
            return cls.empty()
        return _reduce(
            np.concatenate([t.seg for t in tables]),
            np.concatenate([t.gt for t in tables]),
            np.concatenate([t.count for t in tables]),
        )

    def __add__(self, other: Contingency) -> Contingency:
        return Contingency.merge([self, other])

    def __len__(self) -> int:
        return len(self.count)

    @property
    def total(self) -> int:
        """Number of voxels tabulated, gt == 0 included."""
        return int(self.count.sum())

    def labelled(self) -> Contingency:
        """The rows with gt != 0 (the voxels that VOI and adapted Rand score)."""
        keep = self.gt != 0
        return Contingency(self.seg[keep], self.gt[keep], self.count[keep])

    def equals(self, other: Contingency) -> bool:
        return (
            np.array_equal(self.seg, other.seg)
            and np.array_equal(self.gt, other.gt)
            and np.array_equal(self.count, other.count)
        )

    def majority_gt(self) -> tuple[np.ndarray, np.ndarray]:
        """(seg ids, gt id overlapping each most), gt == 0 only for segments lying wholly in gt == 0.

        Ties go to the smaller gt id. Used to translate segment ids into ground-truth ids.
        """
        if len(self) == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        # rank labelled overlaps above background ones, then by count, then by smaller gt id
        labelled = (self.gt != 0).astype(np.int8)
        order = np.lexsort((self.gt, -self.count, -labelled, self.seg))
        seg, gt = self.seg[order], self.gt[order]
        first = np.r_[True, seg[1:] != seg[:-1]]
        return seg[first], gt[first]


class ContingencyAccumulator:
    """Collects per-block tables and merges them in batches, so pending memory stays bounded."""

    def __init__(self, batch_rows: int = 1 << 22):
        self.batch_rows = batch_rows
        self._merged = Contingency.empty()
        self._pending: list[Contingency] = []
        self._pending_rows = 0

    def add(self, table: Contingency) -> None:
        self._pending.append(table)
        self._pending_rows += len(table)
        if self._pending_rows >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._merged = Contingency.merge([self._merged, *self._pending])
            self._pending, self._pending_rows = [], 0

    def result(self) -> Contingency:
        self._flush()
        return self._merged

"""The segment-feature sums of a volume in blocks, as the `segment_features` stage computes them."""

import numpy as np

from connectome.core.geometry import BlockGrid, Box, Context
from connectome.neurites.features import block_sums, combine


def whole_sums(seg: np.ndarray, raw: np.ndarray, voxel_size, **kw) -> dict:
    """The sums of the volume as one block."""
    whole = Box.from_shape(seg.shape)
    return combine([block_sums(seg, raw, whole, whole, whole, voxel_size, **kw)])


def _grid(seg: np.ndarray, shape, reach) -> BlockGrid:
    return BlockGrid.for_chunks(Box.from_shape(seg.shape), shape, shape, Context(reach, reach))


def _sums(seg, raw, block, voxel_size, **kw) -> dict:
    sl = block.read_box.to_slices()
    return block_sums(seg[sl], raw[sl], block.read_box, block.write_box, Box.from_shape(seg.shape), voxel_size, **kw)


def blockwise_sums(seg: np.ndarray, raw: np.ndarray, voxel_size, shape, reach, **kw) -> dict:
    """The sums of blocks of `shape`, each read with `reach` voxels of context, combined."""
    return combine([_sums(seg, raw, b, voxel_size, **kw) for b in _grid(seg, shape, reach)])


def interior_block_sums(seg: np.ndarray, raw: np.ndarray, voxel_size, shape, reach, **kw) -> dict:
    """The sums of one block inside the volume on y (its context there is `reach`, not the volume's face)."""
    block = next(b for b in _grid(seg, shape, reach) if b.read_box.offset[1] > 0)
    return _sums(seg, raw, block, voxel_size, **kw)

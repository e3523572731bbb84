"""Super-blocks of a block grid, level by level (the merge tree's layout), and the block of a fragment id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectome.core.ids import LOCAL_BITS


@dataclass(frozen=True)
class TreeLayout:
    """Super-blocks of a block grid: level k groups fanout^(k+1) blocks per axis."""

    grid: tuple[int, int, int]
    fanout: int = 4

    @property
    def levels(self) -> int:
        """Levels up to the first whose one super-block covers the grid."""
        level, side = 0, self.fanout
        while side < max(self.grid):
            level, side = level + 1, side * self.fanout
        return level + 1

    def shape(self, level: int) -> tuple[int, int, int]:
        side = self.fanout ** (level + 1)
        return tuple(-(-g // side) for g in self.grid)  # type: ignore[return-value]

    def count(self, level: int) -> int:
        return int(np.prod(self.shape(level)))

    def positions(self, blocks: np.ndarray) -> np.ndarray:
        """(n, 3) grid positions of block indices."""
        _, gy, gx = self.grid
        blocks = np.asarray(blocks, np.int64)
        return np.stack([blocks // (gy * gx), (blocks // gx) % gy, blocks % gx], axis=-1)

    def super_block(self, blocks: np.ndarray, level: int) -> np.ndarray:
        """The level-`level` super-block of each block index."""
        p = self.positions(blocks) // self.fanout ** (level + 1)
        _, sy, sx = self.shape(level)
        return (p[..., 0] * sy + p[..., 1]) * sx + p[..., 2]

    def corner(self, level: int, index: int) -> np.ndarray:
        _, sy, sx = self.shape(level)
        return np.array([index // (sy * sx), (index // sx) % sy, index % sx]) * self.fanout ** (level + 1)

    def blocks(self, level: int, index: int) -> np.ndarray:
        """Block indices of a super-block, ascending."""
        lo = self.corner(level, index)
        hi = np.minimum(lo + self.fanout ** (level + 1), self.grid)
        z, y, x = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        return np.sort(((z * self.grid[1] + y) * self.grid[2] + x).ravel())

    def children(self, level: int, index: int) -> list[int]:
        """Level-(level - 1) super-blocks inside super-block `index` of `level`."""
        lo = self.corner(level, index) // self.fanout ** level
        hi = np.minimum(lo + self.fanout, self.shape(level - 1))
        _, cy, cx = self.shape(level - 1)
        return [int((z * cy + y) * cx + x) for z in range(lo[0], hi[0]) for y in range(lo[1], hi[1])
                for x in range(lo[2], hi[2])]


def owner(fragments: np.ndarray) -> np.ndarray:
    """Block index of each global fragment id (`core.ids`)."""
    return (np.asarray(fragments, np.uint64) >> np.uint64(LOCAL_BITS)).astype(np.int64)

"""Integer voxel boxes, blocks and the block grid that tiles a volume (axis order z, y, x)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

from connectome.errors import UserError

Vec = tuple[int, int, int]


def _vec(values: Sequence[int], name: str) -> Vec:
    out = tuple(int(v) for v in values)
    if len(out) != 3:
        raise UserError(f"{name}: expected 3 values (z y x), found {len(out)}: {list(values)}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class Box:
    """An axis-aligned box of voxels: offset and shape in (z, y, x)."""

    offset: Vec
    shape: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset", tuple(int(v) for v in self.offset))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if len(self.offset) != 3 or len(self.shape) != 3:
            raise ValueError(f"Box needs 3-d offset and shape, got {self.offset}, {self.shape}")
        if any(s < 0 for s in self.shape):
            raise ValueError(f"Box shape must be non-negative, got {self.shape}")

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> "Box":
        return cls((0, 0, 0), tuple(shape))

    @classmethod
    def from_corners(cls, begin: Sequence[int], end: Sequence[int]) -> "Box":
        return cls(tuple(begin), tuple(max(0, e - b) for b, e in zip(begin, end)))

    @property
    def end(self) -> Vec:
        return tuple(o + s for o, s in zip(self.offset, self.shape))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def empty(self) -> bool:
        return self.size == 0

    def to_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, e) for o, e in zip(self.offset, self.end))  # type: ignore[return-value]

    def relative_to(self, outer: "Box") -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array holding `outer`."""
        return tuple(
            slice(o - oo, o - oo + s) for o, oo, s in zip(self.offset, outer.offset, self.shape)
        )  # type: ignore[return-value]

    def intersect(self, other: "Box") -> "Box":
        begin = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Box.from_corners(begin, end)

    def grow(self, context: Sequence[int]) -> "Box":
        return Box.from_corners(
            tuple(o - c for o, c in zip(self.offset, context)),
            tuple(e + c for e, c in zip(self.end, context)),
        )

    def shift(self, delta: Sequence[int]) -> "Box":
        return Box(tuple(o + d for o, d in zip(self.offset, delta)), self.shape)

    def contains(self, other: "Box") -> bool:
        return all(a <= b for a, b in zip(self.offset, other.offset)) and all(
            a >= b for a, b in zip(self.end, other.end)
        )

    def to_json(self) -> dict:
        return {"offset": list(self.offset), "shape": list(self.shape)}

    def __str__(self) -> str:
        return f"[{self.offset}..{self.end})"


@dataclass(frozen=True)
class Block:
    """One unit of blockwise work: where it reads (with context) and where it writes."""

    index: int
    grid_position: Vec
    read_box: Box
    write_box: Box

    def __str__(self) -> str:
        return f"block {self.index} {self.grid_position} write {self.write_box}"


@dataclass(frozen=True)
class BlockGrid:
    """Tiles `volume` with write boxes of `block_shape`; read boxes add `context`, clipped.

    Block indices are row-major over the grid (z slowest), so they are deterministic for a
    given volume and block shape. Write boxes are disjoint and cover the volume exactly once.
    """

    volume: Box
    block_shape: Vec
    context: Vec = (0, 0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_shape", _vec(self.block_shape, "block shape"))
        object.__setattr__(self, "context", _vec(self.context, "context"))
        if any(b <= 0 for b in self.block_shape):
            raise UserError(f"block shape: expected positive sizes, found {list(self.block_shape)}")
        if any(c < 0 for c in self.context):
            raise UserError(f"context: expected non-negative sizes, found {list(self.context)}")

    @classmethod
    def for_chunks(
        cls,
        volume: Box,
        block_shape: Sequence[int],
        chunk_shape: Sequence[int],
        context: Sequence[int] = (0, 0, 0),
    ) -> "BlockGrid":
        """A grid whose write boxes are whole chunks of the output; refuses a misfit shape."""
        block_shape = _vec(block_shape, "block shape")
        chunk_shape = _vec(chunk_shape, "chunk shape")
        if any(o % c for o, c in zip(volume.offset, chunk_shape)):
            raise UserError(
                f"volume offset {list(volume.offset)} is not aligned to chunk shape {list(chunk_shape)}"
            )
        bad = [b for b, c in zip(block_shape, chunk_shape) if b % c]
        if bad:
            raise UserError(
                f"block shape {list(block_shape)}: expected a multiple of the output chunk shape "
                f"{list(chunk_shape)} (write boxes must be chunk-aligned and disjoint)"
            )
        return cls(volume, block_shape, context)

    @property
    def grid_shape(self) -> Vec:
        return tuple(-(-s // b) for s, b in zip(self.volume.shape, self.block_shape))  # type: ignore[return-value]

    def __len__(self) -> int:
        g = self.grid_shape
        return g[0] * g[1] * g[2]

    def block(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(f"block index {index} outside 0..{len(self) - 1}")
        gz, gy, gx = self.grid_shape
        position = (index // (gy * gx), (index // gx) % gy, index % gx)
        begin = tuple(o + p * b for o, p, b in zip(self.volume.offset, position, self.block_shape))
        write = Box(begin, self.block_shape).intersect(self.volume)
        read = write.grow(self.context).intersect(self.volume)
        return Block(index, position, read, write)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Block]:
        for i in range(len(self)):
            yield self.block(i)

    def neighbours(self, index: int) -> list[int]:
        """Indices of the blocks that share a face with block `index` and follow it (+z, +y, +x)."""
        gz, gy, gx = self.grid_shape
        z, y, x = self.block(index).grid_position
        out = []
        for dz, dy, dx in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            p = (z + dz, y + dy, x + dx)
            if p[0] < gz and p[1] < gy and p[2] < gx:
                out.append((p[0] * gy + p[1]) * gx + p[2])
        return out

    def positions(self) -> Iterator[Vec]:
        return itertools.product(*(range(g) for g in self.grid_shape))  # type: ignore[return-value]

    def layout(self) -> dict:
        return {
            "volume": self.volume.to_json(),
            "block_shape": list(self.block_shape),
            "context": list(self.context),
        }

    def layout_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.layout(), sort_keys=True).encode()).hexdigest()[:16]

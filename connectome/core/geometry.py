"""Integer voxel boxes, blocks and the block grid that tiles a volume (axis order z, y, x)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from connectome.core.errors import UserError

Vec = tuple[int, int, int]


def _vec(values: Sequence[int], name: str) -> Vec:
    out = tuple(int(v) for v in values)
    if len(out) != 3:
        raise UserError(f"{name}: expected 3 values (z y x), found {len(out)}: {list(values)}")
    return out  # type: ignore[return-value]


def vec3(values: Sequence[int]) -> Vec:
    """Three integers (z, y, x) from any sequence of three numbers."""
    return _vec(values, "vector")


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
    def _exact(cls, offset: Vec, shape: Vec) -> Box:
        """A Box from tuples of 3 non-negative ints, unchecked (the block grid's hot path)."""
        box = object.__new__(cls)
        object.__setattr__(box, "offset", offset)
        object.__setattr__(box, "shape", shape)
        return box

    @classmethod
    def of(cls, offset: Iterable[int], shape: Iterable[int]) -> Box:
        """A Box from any two sequences of integers; raises ValueError unless both have 3 values."""
        o = tuple(int(v) for v in offset)
        s = tuple(int(v) for v in shape)
        if len(o) != 3 or len(s) != 3:
            raise ValueError(f"Box needs 3-d offset and shape, got {o}, {s}")
        return cls(o, s)

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> Box:
        return cls.of((0, 0, 0), shape)

    @classmethod
    def from_corners(cls, begin: Sequence[int], end: Sequence[int]) -> Box:
        return cls.of(begin, (max(0, e - b) for b, e in zip(begin, end)))

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

    def relative_to(self, outer: Box) -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array holding `outer`."""
        return tuple(
            slice(o - oo, o - oo + s) for o, oo, s in zip(self.offset, outer.offset, self.shape)
        )  # type: ignore[return-value]

    def intersect(self, other: Box) -> Box:
        begin = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Box.from_corners(begin, end)

    def grow(self, context: Sequence[int]) -> Box:
        return Box.from_corners(
            tuple(o - c for o, c in zip(self.offset, context)),
            tuple(e + c for e, c in zip(self.end, context)),
        )

    def shift(self, delta: Sequence[int]) -> Box:
        return Box.of((o + d for o, d in zip(self.offset, delta)), self.shape)

    def contains(self, other: Box) -> bool:
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
class Context:
    """What a block reads beyond its write box: `lower` voxels below it, `upper` above it.

    `multiple`: the write box is first padded (upwards) to a multiple of this, e.g. a network's
    downsampling factor. `clip`: the read box is cut at the volume's faces; when False it may leave
    the volume and the stage reads it mirrored (`io.reflected`), so every block sees the same values.
    """

    lower: Vec = (0, 0, 0)
    upper: Vec = (0, 0, 0)
    multiple: Vec = (1, 1, 1)
    clip: bool = True

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "multiple"):
            object.__setattr__(self, name, _vec(getattr(self, name), f"context {name}"))
        if any(c < 0 for c in self.lower + self.upper):
            raise UserError(f"context: expected non-negative sizes, found {list(self.lower)} / {list(self.upper)}")
        if any(m <= 0 for m in self.multiple):
            raise UserError(f"context multiple: expected positive sizes, found {list(self.multiple)}")

    @classmethod
    def of(cls, value: Context | Sequence[int]) -> Context:
        """A Context from itself or from one symmetric margin (z, y, x)."""
        if isinstance(value, Context):
            return value
        v = _vec(value, "context")
        return cls(v, v)

    @property
    def symmetric(self) -> bool:
        return self.lower == self.upper and self.multiple == (1, 1, 1) and self.clip

    def read_box(self, write: Box, volume: Box) -> Box:
        """The box a block with write box `write` reads."""
        (o0, o1, o2), (s0, s1, s2) = write.offset, write.shape
        (m0, m1, m2), (l0, l1, l2), (u0, u1, u2) = self.multiple, self.lower, self.upper
        lo = (o0 - l0, o1 - l1, o2 - l2)
        hi = (o0 - (-s0 // m0) * m0 + u0, o1 - (-s1 // m1) * m1 + u1, o2 - (-s2 // m2) * m2 + u2)
        if self.clip:
            (v0, v1, v2), (e0, e1, e2) = volume.offset, volume.end
            lo = (max(lo[0], v0), max(lo[1], v1), max(lo[2], v2))
            hi = (min(hi[0], e0), min(hi[1], e1), min(hi[2], e2))
        return Box._exact(lo, (max(0, hi[0] - lo[0]), max(0, hi[1] - lo[1]), max(0, hi[2] - lo[2])))

    def to_json(self):
        if self.symmetric:
            return list(self.lower)  # the layout of runs made before asymmetric contexts existed
        return {"lower": list(self.lower), "upper": list(self.upper), "multiple": list(self.multiple),
                "clip": self.clip}


@dataclass(frozen=True)
class BlockGrid:
    """Tiles `volume` with write boxes of `block_shape`; read boxes add `context`, clipped.

    Block indices are row-major over the grid (z slowest), so they are deterministic for a
    given volume and block shape. Write boxes are disjoint and cover the volume exactly once.
    """

    volume: Box
    block_shape: Vec
    context: Context = Context()

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_shape", _vec(self.block_shape, "block shape"))
        object.__setattr__(self, "context", Context.of(self.context))
        if any(b <= 0 for b in self.block_shape):
            raise UserError(f"block shape: expected positive sizes, found {list(self.block_shape)}")

    @classmethod
    def for_chunks(
        cls,
        volume: Box,
        block_shape: Sequence[int],
        chunk_shape: Sequence[int],
        context: Context | Sequence[int] = (0, 0, 0),
    ) -> BlockGrid:
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
        return cls(volume, block_shape, Context.of(context))

    @functools.cached_property
    def grid_shape(self) -> Vec:
        return tuple(-(-s // b) for s, b in zip(self.volume.shape, self.block_shape))  # type: ignore[return-value]

    def __len__(self) -> int:
        g = self.grid_shape
        return g[0] * g[1] * g[2]

    def block(self, index: int) -> Block:
        gz, gy, gx = self.grid_shape
        if not 0 <= index < gz * gy * gx:
            raise IndexError(f"block index {index} outside 0..{gz * gy * gx - 1}")
        index = int(index)
        position = (index // (gy * gx), (index // gx) % gy, index % gx)
        (v0, v1, v2), (e0, e1, e2) = self.volume.offset, self.volume.end
        b0, b1, b2 = self.block_shape
        begin = (v0 + position[0] * b0, v1 + position[1] * b1, v2 + position[2] * b2)
        shape = (min(b0, e0 - begin[0]), min(b1, e1 - begin[1]), min(b2, e2 - begin[2]))
        write = Box._exact(begin, shape)
        return Block(index, position, self.context.read_box(write, self.volume), write)

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

    def index_of(self, position: Sequence[int]) -> int:
        gz, gy, gx = self.grid_shape
        return (position[0] * gy + position[1]) * gx + position[2]

    def upstream(self, index: int) -> list[int]:
        """The blocks before `index` whose write boxes its read box overlaps: what a block that reads
        its neighbours' outputs must wait for, so that running blocks in parallel equals running
        them one by one in index order."""
        block = self.block(index)
        below = [-(-c // b) for c, b in zip(self.context.lower, self.block_shape)]  # blocks reached, rounded up
        above = [-(-(c + m - 1) // b) for c, m, b in zip(self.context.upper, self.context.multiple, self.block_shape)]
        reach = [range(-n, 0) for n in below]
        ahead = [range(1, n + 1) for n in above]
        out = []
        for d in itertools.product(*([*r, 0, *a] for r, a in zip(reach, ahead))):
            p = tuple(q + e for q, e in zip(block.grid_position, d))
            if any(not 0 <= q < g for q, g in zip(p, self.grid_shape)):
                continue
            other = self.index_of(p)
            if other < index and self.block(other).write_box.intersect(block.read_box).size > 0:
                out.append(other)
        return sorted(out)

    def reading(self, box: Box) -> list[int]:
        """Indices of the blocks whose read box overlaps `box` (in the grid's volume coordinates)."""
        c = self.context
        spans = []
        for lo, hi, v, b, g, below, above, m in zip(box.offset, box.end, self.volume.offset, self.block_shape,
                                                    self.grid_shape, c.lower, c.upper, c.multiple):
            first = max(0, (lo - above - (m - 1) - v) // b)  # (generous by the padding to `multiple`; checked below)
            last = min(g - 1, (hi - 1 + below - v) // b)
            spans.append(range(first, last + 1))
        return [i for i in (self.index_of(p) for p in itertools.product(*spans))
                if self.block(i).read_box.intersect(box).size > 0]

    def positions(self) -> Iterator[Vec]:
        return itertools.product(*(range(g) for g in self.grid_shape))  # type: ignore[return-value]

    def layout(self) -> dict:
        return {
            "volume": self.volume.to_json(),
            "block_shape": list(self.block_shape),
            "context": self.context.to_json(),
        }

    @classmethod
    def from_layout(cls, layout: dict) -> BlockGrid:
        """The grid `layout()` describes (as a fingerprint stores it)."""
        volume, context = layout["volume"], layout["context"]
        return cls(Box.of(volume["offset"], volume["shape"]), tuple(layout["block_shape"]),
                   Context(**context) if isinstance(context, dict) else Context.of(tuple(context)))

    def layout_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.layout(), sort_keys=True).encode()).hexdigest()[:16]

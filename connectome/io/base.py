"""The Volume interface every storage backend implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Box, Vec


@dataclass(frozen=True)
class VolumeMeta:
    """What a stage needs to know about a volume besides its voxels."""

    shape: Vec  # spatial (z, y, x)
    dtype: np.dtype
    chunk_shape: Vec  # spatial chunk of the store
    voxel_size: tuple[float, float, float]  # nm, (z, y, x)
    offset: Vec = (0, 0, 0)  # voxels, where voxel (0,0,0) sits in world space
    channels: int | None = None  # None for a scalar volume, else the length of a leading axis
    voxel_size_known: bool = True  # False for sources that carry no voxel size (npz, TIFF)
    # an unknown voxel size that the source's metadata suggests (another tool's OME-Zarr scale, which may be a
    # placeholder): taken for the run's input where none is given, never compared
    suggested_voxel_size: tuple[float, float, float] | None = None


def leading_axes(address: str, shape) -> tuple[int, int | None]:
    """How an array of `shape` holds a volume: (leading axes of length 1 to drop, channels or None). (z, y, x);
    (c, z, y, x) with c > 1; and either with leading axes of length 1, as OME-Zarr's (t, c, z, y, x) has them: a
    (1, z, y, x) or (1, 1, z, y, x) array is one image. One line otherwise."""
    lead = [int(n) for n in shape[:-3]]
    if len(shape) >= 3 and len(lead) <= 2:
        if all(n == 1 for n in lead):
            return len(lead), None
        if all(n == 1 for n in lead[:-1]):
            return len(lead) - 1, lead[-1]
    raise UserError(f"{address}: expected a 3-d (z, y, x) or 4-d (c, z, y, x) array, or one with leading axes of "
                    f"length 1 (t, c, z, y, x), found shape {tuple(int(n) for n in shape)}")


VOXEL_SIZE_RTOL = 1e-3  # voxel sizes this close are one (3.9999 nm in float metadata is 4 nm)


def same_voxel_size(a, b) -> bool:
    """Whether two voxel sizes (z, y, x nm) are one, within VOXEL_SIZE_RTOL: every command compares so."""
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=VOXEL_SIZE_RTOL, atol=0.0))


def check_same_place(address: str, meta: VolumeMeta, voxel_size, offset) -> None:
    """Refuse (one line) to write into an existing volume that another voxel size or offset places elsewhere in the
    world: its metadata would stay, and readers would draw the new data there."""
    voxel_size, offset = tuple(float(v) for v in voxel_size), tuple(int(o) for o in offset)
    if (meta.voxel_size_known and not same_voxel_size(meta.voxel_size, voxel_size)) or tuple(meta.offset) != offset:
        raise UserError(f"{address}: exists with voxel size {list(meta.voxel_size)} nm at offset {list(meta.offset)} "
                        f"(z y x), expected {list(voxel_size)} nm at {list(offset)} (pass --overwrite to replace it)")


class Volume(ABC):
    """A 3-d (or channels x 3-d) array on storage, read and written by boxes in voxel coordinates.

    Coordinates are 0-based array coordinates; `meta.offset` only records where the array sits in
    world space. Instances pickle as their address, so they travel to workers cheaply.
    """

    writable: bool = False

    def __init__(self, address: str):
        self.address = address

    @property
    @abstractmethod
    def meta(self) -> VolumeMeta: ...

    @property
    def shape(self) -> Vec:
        return self.meta.shape

    @property
    def dtype(self) -> np.dtype:
        return self.meta.dtype

    @property
    def box(self) -> Box:
        return Box.from_shape(self.meta.shape)

    def read(self, box: Box) -> np.ndarray:
        """Voxels in `box`, shaped (z, y, x) or (c, z, y, x)."""
        if not self.box.contains(box):
            raise ValueError(f"{self.address}: box {box} lies outside the volume {self.box}")
        return self._read(box)

    def write(self, box: Box, data: np.ndarray) -> None:
        if not self.writable:
            raise UserError(f"{self.address}: this volume is read-only")
        if not self.box.contains(box):
            raise ValueError(f"{self.address}: box {box} lies outside the volume {self.box}")
        expected = box.shape if self.meta.channels is None else (self.meta.channels, *box.shape)
        if tuple(data.shape) != tuple(expected):
            raise ValueError(f"{self.address}: data shape {data.shape} != box shape {expected}")
        self._write(box, np.ascontiguousarray(data, dtype=self.meta.dtype))

    @abstractmethod
    def _read(self, box: Box) -> np.ndarray: ...

    def _write(self, box: Box, data: np.ndarray) -> None:
        raise NotImplementedError

    def section_footprints(self) -> dict[int, tuple[int, int, int, int]]:
        """Sections that hold image data in part of their plane only: z -> (y0, x0, height, width) of that part
        (the rest is padding, e.g. a smaller section of a TIFF stack centred on the largest); {} for most volumes."""
        return {}

    def stored_chunks(self, box: Box) -> tuple[str, list[str]] | None:
        """(the directory of the stored chunks, keys of the chunk files that hold `box`), for
        backends on a local disk whose chunks are files; None where no such files exist."""
        return None

    def source_files(self, box: Box) -> tuple[str, list[str]] | None:
        """(a directory, the paths relative to it of the local files that hold `box`: chunk files, whether written
        or not, precomputed ones without their compression suffix, or the one file of an npz / HDF5 / TIFF volume), so
        a finished block can record what it read; None where the data are not local files (a remote store, a
        sharded precomputed layer)."""
        return None

    @staticmethod
    def _in_files(paths: list[str]) -> tuple[str, list[str]]:
        """`source_files` of a volume held by whole files (`paths`, local)."""
        root = os.path.dirname(os.path.abspath(paths[0])) if paths else ""
        return root, [os.path.relpath(os.path.abspath(p), root) for p in paths]

    def __reduce__(self):
        from connectome.io.open import open_volume

        return (open_volume, (self.address, "r+" if self.writable else "r"))

    def __repr__(self) -> str:
        m = self.meta
        ch = f"{m.channels}x" if m.channels else ""
        return f"<{type(self).__name__} {self.address} {ch}{m.shape} {m.dtype}>"

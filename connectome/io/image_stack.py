"""TIFF/PNG stacks: a directory of 2-d sections (natural sort order = z) or one multi-page TIFF.

Sections of a directory may differ in size, as a lab's raw sections often do before alignment: the volume is
as large as the largest section in y and in x, and each smaller section is read centred on it, padded with 0
(`padded`, `section_footprints`). The commands say so in one line (`engine.inputs`), `ingest` records the
footprints in the zarr it writes, and `align` flags the padding as outside the section. All sections must be
2-d and of one dtype; the headers of every file are read when the stack is opened (once per process), so a
stack that breaks either rule is refused before anything is written.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from dataclasses import dataclass

import numpy as np

from connectome.core.address import IMAGE_SUFFIXES
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io.base import Volume, VolumeMeta
from connectome.io.readonly import array_meta

PIL_DTYPES = {"1": "bool", "L": "uint8", "P": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16",
              "I": "int32", "F": "float32"}  # single-channel PIL modes; any other mode has channels


@dataclass(frozen=True)
class Padded:
    """A section smaller than the stack: its file, its own (y, x) shape, and where it sits in the stack's."""

    z: int
    file: str
    shape: tuple[int, int]
    offset: tuple[int, int]


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def _read_plane(path: str) -> np.ndarray:
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    import tifffile

    return tifffile.imread(path)


def _header(path: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of one section from its file header, without decoding the image."""
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in PIL_DTYPES:
                return (im.size[1], im.size[0]), PIL_DTYPES[im.mode]
        plane = _read_plane(path)
        return plane.shape, plane.dtype.name
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:  # the whole first series: a multi-page file is no 2-d section
            page = tf.series[0] if tf.series else tf.pages[0]
            return tuple(page.shape), np.dtype(page.dtype).name
    except (tifffile.TiffFileError, ValueError, IndexError) as e:
        raise UserError(f"{path}: not a readable TIFF section ({e})") from None


@functools.lru_cache(maxsize=8)
def _headers(files: tuple[str, ...], mtimes: tuple[float, ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """Every section's header; cached per process while no file changes (`mtimes`)."""
    return tuple(_header(p) for p in files)


def _section_files(address: str) -> list[str]:
    files = [p for p in glob.glob(os.path.join(address, "*")) if p.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise UserError(f"{address}: expected TIFF or PNG sections in this directory, found none")
    return sorted(files, key=_natural_key)


class ImageStackVolume(Volume):
    """A directory of 2-d TIFF/PNG sections (natural sort order = z) or one multi-page TIFF."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        import tifffile

        self._files: list[str] | None = None
        self._multipage: str | None = None
        self.padded: list[Padded] = []
        self._offsets: dict[int, tuple[int, int]] = {}
        if os.path.isdir(address):
            self._files = _section_files(address)
            headers = _headers(tuple(self._files), tuple(os.path.getmtime(p) for p in self._files))
            dtypes = [dtype for _, dtype in headers]
            usual = max(dtypes, key=dtypes.count)  # the odd file out is named, not the first section
            for path, (shape, dtype) in zip(self._files, headers):
                if len(shape) != 2:
                    raise UserError(f"{path}: expected a 2-d grayscale section, found shape {shape}")
                if dtype != usual:
                    example = os.path.basename(self._files[dtypes.index(usual)])
                    raise UserError(f"{path}: dtype {dtype}, expected {usual} as {dtypes.count(usual)} of the "
                                    f"{len(dtypes)} sections (e.g. {example}): a stack has one dtype")
            ny = max(shape[0] for shape, _ in headers)
            nx = max(shape[1] for shape, _ in headers)
            for z, (path, (shape, _)) in enumerate(zip(self._files, headers)):
                if shape != (ny, nx):
                    offset = ((ny - shape[0]) // 2, (nx - shape[1]) // 2)
                    self._offsets[z] = offset
                    self.padded.append(Padded(z, path, (int(shape[0]), int(shape[1])), offset))
            self._sections = headers
            shape3: tuple[int, ...] = (len(self._files), ny, nx)
            dtype3 = np.dtype(headers[0][1])
        elif os.path.isfile(address):
            with tifffile.TiffFile(address) as tf:
                series = tf.series[0]
                shape3, dtype3 = series.shape, series.dtype
            self._multipage = address
            if len(shape3) not in (2, 3):
                raise UserError(f"{address}: expected a grayscale TIFF stack (z, y, x), found shape {shape3}")
        else:
            raise UserError(f"{address}: no such file or directory")
        self._meta = array_meta(address, shape3, dtype3, voxel_size, None)

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def section_footprints(self) -> dict[int, tuple[int, int, int, int]]:
        return {p.z: (*p.offset, *p.shape) for p in self.padded}

    def source_files(self, box: Box) -> tuple[str, list[str]]:
        if self._files is None:
            return self._in_files([self._multipage or self.address])
        return self._in_files(self._files[max(box.offset[0], 0):box.end[0]])

    def _plane(self, z: int) -> np.ndarray:
        if self._files is None:
            import tifffile

            return tifffile.imread(self._multipage, key=z)
        plane = _read_plane(self._files[z])
        expected = self._sections[z][0]
        if plane.shape != expected:
            raise UserError(f"{self._files[z]}: section shape {plane.shape}, expected {expected} (the file changed "
                            "after the stack was opened)")
        if z not in self._offsets:
            return plane
        y, x = self._offsets[z]
        out = np.zeros(self._meta.shape[1:], plane.dtype)
        out[y:y + plane.shape[0], x:x + plane.shape[1]] = plane
        return out

    def _read(self, box: Box) -> np.ndarray:
        _, ys, xs = box.to_slices()
        out = np.empty(box.shape, self._meta.dtype)
        for i, z in enumerate(range(box.offset[0], box.end[0])):
            out[i] = self._plane(z)[ys, xs]
        return out

"""Read-only sources: `path.npz#key`, `path.h5#dataset`, and TIFF/PNG stacks."""

from __future__ import annotations

import functools
import glob
import os
import re

import numpy as np

from connectome.core.address import IMAGE_SUFFIXES
from connectome.core.errors import UserError
from connectome.core.geometry import Box, vec3
from connectome.io.base import Volume, VolumeMeta

DEFAULT_VOXEL = (1.0, 1.0, 1.0)


def _meta_for(address: str, shape, dtype, voxel_size, chunk=None) -> VolumeMeta:
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) == 3:
        channels, spatial = None, vec3(shape)
    elif len(shape) == 4:
        channels, spatial = int(shape[0]), vec3(shape[1:])
    else:
        raise UserError(f"{address}: expected a 3-d (z, y, x) or 4-d (c, z, y, x) array, found shape {tuple(shape)}")
    return VolumeMeta(
        shape=spatial,
        dtype=np.dtype(dtype),
        chunk_shape=chunk or tuple(min(s, 64) for s in spatial),
        voxel_size=tuple(voxel_size or DEFAULT_VOXEL),
        channels=channels,
        voxel_size_known=voxel_size is not None,
    )


def split_key(address: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    path, _, key = address.partition("#")
    if not key:
        raise UserError(f"{address}: expected PATH{suffixes[0]}#KEY naming an array inside the file")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    return path, key


@functools.lru_cache(maxsize=4)
def _load_npz_key(path: str, key: str, mtime: float) -> np.ndarray:
    with np.load(path) as f:
        if key not in f.files:
            raise UserError(f"{path}: no key {key!r}; keys are {sorted(f.files)}")
        return f[key]


class NpzVolume(Volume):
    """One array of an .npz file; loaded once per process (npz members cannot be sliced lazily)."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        self._path, self._key = split_key(address, (".npz",))
        arr = self._array()
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        self._meta = _meta_for(address, arr.shape, arr.dtype, voxel_size)

    def _array(self) -> np.ndarray:
        arr = _load_npz_key(self._path, self._key, os.path.getmtime(self._path))
        return arr[np.newaxis] if arr.ndim == 2 else arr

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _read(self, box: Box) -> np.ndarray:
        a = self._array()
        s = box.to_slices()
        return np.array(a[s] if self._meta.channels is None else a[(slice(None), *s)])


class Hdf5Volume(Volume):
    """One dataset of an HDF5 file, read lazily box by box."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        import h5py

        self._path, self._key = split_key(address, (".h5", ".hdf5"))
        with h5py.File(self._path, "r") as f:
            if self._key not in f:
                raise UserError(f"{self._path}: no dataset {self._key!r}")
            d = f[self._key]
            res = d.attrs.get("resolution")
            vs = voxel_size or (tuple(float(v) for v in res) if res is not None and len(res) == 3 else None)
            chunks = tuple(d.chunks[-3:]) if d.chunks and d.ndim >= 3 else None
            self._meta = _meta_for(address, d.shape, d.dtype, vs, chunks)
            self._ndim = d.ndim

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _read(self, box: Box) -> np.ndarray:
        import h5py

        with h5py.File(self._path, "r") as f:
            d = f[self._key]
            s = box.to_slices()
            if self._ndim == 2:
                return np.asarray(d[s[1], s[2]])[np.newaxis][s[0]]
            return np.asarray(d[s] if self._meta.channels is None else d[(slice(None), *s)])


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]



def _read_plane(path: str) -> np.ndarray:
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    import tifffile

    return tifffile.imread(path)


class ImageStackVolume(Volume):
    """A directory of 2-d TIFF/PNG sections (natural sort order = z) or one multi-page TIFF."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        import tifffile

        self._files: list[str] | None
        if os.path.isdir(address):
            files = [p for p in glob.glob(os.path.join(address, "*")) if p.lower().endswith(IMAGE_SUFFIXES)]
            if not files:
                raise UserError(f"{address}: expected TIFF or PNG sections in this directory, found none")
            self._files = sorted(files, key=_natural_key)
            first = _read_plane(self._files[0])
            if first.ndim != 2:
                raise UserError(f"{self._files[0]}: expected a 2-d grayscale section, found shape {first.shape}")
            shape = (len(self._files), *first.shape)
            dtype = first.dtype
            self._multipage = None
        elif os.path.isfile(address):
            with tifffile.TiffFile(address) as tf:
                series = tf.series[0]
                shape, dtype = series.shape, series.dtype
            self._files = None
            self._multipage = address
            if len(shape) not in (2, 3):
                raise UserError(f"{address}: expected a grayscale TIFF stack (z, y, x), found shape {shape}")
        else:
            raise UserError(f"{address}: no such file or directory")
        self._meta = _meta_for(address, shape, dtype, voxel_size, None)

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _plane(self, z: int) -> np.ndarray:
        if self._files is not None:
            plane = _read_plane(self._files[z])
            if plane.shape != self._meta.shape[1:]:
                raise UserError(f"{self._files[z]}: section shape {plane.shape}, expected {self._meta.shape[1:]}")
            return plane
        import tifffile

        return tifffile.imread(self._multipage, key=z)

    def _read(self, box: Box) -> np.ndarray:
        _, ys, xs = box.to_slices()
        out = np.empty(box.shape, self._meta.dtype)
        for i, z in enumerate(range(box.offset[0], box.end[0])):
            out[i] = self._plane(z)[ys, xs]
        return out

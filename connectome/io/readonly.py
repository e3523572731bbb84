"""Read-only sources: `path.npz#key` and `path.h5#dataset` (TIFF/PNG stacks: `io.image_stack`)."""

from __future__ import annotations

import contextlib
import functools
import os
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Box, vec3
from connectome.io.base import Volume, VolumeMeta, leading_axes

DEFAULT_VOXEL = (1.0, 1.0, 1.0)


def array_meta(address: str, shape, dtype, voxel_size, chunk=None) -> VolumeMeta:
    """The metadata of an array source of `shape` ((y, x), or as `base.leading_axes` reads it)."""
    if len(shape) == 2:
        shape = (1, *shape)
    _, channels = leading_axes(address, shape)
    spatial = vec3(shape[-3:])
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


DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # what numpy and h5py raise on a bad file


def _why(e: BaseException) -> str:
    text = str(e).strip()
    if "pickled" in text:  # numpy's word for a file that is neither a zip archive nor an .npy array
        return "not a zip archive"
    if "Object arrays" in text:
        return "Python objects, not numbers"
    lines = text.splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def open_npz(path: str) -> Iterator[np.lib.npyio.NpzFile]:
    """An .npz archive, open; one line naming the file where it is not one numpy can read."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        f = np.load(path)
    except DAMAGED as e:
        raise UserError(f"{path}: expected an .npz archive of arrays, found a file numpy cannot read "
                        f"({_why(e)})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: expected an .npz archive of arrays (np.savez), found a single .npy array")
    with f:
        yield f


def npz_member(path: str, f: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """Array `key` of an open .npz; one line where it is damaged or holds Python objects."""
    try:
        return f[key]
    except DAMAGED as e:
        raise UserError(f"{path}: key {key!r}: expected a numeric array, found one numpy cannot read "
                        f"({_why(e)})") from None


@contextlib.contextmanager
def open_hdf5(path: str):
    """An HDF5 file, open for reading; one line naming the file where h5py cannot open it."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except DAMAGED as e:
        raise UserError(f"{path}: expected an HDF5 file, found one h5py cannot open ({_why(e)})") from None
    with f:
        yield f


RESOLUTION_KEY = "resolution_zyx_nm"  # npz array giving the voxel size of the other arrays in the file


def npz_resolution(path: str) -> tuple[float, float, float] | None:
    """The `resolution_zyx_nm` array of an .npz file (z y x nm), if it has one; one line if it is not 3 sizes."""
    return _npz_resolution(path, os.path.getmtime(path))


@functools.lru_cache(maxsize=16)
def _npz_resolution(path: str, mtime: float) -> tuple[float, float, float] | None:
    """(read once per process while the file is unchanged: every open of the file's volumes asks)"""
    with open_npz(path) as f:
        if RESOLUTION_KEY not in f.files:
            return None
        found = np.asarray(npz_member(path, f, RESOLUTION_KEY))
    if found.shape != (3,) or not np.issubdtype(found.dtype, np.number) or not np.all(np.isfinite(found)) \
            or np.any(found <= 0):
        raise UserError(f"{path}: key {RESOLUTION_KEY}: expected 3 positive numbers (z y x nm), "
                        f"found {found.tolist()}")
    z, y, x = (float(v) for v in found)
    return z, y, x


@functools.lru_cache(maxsize=4)
def _load_npz_key(path: str, key: str, mtime: float) -> np.ndarray:
    with open_npz(path) as f:
        if key not in f.files:
            raise UserError(f"{path}: no key {key!r}; keys are {sorted(f.files)}")
        return npz_member(path, f, key)


class NpzVolume(Volume):
    """One array of an .npz file; loaded once per process (npz members cannot be sliced lazily). Its voxel size:
    the one given, else the file's `resolution_zyx_nm` where it has one (else unknown)."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        self._path, self._key = split_key(address, (".npz",))
        arr = self._array()
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        self._meta = array_meta(address, arr.shape, arr.dtype, voxel_size or npz_resolution(self._path))

    def _array(self) -> np.ndarray:
        arr = _load_npz_key(self._path, self._key, os.path.getmtime(self._path))
        return arr[np.newaxis] if arr.ndim == 2 else arr

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def source_files(self, box: Box) -> tuple[str, list[str]]:
        return self._in_files([self._path])

    def _read(self, box: Box) -> np.ndarray:
        a = self._array()
        s = box.to_slices()
        dropped = (0,) * (a.ndim - 3 - (self._meta.channels is not None))  # leading axes of length 1
        index: tuple = (*dropped, *s) if self._meta.channels is None else (*dropped, slice(None), *s)
        return np.array(a[index])


def hdf5_datasets(f) -> list[str]:
    """The paths of every dataset in an open h5py File (the keys an address may name)."""
    import h5py

    found: list[str] = []
    f.visititems(lambda name, node: found.append(name) if isinstance(node, h5py.Dataset) else None)
    return sorted(found)


def file_keys(path: str) -> list[str]:
    """The arrays of an .npz file or the datasets of an HDF5 file (what may follow its `#`)."""
    if path.lower().endswith(".npz"):
        with open_npz(path) as f:
            return sorted(f.files)
    with open_hdf5(path) as f:
        return hdf5_datasets(f)


class Hdf5Volume(Volume):
    """One dataset of an HDF5 file, read lazily box by box."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        import h5py

        self._path, self._key = split_key(address, (".h5", ".hdf5"))
        with open_hdf5(self._path) as f:
            if self._key not in f or not isinstance(f[self._key], h5py.Dataset):
                what = "no dataset" if self._key not in f else "a group, not a dataset:"
                names = hdf5_datasets(f)
                shown = f"{names[:20]} and {len(names) - 20} more" if len(names) > 20 else str(names)
                raise UserError(f"{self._path}: {what} {self._key!r}; datasets are {shown}")
            d = f[self._key]
            res = d.attrs.get("resolution")
            vs = voxel_size or (tuple(float(v) for v in res) if res is not None and len(res) == 3 else None)
            chunks = tuple(d.chunks[-3:]) if d.chunks and d.ndim >= 3 else None
            self._meta = array_meta(address, d.shape, d.dtype, vs, chunks)
            self._ndim = d.ndim

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def source_files(self, box: Box) -> tuple[str, list[str]]:
        return self._in_files([self._path])

    def _read(self, box: Box) -> np.ndarray:
        import h5py

        with h5py.File(self._path, "r") as f:
            d = f[self._key]
            s = box.to_slices()
            if self._ndim == 2:
                return np.asarray(d[s[1], s[2]])[np.newaxis][s[0]]
            dropped = (0,) * (self._ndim - 3 - (self._meta.channels is not None))  # leading axes of length 1
            return np.asarray(d[(*dropped, *s)] if self._meta.channels is None else d[(*dropped, slice(None), *s)])

"""Open or create a volume from its address string (design section 4)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from connectome.core.address import parse_address
from connectome.core.errors import UserError
from connectome.io.base import Volume
from connectome.io.image_stack import ImageStackVolume
from connectome.io.precomputed import PrecomputedVolume, create_precomputed_volume
from connectome.io.readonly import Hdf5Volume, NpzVolume, file_keys
from connectome.io.sections import SectionRange
from connectome.io.zarr_store import ZarrVolume, create_zarr_volume


def address_kind(address: str) -> str:
    return parse_address(address).kind


def open_volume(address: str, mode: str = "r", voxel_size: Sequence[float] | None = None) -> Volume:
    """Open an existing volume; `voxel_size` fills in for sources that carry none (npz, TIFF)."""
    parsed = parse_address(address)
    if parsed.sections is not None:
        if mode != "r":
            raise UserError(f"{address}: a section range is read-only; write to the whole volume")
        return SectionRange(address, open_volume(parsed.base, mode, voxel_size), parsed.sections)
    kind = parsed.kind
    if kind == "precomputed":
        return PrecomputedVolume(address, mode)
    if kind == "zarr":
        if not os.path.exists(address):
            raise UserError(f"{address}: no such file or directory")
        if os.path.isfile(address):
            raise UserError(not_a_volume_file(address))
        return ZarrVolume(address, mode)
    if mode != "r":
        raise UserError(f"{address}: {kind} sources are read-only; write to zarr or precomputed")
    readers: dict[str, Callable[[str, str, Sequence[float] | None], Volume]] = {
        "npz": NpzVolume, "hdf5": Hdf5Volume, "images": ImageStackVolume,
    }
    cls = readers[kind]
    return cls(address, mode, voxel_size)


def not_a_volume_file(path: str) -> str:
    """The one line for a file given where a volume's address is expected without `#KEY` (npz, HDF5) or of a
    kind that is not read."""
    if path.lower().endswith((".npz", ".h5", ".hdf5")):
        try:
            keys = f"; its arrays are {file_keys(path)}"
        except Exception:  # noqa: BLE001 - a damaged file: the missing #KEY is still the thing to say
            keys = ""
        return f"{path}: expected {path}#KEY naming one array inside the file{keys}"
    return (f"{path}: a file, expected a zarr array or group (a folder), FILE.npz#KEY, FILE.h5#KEY, TIFF/PNG "
            "sections or precomputed://...")


def create_volume(
    address: str,
    shape: Sequence[int],
    dtype,
    chunk_shape: Sequence[int],
    voxel_size: Sequence[float],
    offset: Sequence[int] = (0, 0, 0),
    channels: int | None = None,
    overwrite: bool = False,
) -> Volume:
    """Create (or reopen, when it already matches) a writable zarr or precomputed volume."""
    parsed = parse_address(address)
    if parsed.sections is not None:
        raise UserError(f"{address}: cannot create a section range; give the whole volume's address")
    kind = parsed.kind
    args = dict(shape=shape, dtype=dtype, chunk_shape=chunk_shape, voxel_size=voxel_size,
                offset=offset, channels=channels, overwrite=overwrite)
    if kind == "precomputed":
        return create_precomputed_volume(address, **args)
    if kind == "zarr":
        return create_zarr_volume(address, **args)
    raise UserError(f"{address}: cannot write {kind}; expected a zarr path or precomputed:// address")

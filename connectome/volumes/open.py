"""Open or create a volume from its address string (design section 4)."""

from __future__ import annotations

import os
from typing import Sequence

from connectome.errors import UserError
from connectome.volumes.base import Volume
from connectome.volumes.precomputed import PREFIX, PrecomputedVolume, create_precomputed_volume
from connectome.volumes.readonly import IMAGE_SUFFIXES, Hdf5Volume, ImageStackVolume, NpzVolume
from connectome.volumes.zarr_store import ZarrVolume, create_zarr_volume


def address_kind(address: str) -> str:
    if address.startswith(PREFIX):
        return "precomputed"
    path = address.partition("#")[0].lower()
    if "#" in address and path.endswith(".npz"):
        return "npz"
    if "#" in address and path.endswith((".h5", ".hdf5")):
        return "hdf5"
    if path.endswith(IMAGE_SUFFIXES):
        return "images"
    if os.path.isdir(address) and not os.path.exists(os.path.join(address, "zarr.json")):
        return "images"
    return "zarr"


def open_volume(address: str, mode: str = "r", voxel_size: Sequence[float] | None = None) -> Volume:
    """Open an existing volume; `voxel_size` fills in for sources that carry none (npz, TIFF)."""
    kind = address_kind(address)
    if kind == "precomputed":
        return PrecomputedVolume(address, mode)
    if kind == "zarr":
        if not os.path.exists(address):
            raise UserError(f"{address}: no such file or directory")
        return ZarrVolume(address, mode)
    if mode != "r":
        raise UserError(f"{address}: {kind} sources are read-only; write to zarr or precomputed")
    cls = {"npz": NpzVolume, "hdf5": Hdf5Volume, "images": ImageStackVolume}[kind]
    return cls(address, mode, voxel_size)


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
    kind = address_kind(address)
    args = dict(shape=shape, dtype=dtype, chunk_shape=chunk_shape, voxel_size=voxel_size,
                offset=offset, channels=channels, overwrite=overwrite)
    if kind == "precomputed":
        return create_precomputed_volume(address, **args)
    if kind == "zarr":
        return create_zarr_volume(address, **args)
    raise UserError(f"{address}: cannot write {kind}; expected a zarr path or precomputed:// address")

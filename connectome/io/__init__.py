"""Volumes by address: zarr (OME-Zarr), Neuroglancer precomputed, and read-only npz, HDF5, TIFF/PNG."""

from connectome.io.base import Volume, VolumeMeta, same_voxel_size
from connectome.io.open import address_kind, create_volume, open_volume

__all__ = ["Volume", "VolumeMeta", "same_voxel_size", "open_volume", "create_volume", "address_kind"]

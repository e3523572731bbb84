"""Neuroglancer precomputed volumes through cloud-volume (file://, gs://, s3://, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from connectome.core.address import PRECOMPUTED as PREFIX
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io.base import Volume, VolumeMeta


def cloudpath(address: str) -> str:
    return address[len(PREFIX):] if address.startswith(PREFIX) else address


class PrecomputedVolume(Volume):
    """Scale 0 of a precomputed layer; cloud-volume's (x, y, z, c) order is turned into (c, z, y, x)."""

    def __init__(self, address: str, mode: str = "r"):
        super().__init__(address)
        from cloudvolume import CloudVolume
        from cloudvolume.exceptions import InfoUnavailableError

        self.writable = mode != "r"
        try:
            self._cv = CloudVolume(
                cloudpath(address), mip=0, fill_missing=True, bounded=True, progress=False,
                non_aligned_writes=False, parallel=1, cache=False,
            )
        except InfoUnavailableError:
            raise UserError(f"{address}: no precomputed 'info' file there") from None
        cv = self._cv
        channels = int(cv.num_channels)
        size = [int(v) for v in cv.volume_size]
        chunk = [int(v) for v in cv.chunk_size]
        res = [float(v) for v in cv.resolution]
        off = [int(v) for v in cv.voxel_offset]
        self._origin = off
        self._meta = VolumeMeta(
            shape=(size[2], size[1], size[0]),
            dtype=np.dtype(cv.dtype),
            chunk_shape=(chunk[2], chunk[1], chunk[0]),
            voxel_size=(res[2], res[1], res[0]),
            offset=(off[2], off[1], off[0]),
            channels=None if channels == 1 else channels,
        )

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _bbox(self, box: Box):
        (z0, y0, x0), (z1, y1, x1) = box.offset, box.end
        ox, oy, oz = self._origin
        return slice(x0 + ox, x1 + ox), slice(y0 + oy, y1 + oy), slice(z0 + oz, z1 + oz)

    def _read(self, box: Box) -> np.ndarray:
        cut = np.asarray(self._cv[self._bbox(box)])  # x, y, z, c
        out = np.transpose(cut, (3, 2, 1, 0))
        return np.ascontiguousarray(out[0] if self._meta.channels is None else out)

    def _write(self, box: Box, data: np.ndarray) -> None:
        if self._meta.channels is None:
            data = data[np.newaxis]
        self._cv[self._bbox(box)] = np.transpose(data, (3, 2, 1, 0))


def create_precomputed_volume(
    address: str,
    shape: Sequence[int],
    dtype,
    chunk_shape: Sequence[int],
    voxel_size: Sequence[float],
    offset: Sequence[int] = (0, 0, 0),
    channels: int | None = None,
    overwrite: bool = False,
    layer_type: str | None = None,
) -> PrecomputedVolume:
    from cloudvolume import CloudVolume

    dtype = np.dtype(dtype)
    if layer_type is None:
        layer_type = "segmentation" if dtype in (np.uint32, np.uint64) and channels is None else "image"
    info = CloudVolume.create_new_info(
        num_channels=channels or 1,
        layer_type=layer_type,
        data_type=dtype.name,
        encoding="raw",
        resolution=[voxel_size[2], voxel_size[1], voxel_size[0]],
        voxel_offset=[offset[2], offset[1], offset[0]],
        volume_size=[shape[2], shape[1], shape[0]],
        chunk_size=[min(chunk_shape[2], shape[2]), min(chunk_shape[1], shape[1]), min(chunk_shape[0], shape[0])],
    )
    try:
        existing = PrecomputedVolume(address, "r+")
    except UserError:
        existing = None
    if existing is not None and not overwrite:
        m = existing.meta
        if (m.shape, m.dtype, m.channels) != (tuple(shape), dtype, channels):
            raise UserError(
                f"{address}: exists with shape {m.shape} dtype {m.dtype} channels {m.channels}, "
                f"expected {tuple(shape)} {dtype} {channels} (pass --overwrite to replace it)"
            )
        return existing
    cv = CloudVolume(cloudpath(address), info=info, progress=False)
    cv.commit_info()
    return PrecomputedVolume(address, "r+")

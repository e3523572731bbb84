"""Converting intensities to a narrower dtype without wrapping: one linear map for the whole volume.

A conversion that the target dtype cannot hold (uint16 -> uint8, float32 -> uint8, int16 -> uint8)
maps the source range [low, high] linearly onto the target's full range and clips outside it.
[low, high] is given or taken from percentiles (0.1 and 99.9 by default) of a strided sample of
the whole source, computed once before any block runs, so that every block applies the same map.
The percentiles leave out blank voxels, as `section_normalize` does: the padding around sections
smaller than the plane, and voxels exactly 0 where the source has no negative values (a blank
section, black corners or margins: counted, a few percent of them set LOW at 0, far below the
darkest tissue). Those stay at the bottom of the target range (0 for uint8), below LOW.
Converting to a dtype that holds every source value (uint8 -> uint16, uint16 -> float32) or to a
float dtype copies values unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io import Volume

DEFAULT_PERCENTILES = (0.1, 99.9)
SAMPLE_VOXELS = 1 << 22  # a source up to this size is read whole; a larger one is sampled down to about it
SAMPLE_BOXES_PER_AXIS = 4  # sampled chunks per axis of a larger source (4 x 4 x 4 chunks at most)


@dataclass(frozen=True)
class Mapping:
    """The linear map [low, high] -> the target dtype's full range, and where [low, high] came from."""

    low: float
    high: float
    source: str  # "percentiles" or "--range"
    percentiles: tuple[float, float] | None = None
    sampled_voxels: int | None = None
    nan_sampled: int = 0  # NaN values among the sampled voxels (they become the target's minimum)
    zeros_left_out: int = 0  # sampled voxels exactly 0 that the percentiles left out (blank: `percentile_mapping`)

    def to_json(self) -> dict:
        out = {"low": self.low, "high": self.high, "from": self.source}
        if self.percentiles is not None:
            out.update(percentiles=list(self.percentiles), sampled_voxels=self.sampled_voxels,
                       nan_sampled=self.nan_sampled, zeros_left_out=self.zeros_left_out)
        return out


def needs_rescale(src_dtype, dst_dtype) -> bool:
    """True when `dst_dtype` is an integer dtype that cannot hold every value of `src_dtype`."""
    src, dst = np.dtype(src_dtype), np.dtype(dst_dtype)
    return dst.kind in "iu" and not np.can_cast(src, dst, casting="safe")


def check_range(low: float, high: float, where: str) -> tuple[float, float]:
    """(low, high) as floats, refused unless both are finite and low < high."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise UserError(f"{where}: expected finite LOW < HIGH, found {low:g} {high:g}")
    return low, high


def sample_boxes(vol: Volume) -> list[Box]:
    """The boxes a sample reads: the whole volume when small, else chunks spread evenly along each axis."""
    if vol.box.size <= SAMPLE_VOXELS:
        return [vol.box]
    chunk = vol.meta.chunk_shape
    positions = []
    for size, c in zip(vol.shape, chunk):
        n = -(-size // c)
        picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_BOXES_PER_AXIS)).round().astype(int))
        positions.append([int(p) * c for p in picks])
    boxes = []
    for offset in itertools.product(*positions):
        end = [min(o + c, s) for o, c, s in zip(offset, chunk, vol.shape)]
        boxes.append(Box.from_corners(offset, end))
    return boxes


def sample(vol: Volume) -> np.ndarray:
    """A 1-d strided sample of about SAMPLE_VOXELS values spread over the whole volume (all of a small one),
    leaving out the padding around sections smaller than the plane (`Volume.section_footprints`)."""
    boxes = sample_boxes(vol)
    per_box = max(1, SAMPLE_VOXELS // len(boxes))
    footprints = vol.section_footprints()
    parts = []
    for box in boxes:
        data = vol.read(box)
        step = max(1, int(np.ceil((data.size / per_box) ** (1 / 3))))
        image = _inside_footprints(footprints, box, data.shape[-3:])
        if image is None:
            parts.append(np.ravel(data[..., ::step, ::step, ::step]))
            continue
        inside = np.ravel(data[..., image])  # every k-th image voxel: a stride in 3-d can step over small sections
        parts.append(inside[::max(1, -(-inside.size // per_box))])
    return np.concatenate(parts)


def _inside_footprints(footprints: dict, box: Box, shape) -> np.ndarray | None:
    """(z, y, x) bool of `box`: False in the padding of the sections with footprints; None where it has none."""
    inside = None
    for z in range(box.offset[0], box.offset[0] + shape[0]):
        if z not in footprints:
            continue
        if inside is None:
            inside = np.ones(shape, bool)
        y0, x0, h, w = footprints[z]
        plane = np.zeros(shape[1:], bool)
        ys = slice(max(y0 - box.offset[1], 0), max(y0 + h - box.offset[1], 0))
        xs = slice(max(x0 - box.offset[2], 0), max(x0 + w - box.offset[2], 0))
        plane[ys, xs] = True
        inside[z - box.offset[0]] = plane
    return inside


def percentile_mapping(vol: Volume, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Mapping:
    """[low, high] from percentiles of a strided sample of `vol` (NaN ignored). Voxels exactly 0 are left out
    where the sample holds no negative value and something else remains: they are blank (a blank section, black
    corners or margins), and counted they set `low` to 0 however dark the tissue is; they stay below `low`, at the
    bottom of the target range. A source whose other voxels hold one value maps [0, that value]."""
    values = sample(vol)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        raise UserError(f"{vol.address}: no finite values in the sample; give --range LOW HIGH")
    zeros = 0
    if finite.min() >= 0:  # (with negative values, 0 is a grey level like any other)
        imaged = finite[finite != 0]
        if imaged.size:
            zeros = int(finite.size - imaged.size)
            finite = imaged
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if high <= low:  # a (nearly) constant source: its one value at the bottom of the range; beside blank 0, at the top
        low, high = (0.0, high) if zeros else (low, low + 1.0)
    return Mapping(low, high, "percentiles", (float(percentiles[0]), float(percentiles[1])), int(values.size),
                   int(np.isnan(values).sum()) if values.dtype.kind == "f" else 0, zeros)


def rescale(data: np.ndarray, low: float, high: float, dtype) -> np.ndarray:
    """`data` mapped linearly from [low, high] onto the full range of integer `dtype`, clipped, rounded."""
    info = np.iinfo(np.dtype(dtype))
    scaled = np.asarray(data, np.float64) - low
    scaled *= float(info.max) - float(info.min)
    scaled /= high - low  # multiply, then divide: exact for integer sources, so ties round alike everywhere
    scaled += float(info.min)
    np.nan_to_num(scaled, copy=False, nan=float(info.min))
    np.clip(scaled, info.min, info.max, out=scaled)
    return np.rint(scaled, out=scaled).astype(dtype)


def describe(mapping: Mapping | None, src_dtype, dst_dtype) -> str:
    """One human phrase saying how values were converted."""
    src, dst = np.dtype(src_dtype).name, np.dtype(dst_dtype).name
    if mapping is None:
        return f"values copied unchanged ({src} -> {dst})" if src != dst else "values copied unchanged"
    info = np.iinfo(np.dtype(dst_dtype))
    how = "--range"
    if mapping.percentiles is not None:
        how = (f"the {mapping.percentiles[0]:g} and {mapping.percentiles[1]:g} percentiles of "
               f"{mapping.sampled_voxels} sampled voxels")
        if mapping.zeros_left_out:
            how += f", leaving out {mapping.zeros_left_out} blank ones, exactly 0, that map to {info.min}"
    nan = ""
    if np.dtype(src_dtype).kind == "f":  # NaN has no place on the line: it becomes the bottom of the range
        seen = f"in {mapping.nan_sampled} of the sampled voxels" if mapping.nan_sampled else "if any"
        nan = f"; NaN ({seen}) becomes {info.min}"
    return (f"{src} -> {dst} rescaled linearly from [{mapping.low:g}, {mapping.high:g}] ({how}) "
            f"to [{info.min}, {info.max}], clipped outside{nan}")

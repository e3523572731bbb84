"""Image and label pyramids: each level downsampled from the one before (tinybrain: the mean for
images, the most frequent label for segmentations), stored as scales 1..n of the volume's own
OME-Zarr group (arrays "1", "2", ... beside "0", listed in its multiscales metadata).

Level k's chunks are scale 0's divided by the level's total factor, so a block of whole scale-0
chunks covers whole chunks at every level and blocks never share a chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from connectome.core.errors import UserError
from connectome.core.geometry import Box, Vec
from connectome.io.zarr_store import COMPRESSORS, SCALE0

MIN_CHUNK = 8  # no level whose chunks would be thinner than this along a downsampled axis
MIN_EXTENT = 32  # no level once the volume is this small (voxels) in y and x


def level_factors(voxel_size: Sequence[float], chunk_shape: Vec, shape: Vec, levels: int | None = None) -> list[Vec]:
    """The factor (z, y, x) of each level over the one before: an axis is halved while its voxel is
    at most 1.5 times the finest (so 40x4x4 nm halves y and x until they near 40 nm, then all three)."""
    res, total, out = [float(v) for v in voxel_size], [1, 1, 1], list[Vec]()
    while levels is None or len(out) < levels:
        finest = min(res)
        factor = tuple(2 if r <= 1.5 * finest else 1 for r in res)
        chunk = [c // (t * f) for c, t, f in zip(chunk_shape, total, factor)]
        size = [-(-s // (t * f)) for s, t, f in zip(shape, total, factor)]
        fits = all(f == 1 or (c0 % (t * f) == 0 and c >= MIN_CHUNK)
                   for c0, t, f, c in zip(chunk_shape, total, factor, chunk))
        if not fits or (levels is None and max(size[1], size[2]) < MIN_EXTENT):
            if levels is not None:
                raise UserError(f"levels {levels}: scale-0 chunks {list(chunk_shape)} allow only {len(out)} "
                                f"levels of 2x downsampling (chunks stay whole and at least {MIN_CHUNK} voxels)")
            break
        out.append((factor[0], factor[1], factor[2]))
        total = [t * f for t, f in zip(total, factor)]
        res = [r * f for r, f in zip(res, factor)]
    return out


def cumulative(factors: list[Vec]) -> list[Vec]:
    """The total factor of each level over scale 0, scale 0 first."""
    out = [(1, 1, 1)]
    for f in factors:
        z, y, x = (a * b for a, b in zip(out[-1], f))
        out.append((z, y, x))
    return out


def downsample(data: np.ndarray, factors: list[Vec], labels: bool) -> list[np.ndarray]:
    """Each level of `data` (z, y, x), level 1 first."""
    import tinybrain

    out, current = [], data
    for factor in factors:
        xyz = (factor[2], factor[1], factor[0])
        if labels:
            current = tinybrain.downsample_segmentation(current.T, xyz, num_mips=1)[0].T
        else:
            current = tinybrain.downsample_with_averaging(current.T, xyz, num_mips=1)[0].T
        out.append(np.ascontiguousarray(current))
    return out


def level_box(box: Box, total: Vec) -> Box:
    """`box` (scale-0 voxels) at a level of total factor `total` (its end rounded up, as the level's shape)."""
    return Box.from_corners([o // t for o, t in zip(box.offset, total)],
                            [-(-e // t) for e, t in zip(box.end, total)])


def _group(address: str) -> zarr.Group:
    node = zarr.open(store=address, mode="r+")
    if not isinstance(node, zarr.Group) or SCALE0 not in node:
        raise UserError(f"{address}: a pyramid needs an OME-Zarr group with scale 0 in array '{SCALE0}', "
                        "found a bare array")
    return node


def create_levels(address: str, factors: list[Vec]) -> None:
    """Create (or keep, when they match) arrays "1".."n" and list every level in the multiscales."""
    group = _group(address)
    scale0 = group[SCALE0]
    assert isinstance(scale0, zarr.Array)
    if scale0.ndim != 3:
        raise UserError(f"{address}: pyramids are made of 3-d volumes, found shape {list(scale0.shape)}")
    shape, chunks = tuple(scale0.shape), tuple(scale0.chunks)
    for level, total in enumerate(cumulative(factors)[1:], start=1):
        lshape = tuple(-(-s // t) for s, t in zip(shape, total))
        lchunks = tuple(min(c // t, s) for c, t, s in zip(chunks, total, lshape))
        name = str(level)
        if name in group:
            existing = group[name]
            if isinstance(existing, zarr.Array) and (existing.shape, existing.chunks) == (lshape, lchunks):
                continue
        group.create_array(name, shape=lshape, chunks=lchunks, dtype=scale0.dtype, fill_value=0,
                           compressors=COMPRESSORS, dimension_names=("z", "y", "x"), overwrite=True)
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        raise UserError(f"{address}: no OME-Zarr multiscales metadata to add levels to")
    multiscale = ome["multiscales"][0]
    base = {t["type"]: t for t in multiscale["datasets"][0]["coordinateTransformations"]}
    scale = base["scale"]["scale"]
    translation = base.get("translation", {"translation": [0.0] * len(scale)})["translation"]
    datasets = []
    for level, total in enumerate(cumulative(factors)):
        s = [v * t for v, t in zip(scale, total)]
        # a coarse voxel's centre sits at the centre of the fine voxels it covers
        t_ = [o + (t - 1) * v / 2 for o, t, v in zip(translation, total, scale)]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": s}, {"type": "translation", "translation": t_}]})
    multiscale["datasets"] = datasets
    multiscale["type"] = "mode" if np.dtype(scale0.dtype).kind in "iu" and np.dtype(scale0.dtype).itemsize >= 4 \
        else "mean"
    group.attrs.update({"ome": ome})


def mark_labels(address: str, image: str | None) -> None:
    """Mark the group at `address` as a label image (`image-label`, its source image relative to it
    when given), named for its directory, and list it in the `labels` of the parent directory's OME-Zarr group."""
    group = _group(address)
    ome: dict[str, Any] = dict(group.attrs)["ome"]  # type: ignore[assignment, arg-type]
    label: dict[str, Any] = {"version": ome.get("version", "0.5")}
    if image is not None:
        label["source"] = {"image": os.path.relpath(image, address).replace(os.sep, "/")}
    ome["image-label"] = label
    parent = os.path.dirname(os.path.abspath(address))
    name = os.path.basename(os.path.abspath(address))
    ome["multiscales"][0]["name"] = name  # the layer's name in napari
    group.attrs.update({"ome": ome})
    if not os.path.isfile(os.path.join(parent, "zarr.json")):
        return
    root = zarr.open_group(store=parent, mode="r+")
    root_ome: dict[str, Any] = dict(root.attrs).get("ome", {"version": ome.get("version", "0.5")})  # type: ignore
    labels = list(root_ome.get("labels", []))
    if name not in labels:
        labels.append(name)
    root_ome["labels"] = labels
    root.attrs.update({"ome": root_ome})


def open_level(address: str, level: int) -> zarr.Array:
    array = zarr.open_array(store=os.path.join(address, str(level)), mode="r+")
    return array.with_config({"write_empty_chunks": False})


def create_precomputed_levels(address: str, factors: list[Vec]) -> None:
    """Add (or keep, when they match) scales 1..n to a precomputed layer's info."""
    from cloudvolume import CloudVolume

    from connectome.io.precomputed import cloudpath

    cv = CloudVolume(cloudpath(address), progress=False)
    chunk0 = cv.scales[0]["chunk_sizes"][0]  # x, y, z
    for level, total in enumerate(cumulative(factors)[1:], start=1):
        factor_xyz = (total[2], total[1], total[0])
        chunk = [max(1, c // t) for c, t in zip(chunk0, factor_xyz)]
        resolution = [r * t for r, t in zip(cv.scales[0]["resolution"], factor_xyz)]
        if level < len(cv.scales):
            if list(cv.scales[level]["resolution"]) == resolution and cv.scales[level]["chunk_sizes"][0] == chunk:
                continue
            raise UserError(f"{address}: scale {level} exists with resolution {cv.scales[level]['resolution']}, "
                            f"expected {resolution}; remove its scales above 0 to make the pyramid again")
        cv.add_scale(factor_xyz, chunk_size=chunk)
    cv.commit_info()


def write_level(address: str, level: int, box: Box, values: np.ndarray) -> None:
    """Write `values` (z, y, x) at `box` (voxels of `level`, from the volume's corner) of a zarr or
    precomputed pyramid."""
    from connectome.core.address import parse_address

    if parse_address(address).kind != "precomputed":
        open_level(address, level)[box.to_slices()] = values
        return
    from cloudvolume import CloudVolume

    from connectome.io.precomputed import cloudpath

    cv = CloudVolume(cloudpath(address), mip=level, progress=False, non_aligned_writes=False, parallel=1,
                     cache=False)
    ox, oy, oz = (int(v) for v in cv.voxel_offset)
    (z0, y0, x0), (z1, y1, x1) = box.offset, box.end
    cv[x0 + ox:x1 + ox, y0 + oy:y1 + oy, z0 + oz:z1 + oz] = np.transpose(values)[..., np.newaxis]


def read_level(address: str, level: int) -> np.ndarray:
    """A whole level (z, y, x) of a zarr or precomputed pyramid."""
    from connectome.core.address import parse_address

    if parse_address(address).kind != "precomputed":
        return np.asarray(zarr.open_array(store=os.path.join(address, str(level)), mode="r")[...])
    from cloudvolume import CloudVolume

    from connectome.io.precomputed import cloudpath

    cv = CloudVolume(cloudpath(address), mip=level, progress=False, fill_missing=True)
    return np.ascontiguousarray(np.transpose(np.asarray(cv[:, :, :])[..., 0]))

"""Zarr v3 volumes with OME-Zarr 0.5 multiscale metadata (scale 0 in array "0")."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from connectome.core.errors import UserError
from connectome.core.geometry import Box, vec3
from connectome.io.base import Volume, VolumeMeta, check_same_place, leading_axes

SCALE0 = "0"
# zstd level 1: on real EM (medulla, gala, VNC) the same size as zarr's default level 3 at 1.4-1.8x
# the compression speed; label volumes come out about 4% larger (benchmarks/results/copy_throughput.md)
COMPRESSORS: tuple[dict[str, Any], ...] = ({"name": "zstd", "configuration": {"level": 1, "checksum": False}},)


def _ome_attrs(name: str, voxel_size, offset, channels) -> dict:
    """OME-Zarr 0.5 multiscales (one level) and our own metadata. OME's translation places voxel 0's centre
    (Neuroglancer and napari read it so): voxel i spans [(offset + i) v, (offset + i + 1) v] nm, as in a
    precomputed volume of that voxel_offset and in our meshes, skeletons and annotations, so its centre is at
    (offset + i + 1/2) v."""
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    scale = [float(v) for v in voxel_size]
    translation = [float((o + 0.5) * v) for o, v in zip(offset, voxel_size)]
    if channels is not None:
        axes = [{"name": "c", "type": "channel"}] + axes
        scale = [1.0] + scale
        translation = [0.0] + translation
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": axes,
                    "datasets": [
                        {
                            "path": SCALE0,
                            "coordinateTransformations": [
                                {"type": "scale", "scale": scale},
                                {"type": "translation", "translation": translation},
                            ],
                        }
                    ],
                }
            ],
        },
        "connectome": {
            "voxel_size": scale[-3:],
            "offset": [int(o) for o in offset],
            "channels": channels,
        },
    }


NM_PER_UNIT = {"angstrom": 0.1, "nanometer": 1.0, "micrometer": 1000.0, "millimeter": 1e6}


def ome_scale0(metadata_file: str, attrs: dict) -> tuple[str, tuple[float, float, float] | None]:
    """The path of an OME-Zarr image group's first (finest) level, and its voxel size in nm (z, y, x: its last
    three space axes) where the group's multiscales give it in a length unit; (SCALE0, None) for a group
    without OME metadata. Multiscales that cannot be read so are one line naming the file and key."""
    multiscales = attrs.get("ome", {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    key = "ome.multiscales[0]"
    if not multiscales and attrs.get("multiscales"):  # OME-Zarr 0.4 (zarr v2: bioformats2raw, ome-zarr-py)
        multiscales, key = attrs["multiscales"], "multiscales[0]"
    if not multiscales:
        return SCALE0, None
    try:
        first = multiscales[0]
        dataset = first["datasets"][0]
        level = str(dataset["path"])
        axes = first.get("axes")
        scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"),
                     None)
        if axes is None or scale is None or len(scale) != len(axes):
            return level, None
        overall = next((t["scale"] for t in first.get("coordinateTransformations", []) if t.get("type") == "scale"),
                       [1.0] * len(axes))
        space = [i for i, axis in enumerate(axes) if axis.get("type") == "space"][-3:]
        units = [NM_PER_UNIT.get(axes[i].get("unit", "")) for i in space]
        if len(space) != 3 or None in units:
            return level, None
        size = tuple(float(scale[i]) * float(overall[i]) * float(u) for i, u in zip(space, units) if u is not None)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{metadata_file}: cannot read {key} (OME-Zarr multiscales: datasets[0].path, axes and "
                        f"their scale) ({type(e).__name__}: {e})") from None
    if not all(v > 0 for v in size):
        raise UserError(f"{metadata_file}: {key} gives voxel size {list(size)} nm; expected positive values")
    return level, (size[0], size[1], size[2])


class ZarrVolume(Volume):
    """An OME-Zarr image group (or a bare zarr v3 array) on a local path."""

    def __init__(self, address: str, mode: str = "r"):
        super().__init__(address)
        self.writable = mode != "r"
        path = address
        version2 = _zarr_v2_marker(path)
        if not os.path.exists(os.path.join(path, "zarr.json")) and not version2:
            found = "an empty folder" if os.path.isdir(path) and not os.listdir(path) else "no zarr.json"
            raise UserError(f"{address}: expected a zarr array or OME-Zarr group (v3 zarr.json, or v2 .zarray / "
                            f".zgroup), or a folder of TIFF/PNG sections; found {found}")
        if version2 and self.writable:
            raise UserError(_v2_not_written(address, version2))
        metadata_file = os.path.join(path, ".zattrs" if version2 else "zarr.json")
        try:
            node = zarr.open(store=path, mode="r+" if self.writable else "r")
        except Exception as e:  # zarr raises several types for a damaged store
            raise UserError(f"{address}: not a readable zarr store ({type(e).__name__}: {e})") from None
        attrs: dict[str, Any] = dict(node.attrs)  # JSON: what each key holds is checked where it is used
        series = _bioformats2raw_image(address, path, attrs) if isinstance(node, zarr.Group) else None
        if series is not None:  # bioformats2raw's root (`x.zarr`): its one image, `x.zarr/0`
            if self.writable:
                raise UserError(f"{address}: a bioformats2raw collection is read here, not written; write to a new "
                                "output")
            path = os.path.join(path, series)
            metadata_file = os.path.join(path, ".zattrs" if version2 else "zarr.json")
            try:
                node = zarr.open(store=path, mode="r")
            except Exception as e:  # zarr raises several types for a damaged store
                raise UserError(f"{path}: not a readable zarr store ({type(e).__name__}: {e})") from None
            attrs = dict(node.attrs)
        self._array: zarr.Array
        ome_voxel_size = None
        if isinstance(node, zarr.Group):
            level, ome_voxel_size = ome_scale0(metadata_file, attrs)
            try:
                scale0 = node[level]
            except KeyError:
                raise UserError(f"{address}: zarr group without an OME-Zarr scale-0 array '{level}'"
                                + _held_volumes(node, address)) from None
            except Exception as e:  # its zarr.json names an unknown dtype or codec, or is damaged
                raise UserError(f"{os.path.join(path, level, 'zarr.json')}: not a readable zarr array "
                                f"({type(e).__name__}: {e})") from None
            if not isinstance(scale0, zarr.Array):
                raise UserError(f"{address}: the OME-Zarr scale-0 node '{level}' is a group, expected an array")
            self._array = scale0
            self._array_dir = os.path.join(path, level)
        else:
            self._array = node
            self._array_dir = path
            image = _image_of_level(path)
            if image is not None:  # `image.zarr/0` given for `image.zarr`: its metadata is the group's
                attrs, ome_voxel_size = image
        own = attrs.get("connectome", {})
        self._footprints = _footprints(address, own.get("section_footprints", {}))
        channels = own.get("channels")
        arr = self._array
        self._fixed: tuple[int, ...] = ()  # indices of leading axes of length 1 that are dropped (t, c)
        if channels is None:  # another tool's array: (t,) (c,) z, y, x
            dropped, channels = leading_axes(address, arr.shape)
            self._fixed = (0,) * dropped
        elif arr.ndim != 4:
            raise UserError(f"{address}: expected a 4-d (c, z, y, x) array ({channels} channels in its metadata), "
                            f"found shape {arr.shape}")
        spatial = vec3(arr.shape[-3:])
        chunks = vec3(arr.chunks[-3:])
        voxel_size = tuple(float(v) for v in own.get("voxel_size", (1.0, 1.0, 1.0)))
        offset = tuple(int(o) for o in own.get("offset", (0, 0, 0)))
        if len(voxel_size) != 3 or len(offset) != 3:
            raise UserError(f"{address}: expected 3 values (z y x) for voxel_size and offset in its metadata, "
                            f"found {list(voxel_size)} and {list(offset)}")
        self._meta = VolumeMeta(
            shape=spatial,
            dtype=np.dtype(arr.dtype),
            chunk_shape=chunks,
            voxel_size=voxel_size,
            offset=offset,
            channels=channels,
            voxel_size_known="voxel_size" in own,  # a zarr another tool wrote carries none that we rely on
            suggested_voxel_size=None if "voxel_size" in own else ome_voxel_size,
        )

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _index(self, box: Box):
        s = box.to_slices()
        return (*self._fixed, *s) if self._meta.channels is None else (*self._fixed, slice(None), *s)

    @property
    def _lead(self) -> tuple[int, ...]:
        """The chunk position of a box's chunks before the spatial axes (the first channel's)."""
        return (*self._fixed, *((0,) if self._meta.channels is not None else ()))

    def _read(self, box: Box) -> np.ndarray:
        try:
            return np.asarray(self._array[self._index(box)])
        except Exception as e:
            raise self._undecodable(box, e) from None

    def _undecodable(self, box: Box, error: Exception) -> Exception:
        """An error naming the chunk file of `box` that cannot be read (found by reading them one by one)."""
        chunks = self._meta.chunk_shape
        first = [o // c for o, c in zip(box.offset, chunks)]
        last = [-(-e // c) for e, c in zip(box.end, chunks)]
        for position in itertools.product(*(range(a, b) for a, b in zip(first, last))):
            begin = [p * c for p, c in zip(position, chunks)]
            chunk = Box.of(begin, chunks).intersect(self.box)
            try:
                self._array[self._index(chunk)]
            except Exception as e:  # this chunk is the one
                key = self._array.metadata.encode_chunk_key(self._lead + position)
                return OSError(f"{os.path.join(self._array_dir, key)}: cannot decode this chunk of {self.address} "
                               f"({type(e).__name__}: {e})")
        return error

    def missing_chunks(self, limit: int = 5) -> tuple[int, int, list[str]]:
        """(chunk files missing, chunk files expected, the first `limit` missing keys): a missing
        chunk reads as the fill value, which is right only for a chunk that held nothing else."""
        metadata = self._array.metadata
        grid = getattr(metadata.chunk_grid, "chunk_shape", self._array.chunks)  # stored objects (shards if sharded)
        shape = self._array.shape
        counts = [-(-s // c) for s, c in zip(shape, grid)]
        expected = int(np.prod(counts))
        present = set()
        for folder, _, files in os.walk(self._array_dir):
            rel = os.path.relpath(folder, self._array_dir)
            for name in files:
                if name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup") and not name.endswith(".partial"):
                    present.add(name if rel == "." else f"{rel}/{name}")
        missing, first = 0, list[str]()
        for position in itertools.product(*(range(n) for n in counts)):
            key = metadata.encode_chunk_key(position)
            if key not in present:
                missing += 1
                if len(first) < limit:
                    first.append(key)
        return missing, expected, first

    def _write(self, box: Box, data: np.ndarray) -> None:
        """Write `box`. zarr's own test for empty chunks compares each chunk with a filled copy (over
        half the write time of a copy); instead chunks are written as they are, and those that `box`
        covers whole and leaves all fill value are deleted after, as zarr would not have stored them."""
        covered = self._covered_chunks(box)
        self._remove_partial_files(covered)
        self._unchecked[self._index(box)] = data
        fill = self._array.fill_value
        self._remove_chunk_files([key for key, sl in covered if _all_fill(data[(Ellipsis,) + sl], fill)])

    def stored_chunks(self, box: Box) -> tuple[str, list[str]]:
        return self._array_dir, [key for key, _ in self._covered_chunks(box)]

    def source_files(self, box: Box) -> tuple[str, list[str]] | None:
        metadata = self._array.metadata
        if "://" in self._array_dir:
            return None
        stored = tuple(getattr(metadata.chunk_grid, "chunk_shape", self._array.chunks))  # (shards if sharded)
        box = box.intersect(self.box)
        if 0 in box.shape:
            return self._array_dir, []
        ranges = [range(o // c, -(-e // c)) for o, e, c in zip(box.offset, box.end, stored[-3:])]
        if self._meta.channels is not None:  # every channel's chunks
            ranges.insert(0, range(-(-self._meta.channels // stored[-4])))
        ranges[:0] = [range(1)] * len(self._fixed)
        encode = metadata.encode_chunk_key  # (v3: its chunk key encoding; v2: its dimension separator)
        return self._array_dir, [encode(position) for position in itertools.product(*ranges)]

    def section_footprints(self) -> dict[int, tuple[int, int, int, int]]:
        return dict(self._footprints)

    def record_footprints(self, footprints: dict[int, tuple[int, int, int, int]]) -> None:
        """Store the sections' footprints (`Volume.section_footprints`) in the group's metadata."""
        node = zarr.open(store=self.address, mode="r+")  # the group, or a bare array: where its metadata lives
        own: dict[str, Any] = dict(node.attrs.get("connectome", {}))  # type: ignore[arg-type]
        own["section_footprints"] = {str(z): [int(v) for v in f] for z, f in sorted(footprints.items())}
        node.attrs["connectome"] = own
        self._footprints = dict(footprints)

    @functools.cached_property
    def _unchecked(self) -> zarr.Array:
        return self._array.with_config({"write_empty_chunks": True})

    def _covered_chunks(self, box: Box) -> list[tuple[str, tuple[slice, ...]]]:
        """(store key relative to the array, slices into `box`) of each chunk that `box` covers whole."""
        chunks, shape = self._meta.chunk_shape, self._meta.shape
        ranges = [range(-(-o // c), -(-e // c) if e == s else e // c)
                  for o, e, c, s in zip(box.offset, box.end, chunks, shape)]
        lead = self._lead
        metadata = self._array.metadata
        if metadata.zarr_format != 3:  # never so: a store with a zarr.json is v3
            raise UserError(f"{self.address}: expected a zarr v3 array, found zarr format {metadata.zarr_format}")
        encode = metadata.chunk_key_encoding.encode_chunk_key
        out = []
        for position in itertools.product(*ranges):
            sl = tuple(slice(p * c - o, min((p + 1) * c, s) - o)
                       for p, c, o, s in zip(position, chunks, box.offset, shape))
            out.append((encode((*lead, *position)), sl))
        return out

    def _remove_chunk_files(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._array_dir, key))

    def _remove_partial_files(self, chunks: list[tuple[str, tuple[slice, ...]]]) -> None:
        """Delete the temporary files that killed writes of `chunks` left behind.

        zarr writes a chunk to `<key>.<uuid>.partial`, then renames it; a process killed between
        the two leaves the temporary file. Blocks own their chunks, so only the block that
        rewrites a chunk can meet these files.
        """
        wanted: dict[str, set[str]] = {}
        for key, _ in chunks:
            folder, _, name = key.rpartition("/")
            wanted.setdefault(folder, set()).add(name)
        for folder, names in wanted.items():
            try:
                entries = os.scandir(os.path.join(self._array_dir, folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.name.endswith(".partial") and entry.name[:-8].rsplit(".", 1)[0] in names:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)


def _zarr_v2_marker(path: str) -> str | None:
    """The zarr v2 metadata file (.zarray or .zgroup) at `path`, if it holds one."""
    return next((n for n in (".zarray", ".zgroup") if os.path.exists(os.path.join(path, n))), None)


def _v2_not_written(address: str, marker: str) -> str:
    return (f"{address}: a zarr v2 store ({marker}) is read here, not written; write to a new output "
            "(connectome writes zarr v3)")


def _group_attrs(path: str) -> tuple[str, dict] | None:
    """(its metadata file, its attributes) of the zarr group at `path`: a v3 zarr.json of a group, or a v2 .zgroup with
    its .zattrs (none: {}); None where no group is there or its metadata is not a JSON object."""
    import json

    version2 = os.path.exists(os.path.join(path, ".zgroup"))
    metadata_file = os.path.join(path, ".zattrs" if version2 else "zarr.json")
    try:
        with open(metadata_file) as f:
            metadata = json.load(f)
    except FileNotFoundError:
        return (metadata_file, {}) if version2 else None
    except (OSError, ValueError):
        return None
    if not isinstance(metadata, dict):
        return None
    if version2:
        return metadata_file, metadata
    attrs = metadata.get("attributes", {}) if metadata.get("node_type") == "group" else None
    return (metadata_file, attrs) if isinstance(attrs, dict) else None


def _bioformats2raw_image(address: str, path: str, attrs: dict) -> str | None:
    """The image group (its path in the group) of the bioformats2raw collection at `path` whose root attributes are
    `attrs` (`bioformats2raw.layout` 3: images `0`, `1`, ... or those its `OME` group's `series` lists); None where
    `attrs` name no such layout. A collection of several images, or of none, is one line naming the ones to choose."""
    ome: dict = attrs["ome"] if isinstance(attrs.get("ome"), dict) else {}  # (OME-Zarr 0.5: its keys under "ome")
    layout = attrs.get("bioformats2raw.layout", ome.get("bioformats2raw.layout"))
    if layout is None:
        return None
    root_file = os.path.join(path, ".zattrs" if os.path.exists(os.path.join(path, ".zgroup")) else "zarr.json")
    if layout != 3:
        raise UserError(f"{root_file}: bioformats2raw.layout is {layout!r}; expected 3 (the layout version read here)")
    name = address.rstrip("/")
    plate = attrs.get("plate", ome.get("plate"))
    if plate is not None:
        try:
            example = f"{name}/{plate['wells'][0]['path']}/0"
        except (KeyError, IndexError, TypeError):
            example = f"{name}/A/1/0"
        raise UserError(f"{root_file}: plate: expected one image, found a bioformats2raw plate; give the address "
                        f"of one field of view, e.g. {example}")
    series_file, series_attrs = _group_attrs(os.path.join(path, "OME")) or ("", {})
    listed = series_attrs.get("series")
    if listed is None and isinstance(series_attrs.get("ome"), dict):  # (OME-Zarr 0.5: under "ome")
        listed = series_attrs["ome"].get("series")
    if listed is not None:
        where = f"series in {series_file}"
        if not isinstance(listed, list) or not all(isinstance(s, str) and s for s in listed):
            raise UserError(f"{series_file}: series: expected a list of image group paths, found {listed!r}")
        series = list(listed)
    else:  # (no series listed: the images are the groups 0, 1, ... there are)
        where = f"groups 0, 1, ... of {name}"
        series = list(itertools.takewhile(lambda s: _group_attrs(os.path.join(path, s)) is not None,
                                          (str(i) for i in itertools.count())))
    if len(series) > 1:
        shown = ", ".join(f"{name}/{s}" for s in series[:5]) + (", ..." if len(series) > 5 else "")
        raise UserError(f"{address}: a bioformats2raw collection of {len(series)} images ({where}); expected one: "
                        f"give the address of the image to read, one of {shown}")
    if not series or _group_attrs(os.path.join(path, series[0])) is None:
        found_text = f"no group {name}/{series[0]}" if series else "none"
        raise UserError(f"{address}: a bioformats2raw collection ({where}); expected its image group, "
                        f"found {found_text}")
    return series[0]


def _image_of_level(path: str) -> tuple[dict, tuple[float, float, float] | None] | None:
    """(the attributes of the OME-Zarr image group whose finest level is the array at `path`, its OME voxel size),
    or None where the folder above holds no such group: a zarr v3 group (OME-Zarr 0.5) or a v2 one (0.4)."""
    found = _group_attrs(os.path.dirname(os.path.normpath(path)))
    if found is None:
        return None
    metadata_file, attrs = found
    if not isinstance(attrs.get("ome"), dict) and not attrs.get("multiscales"):
        return None
    try:
        level, voxel_size = ome_scale0(metadata_file, attrs)
    except UserError:
        return None
    if level != os.path.basename(os.path.normpath(path)):
        return None
    return attrs, voxel_size


def _all_fill(values: np.ndarray, fill) -> bool:
    """Every value of `values` equals the array's fill value (None: no fill value)."""
    if fill is None:
        return False
    fill = np.asarray(fill, values.dtype)
    if values.dtype.kind == "f":  # by bit pattern: a NaN fill matches, -0.0 is not 0.0
        values, fill = values.view(f"u{values.dtype.itemsize}"), fill.view(f"u{values.dtype.itemsize}")
    return not values.any() if fill == 0 else bool((values == fill).all())


def _footprints(address: str, stored) -> dict[int, tuple[int, int, int, int]]:
    """The `section_footprints` metadata as {z: (y0, x0, height, width)}; one line when it is malformed."""
    try:
        found = {int(z): tuple(int(v) for v in f) for z, f in dict(stored).items()}
    except (TypeError, ValueError):
        found = None
    if found is None or any(len(f) != 4 for f in found.values()):
        raise UserError(f"{address}: metadata connectome.section_footprints: expected {{z: [y0, x0, height, width]}}, "
                        f"found {stored!r}")
    return found  # type: ignore[return-value]


def create_zarr_volume(
    address: str,
    shape: Sequence[int],
    dtype,
    chunk_shape: Sequence[int],
    voxel_size: Sequence[float],
    offset: Sequence[int] = (0, 0, 0),
    channels: int | None = None,
    overwrite: bool = False,
) -> ZarrVolume:
    version2 = _zarr_v2_marker(address)
    if version2:  # before anything is written: a lab's v2 store is read, never written over, not even with --overwrite
        raise UserError(_v2_not_written(address, version2))
    if os.path.exists(os.path.join(address, "zarr.json")) and not overwrite:
        existing = ZarrVolume(address, "r+")
        m = existing.meta
        want = (tuple(shape), np.dtype(dtype), tuple(chunk_shape), channels)
        have = (m.shape, m.dtype, m.chunk_shape, m.channels)
        if want != have:
            raise UserError(
                f"{address}: exists with shape/dtype/chunks/channels {have}, expected {want} "
                "(pass --overwrite to replace it)"
            )
        check_same_place(address, m, voxel_size, offset)
        return existing
    chunk_shape = tuple(min(int(c), int(s)) for c, s in zip(chunk_shape, shape))
    group = zarr.open_group(store=address, mode="w" if overwrite else "a")
    group.attrs.update(_ome_attrs(os.path.basename(address.rstrip("/")), voxel_size, offset, channels))
    full_shape = tuple(shape) if channels is None else (channels, *shape)
    full_chunks = chunk_shape if channels is None else (channels, *chunk_shape)
    dims = ("z", "y", "x") if channels is None else ("c", "z", "y", "x")
    group.create_array(
        SCALE0,
        shape=full_shape,
        chunks=full_chunks,
        dtype=np.dtype(dtype),
        fill_value=0,
        compressors=COMPRESSORS,
        dimension_names=dims,
        overwrite=overwrite,
    )
    return ZarrVolume(address, "r+")


def same_encoding(src: ZarrVolume, dst: ZarrVolume) -> bool:
    """Whether `dst` stores `src`'s chunks byte for byte: the same shape, chunk grid, dtype, fill
    value, codecs (compressor and its settings included) and chunk key encoding."""
    a, b = src._array.metadata, dst._array.metadata
    if a.zarr_format != 3 or b.zarr_format != 3:  # (never so: a store with a zarr.json is v3)
        return False
    return (a.shape == b.shape and a.chunk_grid == b.chunk_grid and a.data_type == b.data_type
            and a.fill_value == b.fill_value and a.codecs == b.codecs
            and a.chunk_key_encoding == b.chunk_key_encoding)


def copy_stored_chunks(src: ZarrVolume, dst: ZarrVolume, threads: int = 8) -> tuple[int, int]:
    """Copy every stored chunk file of `src` into `dst` as it is (no decoding, no encoding); a
    destination file of the same size is kept (a re-run resumes). Returns (files copied, bytes)."""
    from concurrent.futures import ThreadPoolExecutor

    if not same_encoding(src, dst):
        raise ValueError(f"{src.address} -> {dst.address}: the chunks are encoded differently")
    pairs: list[tuple[str, str, int]] = []
    made: set[str] = set()
    for folder, _, files in os.walk(src._array_dir):
        rel = os.path.relpath(folder, src._array_dir)
        for name in files:
            if name == "zarr.json" or name.endswith(".partial"):
                continue
            source = os.path.join(folder, name)
            target = os.path.join(dst._array_dir, rel, name)
            size = os.path.getsize(source)
            with contextlib.suppress(FileNotFoundError):
                if os.path.getsize(target) == size:
                    continue
            target_dir = os.path.dirname(target)
            if target_dir not in made:
                os.makedirs(target_dir, exist_ok=True)
                made.add(target_dir)
            pairs.append((source, target, size))

    def copy(pair: tuple[str, str, int]) -> int:
        source, target, size = pair
        tmp = f"{target}.{os.getpid()}.partial"  # the name zarr's own killed writes leave (cleaned alike)
        with open(source, "rb") as fin, open(tmp, "wb") as fout:
            left = size
            while left > 0:
                sent = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                if sent == 0:
                    break
                left -= sent
            if left:
                fin.seek(size - left)
                fout.write(fin.read())
        os.replace(tmp, target)
        return size

    with ThreadPoolExecutor(max(1, threads)) as pool:
        copied = sum(pool.map(copy, pairs))
    return len(pairs), copied


def _held_volumes(group: zarr.Group, address: str, shown: int = 8) -> str:
    """'; it holds A, B, ...: give one of them, e.g. ADDRESS/A' for a group that holds other groups or arrays (an
    output folder given for its volume), else ''."""
    with warnings.catch_warnings():  # zarr warns of every non-zarr entry (run records, tables)
        warnings.simplefilter("ignore")
        names = sorted(group.group_keys()) + sorted(group.array_keys())
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"; it holds {', '.join(names[:shown])}{more}: give one of them, e.g. {address.rstrip('/')}/{names[0]}"

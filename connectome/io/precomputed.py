"""Neuroglancer precomputed volumes through cloud-volume (file://, gs://, s3://, ...)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from connectome.core.address import PRECOMPUTED as PREFIX
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io.base import Volume, VolumeMeta, check_same_place


def cloudpath(address: str) -> str:
    return address[len(PREFIX):] if address.startswith(PREFIX) else address


def local_path(address: str) -> str | None:
    """The local folder of a `precomputed://file://` layer; None for a remote one."""
    url = cloudpath(address)
    return url[len("file://"):] if url.startswith("file://") else None


def info_location(address: str) -> str:
    """The `info` file of a layer as a user names it: a local path, or the URL of a remote one."""
    return os.path.join(local_path(address) or cloudpath(address).rstrip("/"), "info")


COMPRESSED = (".gz", ".br", ".zstd", ".xz", ".bz2")  # suffixes of a chunk file stored compressed


class NoInfo(UserError):
    """There is no `info` file at the address (as opposed to one that cannot be read)."""


def _fetch_info(address: str) -> tuple[bool, Any]:
    """(whether it could be fetched again, the parsed `info` file)."""
    from cloudfiles import CloudFiles

    try:
        return True, CloudFiles(cloudpath(address)).get_json("info")
    except Exception:  # noqa: BLE001 - only to explain a failure already met; the caller has its own line
        return False, None


def info_problem(info: str, found: Any) -> str | None:
    """One line naming what a precomputed `info` (parsed JSON, `found`) lacks for scale 0 to be read; None if
    nothing. `info` is the file's name for the message."""
    def whole(v: Any, least: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    def triple(v: Any, least: int) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(whole(x, least) for x in v)

    def numbers(v: Any) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)

    def describe(v: Any) -> str:
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."

    if not isinstance(found, dict):
        return f"{info}: expected a JSON object (the layer's metadata), found {describe(found)}"
    wanted: list[tuple[str, Any, str, Any]] = [  # (key, its value, what it must be, test)
        ("data_type", found.get("data_type", ...), "a numpy dtype name such as \"uint8\"", _is_dtype),
        ("num_channels", found.get("num_channels", ...), "a whole number >= 1", lambda v: whole(v, 1)),
        ("scales", found.get("scales", ...), "a list of scale objects, scale 0 first",
         lambda v: isinstance(v, list) and len(v) > 0 and isinstance(v[0], dict)),
    ]
    for key, value, expected, ok in wanted:
        if value is ...:
            return f"{info}: key {key!r} is missing; expected {expected}"
        if not ok(value):
            return f"{info}: key {key!r}: expected {expected}, found {describe(value)}"
    scale = found["scales"][0]
    per_scale: list[tuple[str, str, Any, bool]] = [  # (key, what it must be, test, required)
        ("key", "the name of the scale's folder (a string)", lambda v: isinstance(v, str) and v != "", True),
        ("size", "3 whole numbers >= 1 (x, y, z voxels)", lambda v: triple(v, 1), True),
        ("resolution", "3 positive numbers (x, y, z nm)", numbers, True),
        ("chunk_sizes", "a list holding 3 whole numbers >= 1 (x, y, z voxels)",
         lambda v: isinstance(v, list) and len(v) > 0 and triple(v[0], 1), True),
        ("encoding", "a string such as \"raw\"", lambda v: isinstance(v, str), True),
        ("voxel_offset", "3 whole numbers (x, y, z voxels)", lambda v: triple(v, -(2**62)), False),
    ]
    for key, expected, ok, required in per_scale:
        if key not in scale:
            if required:
                return f"{info}: key 'scales[0].{key}' is missing; expected {expected}"
            continue
        if not ok(scale[key]):
            return f"{info}: key 'scales[0].{key}': expected {expected}, found {describe(scale[key])}"
    encoding, dtype = scale["encoding"], found["data_type"]
    if encoding not in ENCODINGS:
        return f"{info}: key 'scales[0].encoding': expected one of {', '.join(sorted(ENCODINGS))}, found {encoding!r}"
    if ENCODINGS[encoding] and dtype not in ENCODINGS[encoding]:
        return (f"{info}: key 'scales[0].encoding': {encoding!r} stores {' or '.join(ENCODINGS[encoding])} chunks, "
                f"but data_type is {dtype!r}")
    return None


# the chunk encodings of the precomputed format that cloud-volume reads -> the data types each can hold (): any)
ENCODINGS: dict[str, tuple[str, ...]] = {
    "raw": (), "npz": (), "npz_uint8": (), "jpeg": ("uint8",), "png": ("uint8", "uint16"), "jxl": ("uint8", "uint16"),
    "compressed_segmentation": ("uint32", "uint64"), "compresso": ("uint8", "uint16", "uint32", "uint64"),
    "crackle": ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"),
    "fpzip": ("float32", "float64"), "kempressed": ("float32", "float64"), "zfpc": ("float32", "float64"),
}


def _is_dtype(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


class PrecomputedVolume(Volume):
    """Scale 0 of a precomputed layer; cloud-volume's (x, y, z, c) order is turned into (c, z, y, x)."""

    def __init__(self, address: str, mode: str = "r"):
        super().__init__(address)
        from cloudvolume import CloudVolume
        from cloudvolume.exceptions import InfoUnavailableError

        self.writable = mode != "r"
        self._checked: set[str] = set()  # chunks read as all zeros whose file was found sound or missing
        info = info_location(address)
        try:
            self._cv = CloudVolume(
                cloudpath(address), mip=0, fill_missing=True, bounded=True, progress=False,
                non_aligned_writes=False, parallel=1, cache=False,
            )
        except InfoUnavailableError:
            raise NoInfo(f"{address}: no precomputed 'info' file there") from None
        except json.JSONDecodeError as e:  # orjson's error is one
            raise UserError(f"{info}: not valid JSON ({e})") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:  # a JSON value of the wrong form
            fetched, parsed = _fetch_info(address)
            raise UserError((info_problem(info, parsed) if fetched else None) or
                            f"{info}: not a precomputed info file cloud-volume can read ({type(e).__name__}: {e})"
                            ) from None
        cv = self._cv
        problem = info_problem(info, cv.info)
        if problem:
            raise UserError(problem)
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
        try:
            cut = np.asarray(self._cv[self._bbox(box)])  # x, y, z, c
        except Exception as e:
            raise self._undecodable(box, e) from None
        out = np.transpose(cut, (3, 2, 1, 0))
        out = np.ascontiguousarray(out[0] if self._meta.channels is None else out)
        self._refuse_filled(box, out)
        return out

    def source_files(self, box: Box) -> tuple[str, list[str]] | None:
        base = local_path(self.address)
        if base is None or self._cv.meta.sharding(0):  # (a shard file holds many boxes' chunks)
            return None
        # chunk names without the suffix of their compression (a reader of them finds it: engine.markers.input_record)
        return os.path.join(base, str(self._cv.meta.key(0))), [
            self._chunk_name(chunk) for chunk in self._chunks(box.intersect(self.box))]

    def _chunks(self, box: Box) -> Iterator[Box]:
        """The chunks `box` touches (in the volume's voxels, cut to the volume)."""
        chunks = self._meta.chunk_shape
        first = [o // c for o, c in zip(box.offset, chunks)]
        last = [-(-e // c) for e, c in zip(box.end, chunks)]
        for position in itertools.product(*(range(a, b) for a, b in zip(first, last))):
            yield Box.of([p * c for p, c in zip(position, chunks)], chunks).intersect(self.box)

    def _refuse_filled(self, box: Box, out: np.ndarray) -> None:
        """Raise naming the chunk files of `box` (read as `out`) that cloud-volume filled with zeros although they
        are there: it reads a file that is empty or decompresses to nothing (a gzip chunk cut to 7 bytes, or one
        whose last 4 bytes, the length, are zeros) as a missing chunk, without a word. Only a chunk read as all
        zero bytes is looked at again (any other byte was decoded from its file), once per file."""
        if self._cv.meta.sharding(0) or 0 in box.shape:  # (a sharded layer's chunks live inside shard files)
            return
        chunks, size = self._meta.chunk_shape, out.dtype.itemsize
        as_bytes = out.view(np.uint8)  # (c,) z, y, x * size: -0.0 is not a chunk filled
        spans = [[(s, max(s, o) - o, min(s + c, e) - o) for s in range(o // c * c, e, c)]
                 for o, e, c in zip(box.offset, box.end, chunks)]  # per axis: (chunk start, start, end in `out`)
        bad: list[tuple[str, str]] = []
        for (z, z0, z1), (y, y0, y1), (x, x0, x1) in itertools.product(*spans):
            region = as_bytes[..., z0:z1, y0:y1, x0 * size:x1 * size]
            if region[..., 0, 0, :].any() or region[..., 0, :, :].any():  # (its first row or plane settles most)
                continue
            chunk = Box.of((z, y, x), chunks).intersect(self.box)
            name = self._chunk_name(chunk)
            if name in self._checked or region.any():
                continue
            problem = self._chunk_problem(chunk)
            if problem is not None:
                bad.append(problem)
            elif len(self._checked) < 1_000_000:
                self._checked.add(name)
        if bad:
            raise self._damaged(bad)

    def _chunk_problem(self, chunk: Box) -> tuple[str, str] | None:
        """(the file of `chunk`, what is wrong with it: what was expected and what was found), read alone; None
        for a file that decodes to the chunk's voxels, and for a missing one (read as background, which
        `missing_chunks` tells)."""
        from cloudfiles import CloudFiles, compression
        from cloudvolume import chunks as codecs

        meta = self._cv.meta
        name = self._chunk_name(chunk)
        try:
            (file,) = CloudFiles(cloudpath(self.address)).get([f"{meta.key(0)}/{name}"], raw=True)
        except Exception as e:  # noqa: BLE001 - named in the line, as a file that cannot be decoded is
            return (self._chunk_path(name),
                    f"expected a readable chunk file, found one that cannot be read ({type(e).__name__}: {e})")
        content, compress = file["content"], file["compress"]
        if content is None:
            return None
        path = self._chunk_path(name)  # (with the suffix of its compression)
        (sz, sy, sx), channels = chunk.shape, int(meta.num_channels)
        dtype, encoding = np.dtype(self._cv.dtype), str(meta.encoding(0))
        size = sx * sy * sz * channels * dtype.itemsize
        voxels = f"{sx} x {sy} x {sz} (x y z) {dtype} voxels{f' of {channels} channels' if channels > 1 else ''}"
        expected = f"{size} bytes of raw {voxels}" if encoding == "raw" else f"{encoding} data of {voxels}"
        if compress:
            expected += f", {compress}-compressed"
        if len(content) == 0:
            return path, f"expected {expected}, found an empty file"
        if compress == "gzip" and bytes(content[:2]) != b"\x1f\x8b":  # (cloudfiles would print a line of its own)
            return path, f"expected {expected}, found {len(content)} bytes that are not gzip data"
        try:
            data = compression.decompress(content, compress)
        except Exception as e:  # noqa: BLE001 - a damaged stream: any codec's error
            return path, (f"expected {expected}, found {len(content)} bytes that {compress} cannot decompress "
                          f"({type(e).__name__}: {e})")
        if len(data) == 0:
            return path, f"expected {expected}, found {len(content)} bytes that decompress to nothing"
        once = " once decompressed" if compress else ""
        if encoding == "raw":
            return None if len(data) == size else (path, f"expected {expected}, found {len(data)} bytes{once}")
        try:
            codecs.decode(data, encoding, shape=[sx, sy, sz, channels], dtype=dtype,
                          block_size=meta.compressed_segmentation_block_size(0) or (8, 8, 8))
        except Exception as e:  # noqa: BLE001 - any codec's error
            return path, (f"expected {expected}, found {len(data)} bytes{once} that do not decode as {encoding} "
                          f"({type(e).__name__}: {e})")
        return None

    def _damaged(self, bad: list[tuple[str, str]]) -> OSError:
        """One line naming the first damaged chunk file, what was expected and found, and how many more."""
        path, why = bad[0]
        more = ""
        if len(bad) > 1:
            more = (f"; {len(bad) - 1} more chunk file(s) of this box cannot be decoded either: "
                    f"{', '.join(p for p, _ in bad[1:4])}{' ...' if len(bad) > 4 else ''}")
        return OSError(f"{path}: cannot decode this chunk of {self.address} ({why}){more}")

    def _undecodable(self, box: Box, error: Exception) -> Exception:
        """An error naming the chunk files of `box` that cannot be read (found by reading them one by one), as
        ZarrVolume names its chunk; `error` itself where each chunk reads alone (e.g. a network error that passed)."""
        if self._cv.meta.sharding(0):  # chunks live inside shard files, which hold many boxes
            where = self._chunk_path("")
            return OSError(f"{where}: cannot decode the shards of {self.address} holding box {box} "
                           f"({type(error).__name__}: {error})")
        bad = [problem for problem in map(self._chunk_problem, self._chunks(box)) if problem is not None]
        return self._damaged(bad) if bad else error

    def missing_chunks(self, limit: int = 5) -> tuple[int, int, list[str]] | None:
        """(chunk files missing, chunk files expected, the first `limit` missing names) of a local unsharded layer
        (cloud-volume reads a missing chunk as zeros and writes every chunk, all-zero ones too); None where that
        is not known here (a remote or sharded layer)."""
        base = local_path(self.address)
        if base is None or self._cv.meta.sharding(0):
            return None
        folder = os.path.join(base, str(self._cv.meta.key(0)))
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        present = {n.rsplit(".", 1)[0] if n.endswith(COMPRESSED) else n for n in names}
        chunks = self._meta.chunk_shape
        counts = [-(-s // c) for s, c in zip(self._meta.shape, chunks)]
        missing, first = 0, list[str]()
        for position in itertools.product(*(range(n) for n in counts)):
            name = self._chunk_name(Box.of([p * c for p, c in zip(position, chunks)], chunks).intersect(self.box))
            if name not in present:
                missing += 1
                if len(first) < limit:
                    first.append(name)
        return missing, int(np.prod(counts)), first

    def nothing_stored(self, first: str) -> str:
        """The line that refuses a local layer none of whose chunk files (`first`: the name of chunk 0) is there."""
        key = str(self._cv.meta.key(0))
        folder = os.path.join(local_path(self.address) or "", key)
        info = info_location(self.address)
        if not os.path.isdir(folder):
            return (f"{info}: scales[0].key {key!r} names no folder ({folder} does not exist), so every chunk would "
                    "read as zeros; expected the folder of scale 0's chunk files")
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        found = f"it holds {len(names)} other file(s), e.g. {names[0]}" if names else "it is empty"
        return (f"{info}: none of scale 0's chunk files is in {folder} (chunk 0 would be {first}; {found}), so every "
                "chunk would read as zeros; check scales[0].chunk_sizes, voxel_offset and size against the files")

    def _chunk_name(self, chunk: Box) -> str:
        """cloud-volume's file name of the chunk at `chunk` (x0-x1_y0-y1_z0-z1, in the layer's voxel coordinates)."""
        (z0, y0, x0), (z1, y1, x1) = chunk.offset, chunk.end
        ox, oy, oz = self._origin
        return f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"

    def _chunk_path(self, name: str) -> str:
        """Where chunk file `name` of scale 0 is stored: a local file (with the suffix of its compression, e.g.
        .gz, where it has one) or the URL of a remote one."""
        key = str(self._cv.meta.key(0))
        base = local_path(self.address)
        if base is None:
            return "/".join(part.strip("/") for part in (cloudpath(self.address), key, name) if part)
        path = os.path.join(base, key, name)
        if name:
            for suffix in ("", *COMPRESSED):
                if os.path.exists(path + suffix):
                    return path + suffix
        return path

    def _write(self, box: Box, data: np.ndarray) -> None:
        self._checked.clear()  # (a chunk file found sound or missing may be rewritten)
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
    except NoInfo:
        existing = None
    except UserError as e:  # an info file that cannot be read: replaced only when asked to
        if not overwrite:
            raise UserError(f"{e} (pass --overwrite to replace the volume)") from None
        existing = None
    if existing is not None and not overwrite:
        m = existing.meta
        if (m.shape, m.dtype, m.channels) != (tuple(shape), dtype, channels):
            raise UserError(
                f"{address}: exists with shape {m.shape} dtype {m.dtype} channels {m.channels}, "
                f"expected {tuple(shape)} {dtype} {channels} (pass --overwrite to replace it)"
            )
        check_same_place(address, m, voxel_size, offset)
        return existing
    cv = CloudVolume(cloudpath(address), info=info, progress=False)
    cv.commit_info()
    return PrecomputedVolume(address, "r+")

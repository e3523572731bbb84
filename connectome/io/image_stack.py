"""TIFF/PNG stacks: a directory of 2-d sections (natural sort order = z) or one multi-page TIFF.

Sections of a directory may differ in size, as a lab's raw sections often do before alignment: the volume is
as large as the largest section in y and in x, and each smaller section is read centred on it, padded with 0
(`padded`, `section_footprints`). The commands say so in one line (`engine.inputs`), `ingest` records the
footprints in the zarr it writes, and `align` flags the padding as outside the section. All sections must be
2-d and of one dtype; the headers of every file are read when the stack is opened (once per process), so a
stack that breaks either rule is refused before anything is written. So is a file that cannot be a whole section:
empty, not a TIFF or PNG, or cut short (a TIFF's image data, as its header places it, runs past the end of the file;
a PNG does not end with its IEND chunk), in one line naming the file (`check_file`). A section that still cannot be
decoded when a block reads it (damaged data, or a file changed since) fails that block naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass

import numpy as np

from connectome.core.address import IMAGE_SUFFIXES
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io.base import Volume, VolumeMeta
from connectome.io.readonly import array_meta

PIL_DTYPES = {"1": "bool", "L": "uint8", "P": "uint8", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16",
              "I": "int32", "F": "float32"}  # single-channel PIL modes; any other mode has channels


@dataclass(frozen=True)
class Padded:
    """A section smaller than the stack: its file, its own (y, x) shape, and where it sits in the stack's."""

    z: int
    file: str
    shape: tuple[int, int]
    offset: tuple[int, int]


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every whole PNG ends with


def _read_plane(path: str) -> np.ndarray:
    if path.lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    import tifffile

    return tifffile.imread(path)


class _TiffErrors(logging.Filter):
    """Holds back and keeps what tifffile logs as errors in this thread (a broken chain of pages, a corrupted tag
    list): tifffile reads on past them, so a damaged file would otherwise open as a shorter or emptier one."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self.thread or record.levelno < logging.ERROR:
            return True
        self.messages.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))  # (less tifffile's "<TiffPages @8>")
        return False


@contextlib.contextmanager
def _tiff_errors():
    logger = logging.getLogger("tifffile")
    errors = _TiffErrors()
    logger.addFilter(errors)
    try:
        yield errors.messages
    finally:
        logger.removeFilter(errors)


def _empty(path: str, what: str) -> None:
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file: expected a {what}, found 0 bytes")


def _tiff_data_shortfall(series, size: int) -> tuple[int, int] | None:
    """(bytes of image data the header places in the file, bytes of them there) where the file ends too soon."""
    if series.dataoffset is not None:  # contiguous, uncompressed: one span (a shaped stack may have read one page)
        spans = [(int(series.dataoffset), int(series.nbytes))]
    else:
        spans = [(int(o), int(n)) for page in series.pages if page is not None
                 for o, n in zip(page.dataoffsets, page.databytecounts)]
    expected = sum(n for _, n in spans)
    found = sum(min(n, max(0, size - o)) for o, n in spans)
    return (expected, found) if found < expected else None


def _tiff_header(path: str, what: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of the first series of a TIFF file, refused in one line (UserError) where the file cannot
    hold it whole: empty, not a TIFF, its image data cut short, its chain of pages broken."""
    import tifffile

    _empty(path, what)
    try:
        with _tiff_errors() as errors, tifffile.TiffFile(path) as tf:
            series = tf.series[0] if tf.series else None
            if series is None:
                raise UserError(f"{path}: expected a {what}, found a TIFF file without images")
            shape, dtype = tuple(series.shape), np.dtype(series.dtype).name
            short = _tiff_data_shortfall(series, tf.filehandle.size)
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, OSError, EOFError, struct.error) as e:
        raise UserError(f"{path}: expected a {what}, found a file tifffile cannot read ({e})") from None
    if short is not None:
        raise UserError(f"{path}: truncated: expected {short[0]} bytes of image data, found {short[1]}")
    if errors:
        raise UserError(f"{path}: damaged TIFF: {errors[0]} (the file has {os.path.getsize(path)} bytes); expected "
                        f"a whole {what}")
    return shape, dtype


def _png_end(path: str) -> str | None:
    """Where a PNG cut short before its IEND chunk stops (None where it is whole): its chunks walked from the
    signature by their lengths, without decoding, unless it ends with IEND (bytes after IEND are let be)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - len(PNG_END)))
        if f.read() == PNG_END:
            return None
        position = len(PNG_SIGNATURE)
        while position + 8 <= size:
            f.seek(position)
            head = f.read(8)
            length, kind = int.from_bytes(head[:4], "big"), head[4:].decode("latin-1")
            if position + 12 + length > size:
                return f"{size} bytes that end inside its {kind} chunk at byte {position}"
            if kind == "IEND":
                return None
            position += 12 + length  # length, type, data, CRC
        return f"{size} bytes that end between chunks, with no IEND chunk"


def _png_header(path: str) -> tuple[tuple[int, ...], str]:
    from PIL import Image, UnidentifiedImageError

    _empty(path, "PNG section")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise UserError(f"{path}: expected a PNG section, found a {im.format} image")
            short = _png_end(path)
            if short is not None:
                raise UserError(f"{path}: truncated: expected a PNG that ends with its IEND chunk, found {short}")
            if im.mode in PIL_DTYPES:
                return (im.size[1], im.size[0]), PIL_DTYPES[im.mode]
        plane = _read_plane(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: expected a PNG section, found a file PIL cannot read ({e})") from None
    return plane.shape, plane.dtype.name


def _header(path: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of one section from its file header, without decoding the image; a file that cannot
    be a whole section is refused in one line naming it (UserError)."""
    if path.lower().endswith(".png"):
        return _png_header(path)
    return _tiff_header(path, "TIFF section")  # the whole first series: a multi-page file is no 2-d section


def check_file(path: str, what: str = "TIFF section") -> None:
    """Refuse (UserError, one line naming the file) a section or stack file that cannot be read whole."""
    if path.lower().endswith(".png"):
        _png_header(path)
    else:
        _tiff_header(path, what)


def _unreadable(path: str, error: Exception, what: str) -> UserError:
    """The failure to decode `path` when a block reads it, in one line naming the file: what its header says is
    wrong where it now says so (the file changed since the stack was opened), else the decoder's words."""
    try:
        check_file(path, what if what == "TIFF stack" else "TIFF section")  # (a .png is checked as one)
    except UserError as e:
        return e
    except Exception:  # noqa: BLE001 (the decoder's own words below say enough)
        pass
    return UserError(f"{path}: expected a readable {what}, found image data that cannot be decoded "
                     f"({type(error).__name__}: {error})")


@functools.lru_cache(maxsize=8)
def _headers(files: tuple[str, ...], stats: tuple[tuple[int, int], ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """Every section's header; cached per process while no file changes (`stats`: mtime and size of each)."""
    return tuple(_header(p) for p in files)


def _stat(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def _section_files(address: str) -> tuple[list[str], list[str]]:
    """(the TIFF/PNG sections in natural order, the directory's other entries but hidden ones, sorted: not read)."""
    entries = os.listdir(address)
    files = [os.path.join(address, n) for n in entries if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
             and os.path.isfile(os.path.join(address, n))]
    if not files:
        raise UserError(f"{address}: expected TIFF or PNG sections in this directory, found none")
    others = sorted(set(n for n in entries if not n.startswith(".")) - {os.path.basename(p) for p in files})
    return sorted(files, key=_natural_key), others


class ImageStackVolume(Volume):
    """A directory of 2-d TIFF/PNG sections (natural sort order = z) or one multi-page TIFF."""

    def __init__(self, address: str, mode: str = "r", voxel_size=None):
        super().__init__(address)
        self._files: list[str] | None = None
        self._multipage: str | None = None
        self.padded: list[Padded] = []
        self.others: list[str] = []  # names in the directory not read as sections (notes, thumbnails, folders)
        self._offsets: dict[int, tuple[int, int]] = {}
        if os.path.isdir(address):
            self._files, self.others = _section_files(address)
            headers = _headers(tuple(self._files), tuple(_stat(p) for p in self._files))
            dtypes = [dtype for _, dtype in headers]
            usual = max(dtypes, key=dtypes.count)  # the odd file out is named, not the first section
            for path, (shape, dtype) in zip(self._files, headers):
                if len(shape) != 2:
                    raise UserError(f"{path}: expected a 2-d grayscale section, found shape {shape}")
                if dtype != usual:
                    example = os.path.basename(self._files[dtypes.index(usual)])
                    raise UserError(f"{path}: dtype {dtype}, expected {usual} as {dtypes.count(usual)} of the "
                                    f"{len(dtypes)} sections (e.g. {example}): a stack has one dtype")
            ny = max(shape[0] for shape, _ in headers)
            nx = max(shape[1] for shape, _ in headers)
            for z, (path, (shape, _)) in enumerate(zip(self._files, headers)):
                if shape != (ny, nx):
                    offset = ((ny - shape[0]) // 2, (nx - shape[1]) // 2)
                    self._offsets[z] = offset
                    self.padded.append(Padded(z, path, (int(shape[0]), int(shape[1])), offset))
            self._sections = headers
            shape3: tuple[int, ...] = (len(self._files), ny, nx)
            dtype3 = np.dtype(headers[0][1])
        elif os.path.isfile(address):
            shape3, dtype_name = _tiff_header(address, "TIFF stack")
            dtype3 = np.dtype(dtype_name)
            self._multipage = address
            if len(shape3) not in (2, 3):
                raise UserError(f"{address}: expected a grayscale TIFF stack (z, y, x), found shape {shape3}")
        else:
            raise UserError(f"{address}: no such file or directory")
        self._meta = array_meta(address, shape3, dtype3, voxel_size, None)

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def section_footprints(self) -> dict[int, tuple[int, int, int, int]]:
        return {p.z: (*p.offset, *p.shape) for p in self.padded}

    def source_files(self, box: Box) -> tuple[str, list[str]]:
        if self._files is None:
            return self._in_files([self._multipage or self.address])
        return self._in_files(self._files[max(box.offset[0], 0):box.end[0]])

    def _plane(self, z: int) -> np.ndarray:
        if self._files is None:
            import tifffile

            assert self._multipage is not None
            try:
                return tifffile.imread(self._multipage, key=z)
            except MemoryError:
                raise
            except Exception as e:
                raise _unreadable(self._multipage, e, "TIFF stack") from None
        try:
            plane = _read_plane(self._files[z])
        except MemoryError:
            raise
        except Exception as e:
            raise _unreadable(self._files[z], e, "section") from None
        expected = self._sections[z][0]
        if plane.shape != expected:
            raise UserError(f"{self._files[z]}: section shape {plane.shape}, expected {expected} (the file changed "
                            "after the stack was opened)")
        if z not in self._offsets:
            return plane
        y, x = self._offsets[z]
        out = np.zeros(self._meta.shape[1:], plane.dtype)
        out[y:y + plane.shape[0], x:x + plane.shape[1]] = plane
        return out

    def _read(self, box: Box) -> np.ndarray:
        _, ys, xs = box.to_slices()
        out = np.empty(box.shape, self._meta.dtype)
        for i, z in enumerate(range(box.offset[0], box.end[0])):
            out[i] = self._plane(z)[ys, xs]
        return out

"""The one parser of volume addresses (design section 4).

`path.zarr/dataset`, `precomputed://file:///...` or `precomputed://gs://...`, and, read-only,
`path.npz#key`, `path.h5#key` and TIFF/PNG stacks (a file, a directory or a glob). Any of them may
end in a section range `[z0:z1]` (Python slice bounds, either may be left out), which selects those
sections as a volume of its own. A bare name (no `/`, `://` or `#`) is a dataset of the run's
output directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from connectome.core.errors import UserError

PRECOMPUTED = "precomputed://"
# where a precomputed volume may live (cloud-volume's protocols): anything else would be taken as a local path
PRECOMPUTED_SCHEMES = ("file", "gs", "s3", "http", "https")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_SECTIONS = re.compile(r"^(?P<base>.+)\[(?P<z0>-?\d*):(?P<z1>-?\d*)\]$")


@dataclass(frozen=True)
class Address:
    """A parsed address: `base` (without the section range), its storage `kind`, and `sections`."""

    base: str
    kind: str  # zarr, precomputed, npz, hdf5, images
    sections: slice | None = None

    @property
    def path(self) -> str:
        """The local file or directory (the part before `#`); the URL for precomputed."""
        return self.base.partition("#")[0]

    @property
    def key(self) -> str:
        return self.base.partition("#")[2]

    @property
    def remote(self) -> bool:
        return "://" in self.base

    def __str__(self) -> str:
        if self.sections is None:
            return self.base
        z0 = "" if self.sections.start is None else self.sections.start
        z1 = "" if self.sections.stop is None else self.sections.stop
        return f"{self.base}[{z0}:{z1}]"


def split_sections(text: str) -> tuple[str, slice | None]:
    """`ADDR[z0:z1]` -> (ADDR, slice(z0, z1)); a plain ADDR -> (ADDR, None)."""
    m = _SECTIONS.match(text)
    if not m:
        return text, None
    z0 = int(m["z0"]) if m["z0"] else None
    z1 = int(m["z1"]) if m["z1"] else None
    return m["base"], slice(z0, z1)


def _kind(base: str) -> str:
    if base.startswith(PRECOMPUTED):
        return "precomputed"
    path, hash_, _ = base.partition("#")
    lower = path.lower()
    if hash_ and lower.endswith(".npz"):
        return "npz"
    if hash_ and lower.endswith((".h5", ".hdf5")):
        return "hdf5"
    if lower.endswith(IMAGE_SUFFIXES):
        return "images"
    if os.path.isdir(base) and not os.path.exists(os.path.join(base, "zarr.json")) and _holds_images(base):
        return "images"
    return "zarr"


def _holds_images(directory: str) -> bool:
    """A folder of TIFF/PNG sections (a folder of none, e.g. a zarr being created, is not a stack)."""
    with os.scandir(directory) as entries:
        return any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries)


def parse_address(text: str) -> Address:
    if not text:
        raise UserError("volume address: expected a path or URL, found an empty string")
    base, sections = split_sections(text)
    suffix = text[text.rindex("["):] if sections is None and text.endswith("]") and "[" in text else ""
    if suffix and not os.path.exists(text) and (":" in suffix or "#" not in text):  # a key may hold "[1]" (HDF5)
        raise UserError(f"{text}: section range {suffix}: expected [z0:z1] (whole numbers, either may be left out)")
    kind = _kind(base)
    if kind == "precomputed":
        _check_scheme(text, base)
    return Address(base, kind, sections)


def _check_scheme(text: str, base: str) -> None:
    """Refuse a precomputed address whose storage is not `SCHEME://...` of a supported scheme (cloud-volume
    reads `precomputed://ftp://x` or `precomputed://x/y` as a folder under the working directory)."""
    url = base[len(PRECOMPUTED):]
    scheme, sep, rest = url.partition("://")
    known = PRECOMPUTED_SCHEMES
    if sep and scheme not in known:  # cloud-volume's others (middleauth+https, mem, ...) and a lab's own aliases
        from cloudfiles.paths import ALLOWED_PROTOCOLS

        known = (*known, *(p for p in ALLOWED_PROTOCOLS if p not in known))
    if sep and scheme in known and rest:
        return
    supported = ", ".join(f"{s}://" for s in known)
    if sep and scheme in known:
        found = f"no path after {scheme}://"
    elif sep and scheme:
        found = f"scheme {scheme}:// after precomputed://"
    else:
        found = f"{url!r} after precomputed://" if url else "nothing after precomputed://"
    raise UserError(f"{text}: expected precomputed://SCHEME://PATH with SCHEME one of {supported} "
                    f"(e.g. precomputed://file:///abs/path), found {found}")


def location(path: str) -> str:
    """Where a path (an address's part before `#` and the section range) is stored: a local path with its links
    resolved (`precomputed://file:///x` -> `/x`), or a remote URL as it is."""
    path = path.removeprefix(PRECOMPUTED).removeprefix("file://")
    return path if "://" in path else os.path.realpath(path)


def lies_within(address: str, directory: str) -> bool:
    """Whether the volume at `address` is stored inside `directory` (both local or both the same remote scheme)."""
    inner, outer = location(parse_address(address).path), location(directory).rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def is_dataset_name(text: str) -> bool:
    """A bare name (a dataset of the run's output directory) rather than an address."""
    return not any(mark in text for mark in ("/", "://", "#"))


def rebased(text: str, base_dir: str) -> str:
    """A local address made absolute against `base_dir` (remote addresses unchanged), range kept."""
    if "://" in text or os.path.isabs(text):
        return text
    path, sep, key = text.partition("#")
    if not sep:
        path, sections = split_sections(text)
        key = "" if sections is None else str(Address("", "", sections))
    return os.path.normpath(os.path.join(base_dir, path)) + sep + key


def absolute(text: str) -> str:
    """A local address made absolute against the working directory (key and range kept)."""
    return rebased(text, os.getcwd())

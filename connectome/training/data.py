"""Training and validation volumes: addresses with an optional z range, loaded whole into memory."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import fastremap
import numpy as np

from connectome.core.address import split_sections
from connectome.core.errors import UserError
from connectome.metrics.contingency import wrapped_ignore_id


def parse_address(text: str) -> tuple[str, slice]:
    """`ADDR[z0:z1]` -> (ADDR, slice(z0, z1)); a plain ADDR takes all sections."""
    address, sections = split_sections(text)
    return address, sections or slice(None)


def load_array(text: str) -> np.ndarray:
    """The whole (z-ranged) volume at address `text`."""
    from connectome.io import open_volume

    vol = open_volume(text)  # a section range as every command reads one: a bound beyond the volume is refused
    if vol.meta.channels is not None:
        raise UserError(f"{parse_address(text)[0]}: expected a single-channel volume, found {vol.meta.channels} "
                        "channels")
    return vol.read(vol.box)


def z_range(text: str, depth: int) -> tuple[int, int]:
    """The [start, stop) sections that `text` selects from a volume `depth` sections deep."""
    start, stop, _ = parse_address(text)[1].indices(depth)
    return start, stop


@dataclass
class Pair:
    """Raw (uint8) and labels (uint32, 0 = boundary) of one training or validation volume."""

    raw_address: str
    labels_address: str
    raw: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return int(self.raw.size)


def load_pair(raw_address: str, labels_address: str) -> Pair:
    raw = load_array(raw_address)
    if raw.dtype != np.uint8:
        raise UserError(f"{raw_address}: expected uint8 raw, found {raw.dtype}; `connectome ingest SRC DST "
                        "--voxel-size Z Y X --dtype uint8` converts it (as `segment` reads it)")
    labels = load_array(labels_address)
    if labels.shape != raw.shape:
        raise UserError(f"{labels_address}: labels shape {labels.shape} differs from raw shape {raw.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{labels_address}: expected integer object ids (0 = boundary), found {labels.dtype}")
    values = fastremap.unique(labels)
    if values.size and values[0] < 0:  # (sorted) an "ignore" label such as -1 would be learned as an object
        where = tuple(int(i) for i in np.argwhere(labels == values[0])[0])
        raise UserError(f"{labels_address}: negative object id {int(values[0])} at voxel {where} (z, y, x); object "
                        "ids are >= 1 and 0 is boundary or unlabelled: map an 'ignore' label such as -1 to 0 first")
    if (wrapped := wrapped_ignore_id(values)) is not None:
        where = tuple(int(i) for i in np.argwhere(labels == wrapped)[0])
        raise UserError(f"{labels_address}: object id {wrapped} (the largest {labels.dtype}: -1 written unsigned, an "
                        f"'ignore' label?) at voxel {where} (z, y, x); it would be learned as one object: map it to 0 "
                        "first")
    if not values.size or values[-1] == 0:
        raise UserError(f"{labels_address}: every voxel is 0 (boundary or unlabelled); expected object ids >= 1 "
                        "(labels of another key or section range?)")
    if len(values) <= 2:
        raise UserError(
            f"{labels_address}: only {len(values)} distinct values; expected object ids, not a mask "
            "(for 2-d masks use per-section cell ids, e.g. isbi2012 derived_train_cells2d)"
        )
    # consecutive small ids: exact through the float arithmetic of map_coordinates
    labels, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    return Pair(raw_address, labels_address, np.ascontiguousarray(raw), labels.astype(np.uint32, copy=False))


def in_section_order(pair: Pair, mode: str, voxel_size, what: str) -> tuple[Pair, list[int] | None]:
    """`pair` with its sections, and its labels', in the order recovered from its images where `mode` says
    (`connectome.alignment.section_order`; auto: serial sections only), the line that says so printed on stderr
    (`what`: what the caller does with it); the order (stored index of each section), or None where kept."""
    from connectome.alignment.reordering import say_order
    from connectome.alignment.section_order import section_order, serial_sections

    if mode == "keep" or (mode == "auto" and not serial_sections(voxel_size)):
        return pair, None
    order = section_order(pair.raw, mode)
    if not say_order(pair.raw_address, order, what):
        return pair, None
    sections = list(order.order)
    return Pair(pair.raw_address, pair.labels_address, np.ascontiguousarray(pair.raw[sections]),
                np.ascontiguousarray(pair.labels[sections])), sections


def training_voxel_size(given, raws: Sequence[str], fallback=None) -> tuple[float, float, float]:
    """The voxel size a model is trained at: `given` (--voxel-size), else the training volumes' own, else
    `fallback` (the --init model's); refused in one line where none is known (an npz, HDF5 or TIFF source without
    --voxel-size), so no model records a made-up size, and where a training volume carries another one than
    `given` or than the other volumes beyond `VOXEL_TOLERANCE` per axis (said in one warning line within it: the
    shipped `sstem-2d` trained on ISBI 50 x 4 x 4 and VNC 50 x 4.6 x 4.6 nm as 50 x 4 x 4)."""
    from connectome.io import open_volume, same_voxel_size
    from connectome.models.voxel_size import VOXEL_TOLERANCE, within_tolerance

    carried = []
    for raw in raws:
        meta = open_volume(parse_address(raw)[0]).meta
        if meta.voxel_size_known:
            carried.append((raw, tuple(float(v) for v in meta.voxel_size)))
    chosen = tuple(float(v) for v in given) if given else (carried[0][1] if carried else None)
    for raw, size in carried:
        if chosen is None or same_voxel_size(size, chosen):
            continue
        source = "--voxel-size" if given else f"{carried[0][0]}'s"
        if not within_tolerance(size, chosen):
            raise UserError(f"{raw} has voxel size {list(size)} nm, but {source} is {list(chosen)}: expected "
                            f"training volumes within {VOXEL_TOLERANCE}x of the model's voxel size per axis")
        print(f"connectome: warning: {raw} has voxel size {list(size)} nm; the model records {source} "
              f"{list(chosen)}", file=sys.stderr)
    if chosen is not None:
        return chosen  # type: ignore[return-value]
    if fallback:
        return tuple(float(v) for v in fallback)  # type: ignore[return-value]
    raise UserError(f"{raws[0]} carries no voxel size; give --voxel-size Z Y X")


def overlapping_sections(train: list[str], val: list[str]) -> list[str]:
    """Pairs of addresses naming the same file and key whose z ranges overlap (training on validation)."""
    from connectome.core.address import location
    from connectome.core.address import parse_address as parse

    def volume(text: str) -> tuple[str, str]:  # the same file however it is spelt (./x, /abs/x, x/)
        address = parse(text)
        return location(address.path), address.key

    problems = []
    for t in train:
        ta, _ = parse_address(t)
        for v in val:
            va, _ = parse_address(v)
            if volume(t) != volume(v):
                continue
            from connectome.io import open_volume

            depth = open_volume(ta).shape[0]
            t0, t1 = z_range(t, depth)
            v0, v1 = z_range(v, depth)
            if t0 < v1 and v0 < t1:
                problems.append(f"{t} overlaps {v}")
    return problems


def relabel_per_section(labels: np.ndarray) -> np.ndarray:
    """Ids unique across sections, for 2-d labels whose ids repeat from section to section."""
    labels = labels.astype(np.uint64)
    z = np.arange(labels.shape[0], dtype=np.uint64)[:, None, None]
    out = np.where(labels > 0, labels + (z << np.uint64(32)), np.uint64(0))
    out, _ = fastremap.renumber(out, preserve_zero=True, in_place=True)
    return out

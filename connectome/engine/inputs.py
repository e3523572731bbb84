"""Checks of a run's input volume that need no cluster and no stage: its voxel size against the one
given, and what of it reads as zeros: chunk files missing from a zarr input, the padding of the smaller
sections of a TIFF/PNG stack."""

from __future__ import annotations

import os
import sys

import numpy as np

from connectome.core.errors import UserError
from connectome.io import VolumeMeta, open_volume, same_voxel_size


def input_voxel_size(address: str, meta: VolumeMeta, wanted) -> tuple[float, float, float]:
    """The input's voxel size, checked against the one the user gave."""
    if wanted is not None:
        wanted = tuple(float(v) for v in wanted)
        if meta.voxel_size_known and not same_voxel_size(meta.voxel_size, wanted):
            raise UserError(
                f"voxel_size: {address} has voxel size {list(meta.voxel_size)} nm, "
                f"but {list(wanted)} was given"
            )
        return wanted
    if not meta.voxel_size_known and meta.suggested_voxel_size is not None:
        print(f"connectome: note: {address}: voxel size {list(meta.suggested_voxel_size)} nm (z y x) from its "
              "OME-Zarr metadata; give --voxel-size for another", file=sys.stderr)
        return meta.suggested_voxel_size
    if not meta.voxel_size_known:
        raise UserError(f"voxel_size: {address} carries no voxel size; give it (--voxel-size Z Y X in nm, or "
                        "voxel_size: [z, y, x] in a run config)")
    return meta.voxel_size


QUICK_INPUT_CHECK = 1_000_000  # chunks: above this the input is listed only with --strict-input


def note_padding(address: str, stream=None):
    """One line where `address` is an image stack with sections smaller than its largest (read centred,
    padded with 0), one where its directory holds other entries (not read); the volume under any section range."""
    from connectome.io.image_stack import ImageStackVolume
    from connectome.io.sections import SectionRange

    volume = open_volume(address)
    while isinstance(volume, SectionRange):
        volume = volume.inner
    if isinstance(volume, ImageStackVolume) and volume.padded:
        smaller = volume.padded[0]
        print(f"connectome: note: {address}: {len(volume.padded)} of {volume.shape[0]} sections are smaller than "
              f"the largest ({volume.shape[1]} x {volume.shape[2]} px) and are read centred on it, padded with 0 "
              f"(first: {os.path.basename(smaller.file)}, {smaller.shape[0]} x {smaller.shape[1]} px)",
              file=stream or sys.stderr)
    if isinstance(volume, ImageStackVolume) and volume.others:
        more = len(volume.others) - 5
        shown = ", ".join(volume.others[:5]) + (f" and {more} more" if more > 0 else "")
        print(f"connectome: note: {address}: {volume.shape[0]} TIFF/PNG sections read; not read as sections: {shown}",
              file=stream or sys.stderr)
    return volume


def check_input_chunks(address: str, strict: bool = False, stream=None) -> int:
    """Report chunk files missing from a zarr or precomputed input (they read as zeros): one line on `stream`
    (stderr), or a refusal with `strict`; a local precomputed layer with none of its chunk files is refused (its
    info names a scale folder or chunk grid that is not the one on disk). Returns how many are missing (0 when not
    checked).
    An image stack with sections of several sizes gets one line saying how they are padded."""
    from connectome.io.precomputed import PrecomputedVolume
    from connectome.io.zarr_store import ZarrVolume

    volume = note_padding(address, stream)
    if not isinstance(volume, (ZarrVolume, PrecomputedVolume)):
        return 0
    chunks = volume.meta.chunk_shape
    if not strict and np.prod([-(-s // c) for s, c in zip(volume.meta.shape, chunks)]) > QUICK_INPUT_CHECK:
        return 0
    found = volume.missing_chunks()
    if found is None:  # not known here (a remote or sharded precomputed layer)
        return 0
    missing, expected, first = found
    if not missing:
        return 0
    if missing == expected and isinstance(volume, PrecomputedVolume):  # (its writers store every chunk, zeros too)
        raise UserError(volume.nothing_stored(first[0]))
    text = (f"{address}: {missing} of {expected} input chunk files are missing and read as zeros "
            f"(first: {', '.join(first)})")
    if strict:
        raise UserError(f"{text}; --strict-input refuses an input with missing chunks")
    print(f"connectome: warning: {text}; pass --strict-input to refuse such an input", file=stream or sys.stderr)
    return missing

"""Convert any supported source to zarr or precomputed, block by block.

--dtype converts values; a dtype that cannot hold every source value (uint16 or float32 to uint8)
never wraps: the source range [LOW, HIGH] (--range, else the 0.1 and 99.9 percentiles of a strided
sample of the whole source) is mapped linearly onto the target's full range and clipped outside,
the same map in every block. A dtype that holds every source value copies values unchanged.

A zarr source whose chunk shape, dtype and codecs are what the destination would get (the
default zstd level 1, chunks equal to --chunk-shape, no --dtype change) is copied chunk file by
chunk file, as stored: nothing is decoded or encoded.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import TYPE_CHECKING

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings
from connectome.core.address import absolute, parse_address
from connectome.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from connectome.image.rescale import Mapping


def add_arguments(parser) -> None:
    parser.add_argument("src",
                        help="source address: zarr, precomputed://..., FILE.npz#KEY, FILE.h5#KEY, TIFF/PNG stack")
    parser.add_argument("dst", help="destination: a zarr path (OME-Zarr) or precomputed://...")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, metavar=("Z", "Y", "X"),
                        help="nm; required for sources that carry none")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=None, metavar=("Z", "Y", "X"),
                        help="write box per block, a multiple of the chunk shape (default: 1 x 2 x 2 chunks)")
    parser.add_argument("--dtype", default=None,
                        help="convert to this dtype (default: keep); to a narrower one, values are rescaled")
    parser.add_argument("--range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"), dest="value_range",
                        help="source values mapped to the bottom and top of a narrower --dtype "
                             "(default: the 0.1 and 99.9 percentiles of a sample of the source)")
    add_run_options(parser)


def counted(n: int, noun: str) -> str:
    """`n` and `noun`, plural unless `n` is 1: "1 block", "8 blocks", "1 chunk file"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def work_dir_for(dst: str) -> str:
    """Where the done-markers of an ingest live: inside a local destination, else beside the cwd."""
    from connectome.io.precomputed import local_path

    if parse_address(dst).kind == "zarr":
        return dst
    local = local_path(dst)
    if local is not None:
        return local
    return os.path.join(".connectome-ingest", hashlib.sha256(dst.encode()).hexdigest()[:12])


def target_dtype(name: str | None, src_dtype) -> np.dtype:
    """The --dtype asked for (the source's when none), refused when numpy does not know it."""
    import numpy as np

    if name is None:
        return np.dtype(src_dtype)
    try:
        return np.dtype(name)
    except TypeError:
        raise UserError(f"--dtype: unknown dtype {name!r}; expected e.g. uint8, uint16, float32") from None


def value_mapping(src: str, dtype: str | None, value_range) -> tuple[np.dtype, np.dtype, Mapping | None]:
    """(source dtype, target dtype, the rescale map or None when values are copied unchanged)."""
    from connectome.image.rescale import Mapping, check_range, needs_rescale, percentile_mapping
    from connectome.io import open_volume

    vol = open_volume(src)
    dst = target_dtype(dtype, vol.dtype)
    if not needs_rescale(vol.dtype, dst):
        if value_range is not None:
            raise UserError(f"--range: {vol.dtype.name} -> {dst.name} copies values unchanged; "
                            f"--range applies only when converting to a narrower integer --dtype")
        return vol.dtype, dst, None
    if value_range is not None:
        low, high = check_range(value_range[0], value_range[1], "--range")
        return vol.dtype, dst, Mapping(low, high, "--range")
    return vol.dtype, dst, percentile_mapping(vol)


def copy_as_stored(src: str, dst: str, chunk, args) -> dict | None:
    """Copy a zarr source's chunk files unchanged when the destination would store them alike;
    None when it would not (then the copy stage decodes and encodes them)."""
    import time

    from connectome.engine.inputs import check_input_chunks, input_voxel_size
    from connectome.engine.lock import output_lock
    from connectome.io import address_kind, create_volume, open_volume
    from connectome.io.zarr_store import ZarrVolume, copy_stored_chunks, same_encoding

    if address_kind(dst) != "zarr" or parse_address(src).kind != "zarr" or parse_address(src).sections is not None:
        return None
    source = open_volume(src)
    meta = source.meta
    if not isinstance(source, ZarrVolume) or tuple(min(c, s) for c, s in zip(chunk, meta.shape)) != meta.chunk_shape:
        return None
    voxel_size = input_voxel_size(src, meta, args.voxel_size)
    check_input_chunks(src, args.strict_input)
    start = time.perf_counter()
    with output_lock(work_dir_for(dst)):
        target = create_volume(dst, meta.shape, meta.dtype, meta.chunk_shape, voxel_size, meta.offset,
                               meta.channels, overwrite=args.overwrite)
        if not isinstance(target, ZarrVolume) or not same_encoding(source, target):
            return None
        files, size = copy_stored_chunks(source, target)
        carry_footprints(source, dst)
    return {"volume": args.dst, "shape": list(meta.shape), "dtype": meta.dtype.name, "voxel_size": list(voxel_size),
            "source_dtype": meta.dtype.name, "rescale": None, "copied_as_stored": True, "files": files,
            "bytes": size, "seconds": round(time.perf_counter() - start, 3)}


def carry_footprints(source, dst: str) -> None:
    """Record in a zarr destination which part of each section holds image data, where the source says (the
    smaller sections of a TIFF stack): `align` then flags the padding as outside the section."""
    from connectome.io import open_volume
    from connectome.io.zarr_store import ZarrVolume

    footprints = source.section_footprints()
    if footprints:
        target = open_volume(dst, "r+")
        if isinstance(target, ZarrVolume):
            target.record_footprints(footprints)


def run(args) -> int:
    from connectome.io import address_kind

    if address_kind(args.dst) not in ("zarr", "precomputed"):
        raise UserError(f"{args.dst}: expected a zarr path or precomputed:// address as destination")
    dst = absolute(args.dst)
    src_dtype, dst_dtype, mapping = value_mapping(absolute(args.src), args.dtype, args.value_range)
    params = {"dtype": args.dtype and dst_dtype.name}
    if mapping is not None:
        params["rescale"] = [mapping.low, mapping.high]
    chunk = tuple(args.chunk_shape)
    if mapping is None and src_dtype == dst_dtype:
        stored = copy_as_stored(absolute(args.src), dst, chunk, args)
        if stored is not None:
            files = counted(stored["files"], "chunk file")
            print_result(args, stored, f"{args.dst}: {stored['shape']} {stored['dtype']} at {stored['voxel_size']} nm "
                                       f"({files} copied as stored, {stored['bytes']:,} bytes, "
                                       f"{stored['seconds']:.1f} s)")
            say_if_axes_look_reversed(stored["voxel_size"])
            return 0
    from connectome.cluster.client import open_client  # (a copy as stored needs none of these)
    from connectome.cluster.worker_logs import worker_logs
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import check_input_chunks, check_plan_resumable, execute, plan_run
    from connectome.export.carry import carry_morphology
    from connectome.image.rescale import describe
    from connectome.io import open_volume

    block_shape = tuple(args.block_shape) if args.block_shape else (chunk[0], chunk[1] * 2, chunk[2] * 2)
    config = RunConfig(
        input=absolute(args.src), output=os.path.dirname(dst) if address_kind(dst) == "zarr" else dst,
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        blocks=BlocksConfig(shape=block_shape, chunk_shape=chunk),
        stages=[StageConfig(stage="copy", params=params, outputs={"copy": dst})],
    )
    plan = plan_run(config, work_dir=work_dir_for(dst), record_config=False)
    check_plan_resumable(plan, args.overwrite)
    check_input_chunks(config.input, args.strict_input)
    _, meta = plan.stages[0].creates["copy"]
    with worker_logs(plan.work_dir), open_client(cluster_settings(args), quiet=args.json, lazy=True) as client:
        report, = execute(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    carry_footprints(open_volume(config.input), dst)
    carried = carry_morphology(config.input, dst) if address_kind(dst) == "precomputed" else []
    shape, dtype, voxel_size = list(meta.shape), meta.dtype.name, list(meta.voxel_size)
    summary = {"volume": args.dst, "shape": shape, "dtype": dtype, "voxel_size": voxel_size,
               "source_dtype": src_dtype.name, "rescale": mapping and mapping.to_json(), **report.to_json(),
               "carried": carried}
    print_result(args, summary, f"{args.dst}: {shape} {dtype} at {voxel_size} nm "
                                f"({counted(report.ran, 'block')} written, {report.skipped} already done); "
                                f"{describe(mapping, src_dtype, dst_dtype)}"
                                + (f"; with its {', '.join(carried)} (named in its info)" if carried else ""))
    say_if_axes_look_reversed(voxel_size)
    return 0


def say_if_axes_look_reversed(voxel_size) -> None:
    """One note on stderr, once the volume is written, where the voxel size looks given as X Y Z: x at least 4x
    both y and z, so pixels 4x longer than wide (no EM images so; a serial-section stack given as X Y Z)."""
    z, y, x = (float(v) for v in voxel_size)
    if x >= 4 * max(y, z):
        print(f"connectome: note: voxel size {_nm(z)} {_nm(y)} {_nm(x)} nm is (z, y, x): pixels {_nm(y)} x {_nm(x)} "
              f"nm, sections {_nm(z)} nm apart; if it was given as X Y Z, ingest again with --voxel-size "
              f"{_nm(x)} {_nm(y)} {_nm(z)} --overwrite", file=sys.stderr)


def _nm(v: float) -> str:
    return f"{v:g}"

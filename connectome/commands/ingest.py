"""Convert any supported source to zarr or precomputed, block by block."""

from __future__ import annotations

import hashlib
import os

from connectome.cli import print_result
from connectome.cluster import available_resources, open_client, task_resources
from connectome.commands.run_options import add_run_options, cluster_settings
from connectome.errors import UserError, unwritable
from connectome.geometry import BlockGrid, Box
from connectome.pipeline import fit_blocks, input_voxel_size
from connectome.runner import check_resumable, run_stage, starts_afresh
from connectome.stages.copy import CopyParams, CopyStage
from connectome.volumes import address_kind, create_volume, open_volume
from connectome.volumes.precomputed import cloudpath


def add_arguments(parser) -> None:
    parser.add_argument("src", help="source address: zarr, precomputed://..., FILE.npz#KEY, FILE.h5#KEY, TIFF/PNG stack")
    parser.add_argument("dst", help="destination: a zarr path (OME-Zarr) or precomputed://...")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="nm; required for sources that carry none")
    parser.add_argument("--chunk-shape", nargs=3, type=int, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--block-shape", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                        help="write box per block, a multiple of the chunk shape (default: 1 x 2 x 2 chunks)")
    parser.add_argument("--dtype", default=None, help="convert to this dtype (default: keep)")
    add_run_options(parser)


def work_dir_for(dst: str) -> str:
    """Where the done-markers of an ingest live: inside a local destination, else beside the cwd."""
    if address_kind(dst) == "zarr":
        return dst
    path = cloudpath(dst)
    if path.startswith("file://"):
        return path[len("file://"):]
    return os.path.join(".connectome-ingest", hashlib.sha256(dst.encode()).hexdigest()[:12])


def run(args) -> int:
    src = open_volume(args.src, voxel_size=args.voxel_size)
    if address_kind(args.dst) not in ("zarr", "precomputed"):
        raise UserError(f"{args.dst}: expected a zarr path or precomputed:// address as destination")
    voxel_size = input_voxel_size(args.src, src.meta, args.voxel_size)
    chunk = tuple(args.chunk_shape)
    block_shape = tuple(args.block_shape) if args.block_shape else (chunk[0], chunk[1] * 2, chunk[2] * 2)
    blocks, chunks = fit_blocks(block_shape, chunk, src.shape)
    stage = CopyStage(CopyParams(dtype=args.dtype), {"raw": args.src}, {"copy": args.dst})
    spec = stage.output_specs({"raw": src.meta})["copy"]
    grid = BlockGrid.for_chunks(Box.from_shape(src.shape), blocks, chunks)
    work_dir = work_dir_for(args.dst)
    check_resumable(stage, grid, work_dir, args.overwrite)
    try:
        create_volume(args.dst, src.shape, spec.dtype, chunks, voxel_size, src.meta.offset, spec.channels,
                      overwrite=args.overwrite and starts_afresh(stage, grid, work_dir))
    except OSError as e:
        raise unwritable(e, args.dst) from None
    cluster = cluster_settings(args)
    with open_client(cluster, quiet=args.json) as client:
        report = run_stage(stage, grid, client, work_dir, overwrite=args.overwrite, progress=not args.no_progress,
                           resources=task_resources(stage.resources, available_resources(client)))
    summary = {"volume": args.dst, "shape": list(src.shape), "dtype": spec.dtype, "voxel_size": list(voxel_size),
               **report.to_json()}
    print_result(args, summary, f"{args.dst}: {list(src.shape)} {spec.dtype} at {list(voxel_size)} nm "
                                f"({report.ran} blocks written, {report.skipped} already done)")
    return 0

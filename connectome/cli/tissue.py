"""Label tissue classes (neuropil, soma/nucleus, vessel, myelin, defect, mitochondrion, glia/extracellular).

Writes OUT_DIR/tissue (uint8 class codes, the table in connectome/tissue/classes.py) and
OUT_DIR/tissue_mask (uint8: 1 where the class is excluded from segmentation: by default vessel,
soma/nucleus, myelin and defect). Runs blockwise on the cluster; run it again to resume.
"""

from __future__ import annotations

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early


def add_arguments(parser) -> None:
    parser.add_argument("raw", help="raw volume address, uint8 (zarr, precomputed://..., FILE.npz#KEY, TIFFs, ...)")
    parser.add_argument("out_dir", help="output directory (an OME-Zarr group)")
    parser.add_argument("--model", default="tissue", help="shipped tissue model name or path to a .pt file")
    parser.add_argument("--exclude", nargs="+", default=None, metavar="CLASS",
                        help="classes marked in tissue_mask (default: vessel 'soma/nucleus' myelin defect)")
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=(16, 512, 512), metavar=("Z", "Y", "X"),
                        help="write box of one block; y and x a multiple of the model's divisor (16)")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, default=None, metavar=("Z", "Y", "X"),
                        help="output chunks (default: the block shape)")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"),
                        help="nm; required for sources that carry none")
    parser.add_argument("--allow-voxel-mismatch", action="store_true",
                        help="run the model on data whose in-plane voxel size differs from its own by over 1.5x")
    parser.add_argument("--precision", choices=("float64", "float32"), default="float64",
                        help="float64 (default): blockwise == one block exactly; float32: about 5x faster on a CPU")
    add_run_options(parser)


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    import os
    import time

    from connectome.cluster.client import open_client
    from connectome.core.address import absolute
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import check_input_chunks, check_plan_resumable, execute, plan_run

    params: dict = {"model": args.model, "allow_voxel_mismatch": args.allow_voxel_mismatch,
                    "precision": args.precision}
    if args.exclude is not None:
        params["exclude"] = args.exclude
    cluster = cluster_settings(args)
    config = RunConfig(
        input=absolute(args.raw), output=os.path.abspath(args.out_dir), voxel_size=args.voxel_size,
        blocks=BlocksConfig(shape=tuple(args.block_shape),
                            chunk_shape=tuple(args.chunk_shape) if args.chunk_shape else None),
        cluster=cluster, stages=[StageConfig(stage="tissue", params=params)])
    plan = plan_run(config)
    check_plan_resumable(plan, args.overwrite)
    check_input_chunks(config.input, args.strict_input)
    start = time.perf_counter()
    with open_client(cluster, quiet=args.json) as client:
        reports = execute(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    outputs = plan.stages[-1].stage.output_addresses
    summary = {"tissue": outputs["tissue"], "mask": outputs["tissue_mask"],
               "model": args.model, "seconds": round(time.perf_counter() - start, 3),
               "stages": [r.to_json() for r in reports]}
    print_result(args, summary, f"tissue classes: {summary['tissue']}\nmask: {summary['mask']} "
                                f"({summary['seconds']:.1f} s)")
    return 0

"""Find synapses in a raw volume given its segmentation: clefts, partners (pre -> post), neurite types;
writes OUT_DIR/synapses.csv and (without --no-types) OUT_DIR/segments.csv (resumes)."""

from __future__ import annotations

import sys

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early
from connectome.cli.segment import add_fill_blank_option, add_mask_values_option, say_mask_frame


def add_arguments(parser) -> None:
    parser.add_argument("raw", help="raw volume address (zarr, precomputed://..., FILE.npz#KEY, ...)")
    parser.add_argument("out_dir", help="output directory (an OME-Zarr group)")
    parser.add_argument("--segmentation", required=True, help="segmentation address (the raw volume's shape)")
    parser.add_argument("--model", default=None,
                        help="cleft model name or .pt path (default cleft-synthetic; real EM: cleft-fib, cleft-sstem)")
    parser.add_argument("--classifier", default=None, help="neurite type classifier name or .json path")
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--allow-voxel-mismatch", action="store_true",
                        help="run the cleft model (and the neurite types) on data whose voxel size differs from theirs")
    parser.add_argument("--mask", default=None, metavar="ADDR",
                        help="a uint8 volume of the raw's shape; voxels where it is nonzero hold no synapse cleft "
                             "(e.g. OUT/defects from `connectome align`: its margins and blank sections, "
                             "OUT/tissue_mask from `connectome tissue`)")
    add_mask_values_option(parser)
    parser.add_argument("--no-types", action="store_true",
                        help="leave out the neurite types (segment_features, neurite_types; no segments.csv)")
    add_fill_blank_option(parser)
    add_run_options(parser)


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    import os
    import time

    from connectome.alignment.footprints import check_mask_values
    from connectome.cluster.client import open_client
    from connectome.cluster.worker_logs import worker_logs
    from connectome.core.address import absolute
    from connectome.engine.config import BlocksConfig, RunConfig
    from connectome.engine.plan import check_input_chunks, check_plan_resumable, execute, plan_run
    from connectome.synapses.chain import synapse_outputs, synapse_stages
    from connectome.synapses.stages import DEFAULT_MODEL
    from connectome.synapses.table import read_synapses

    defaulted = args.model is None
    args.model = args.model or DEFAULT_MODEL
    cluster = cluster_settings(args)
    out = os.path.abspath(args.out_dir)
    config = RunConfig(input=absolute(args.raw), output=out, voxel_size=args.voxel_size,
                       blocks=BlocksConfig(shape=tuple(args.block_shape)), cluster=cluster,
                       stages=synapse_stages(args.model, absolute(args.segmentation), args.classifier,
                                             args.allow_voxel_mismatch, types=not args.no_types,
                                             mask=absolute(args.mask) if args.mask else None,
                                             fill_blank=args.fill_blank,
                                             mask_values=check_mask_values(args.mask_values, args.mask)))
    plan = plan_run(config)
    check_plan_resumable(plan, args.overwrite)
    check_input_chunks(config.input, args.strict_input)
    say_mask_frame("synapses", args)
    start = time.perf_counter()
    with worker_logs(plan.work_dir), open_client(cluster, quiet=args.json, lazy=True) as client:
        reports = execute(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    paths = synapse_outputs(out, types=not args.no_types)
    table = read_synapses(paths["synapses"])
    n = len(table["score"])
    summary = {**paths, "segmentation": absolute(args.segmentation), "count": n,
               "autapses": int(table["autapse"].sum()) if "autapse" in table else 0,
               "unassigned": int(((table["pre"] == 0) | (table["post"] == 0)).sum()),
               "seconds": round(time.perf_counter() - start, 2), "stages": [r.to_json() for r in reports]}
    print_result(args, summary, f"synapses: {paths['synapses']} ({n} synapses, {summary['autapses']} autapses, "
                                f"{summary['unassigned']} without both partners)"
                                + (f"\nsegments: {paths['segments']}" if "segments" in paths else ""))
    if defaulted:
        say_default_cleft_model()
    return 0


def say_default_cleft_model(option: str = "--model") -> None:
    """One note on stderr, once the run is done, where no cleft model was given: one trained on synthetic volumes
    only found the synapses (said after the run, so that a refusal stays its one line)."""
    from connectome.synapses.stages import DEFAULT_MODEL

    print(f"connectome: note: no cleft model given: {DEFAULT_MODEL}, trained on synthetic volumes only (real "
          f"EM: {option} cleft-fib for FIB-SEM, cleft-sstem for serial sections)", file=sys.stderr)

"""The whole job: segmentation, synapses, partners, neurite types and the connectivity graph, each
stage resumable; prints the graph summary (--json: segmentation, synapses and graph tables)."""

from __future__ import annotations

from connectome.cli.arg_types import fraction, positive_float, positive_int
from connectome.cli.held_notes import held_until_accepted
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early
from connectome.cli.segment import (
    add_blank_options,
    add_mask_values_option,
    add_min_segment_option,
    add_section_order_option,
    say_default_model,
    say_mask_frame,
)
from connectome.cli.synapses import say_default_cleft_model


def add_arguments(parser) -> None:
    parser.add_argument("raw", help="raw volume address (zarr, precomputed://..., FILE.npz#KEY, ...)")
    parser.add_argument("out_dir", help="output directory (an OME-Zarr group)")
    parser.add_argument("--model", default=None, help="affinity model for the segmentation (default synthetic)")
    parser.add_argument("--cleft-model", default=None,
                        help="cleft model name or .pt path (default cleft-synthetic; real EM: cleft-fib, cleft-sstem)")
    parser.add_argument("--classifier", default=None, help="neurite type classifier name or .json path")
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--threshold", type=fraction, default=None, help="segmentation merge threshold")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--allow-voxel-mismatch", action="store_true",
                        help="run the models on data whose voxel size differs from theirs")
    add_min_segment_option(parser)
    add_section_order_option(parser)
    add_blank_options(parser)
    parser.add_argument("--mask", default=None, metavar="ADDR",
                        help="a uint8 volume of the raw's shape; voxels where it is nonzero are left out of every "
                             "segment, nothing merges across them and no synapse cleft lies there (e.g. OUT/defects "
                             "from `connectome align`, OUT/tissue_mask from `connectome tissue`)")
    add_mask_values_option(parser)
    parser.add_argument("--no-types", action="store_true",
                        help="leave out the neurite types (segment_features, neurite_types; no segments.csv)")
    parser.add_argument("--no-plots", action="store_true", help="skip the graph's PNG plots")
    add_run_options(parser)


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    import time

    from connectome.affinity.segment import plan_segmentation, run_segmentation, segmentation_config
    from connectome.alignment.footprints import SELECTED_MASK
    from connectome.cluster.client import open_client
    from connectome.cluster.worker_logs import worker_logs
    from connectome.core.address import absolute
    from connectome.engine.plan import check_input_chunks, check_outputs
    from connectome.graph.build import graph_outputs
    from connectome.graph.summary import describe
    from connectome.synapses.chain import synapse_outputs, synapse_stages
    from connectome.synapses.stages import DEFAULT_MODEL

    if args.model is None:
        args.model = "synthetic"
        args.default_model = True
    # said after the run where a real affinity model segments and no cleft model was given
    cleft_defaulted = args.cleft_model is None and not getattr(args, "default_model", False)
    args.cleft_model = args.cleft_model or DEFAULT_MODEL
    with held_until_accepted():  # a refusal is its one line: the warnings of the checks are said once they pass
        cluster = cluster_settings(args)
        config = segmentation_config(args.raw, args.out_dir, args.model, args.block_shape, None, args.threshold,
                                     args.voxel_size, cluster, allow_voxel_mismatch=args.allow_voxel_mismatch,
                                     min_segment_voxels=args.min_segment_voxels,
                                     section_order=args.section_order or "auto", mask=args.mask,
                                     blank_band=args.blank_band, fill_blank=args.fill_blank,
                                     mask_values=args.mask_values)
        selected = SELECTED_MASK if args.mask_values else absolute(args.mask) if args.mask else None  # (made above)
        config = config.model_copy(update={"stages": config.stages + synapse_stages(
            args.cleft_model, None, args.classifier, args.allow_voxel_mismatch, types=not args.no_types,
            mask=selected, fill_blank=args.fill_blank)})
        plan = plan_segmentation(config, args.overwrite)
        check_outputs(plan, args.overwrite)
        check_input_chunks(config.input, args.strict_input)
        say_mask_frame("reconstruct", args)
    start = time.perf_counter()
    with worker_logs(plan.work_dir), open_client(cluster, quiet=args.json, lazy=True) as client:
        seg = run_segmentation(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    say_default_model(args)
    if cleft_defaulted:
        say_default_cleft_model("--cleft-model")
    _, paths, _, summary = graph_outputs(config.output, types=not args.no_types, plots=not args.no_plots)
    outputs = synapse_outputs(config.output, types=not args.no_types)
    result = {"segmentation": seg["segmentation"], **outputs, "graph": paths["edges"],
              "graph_nodes": paths["nodes"], "graphml": paths["graphml"],
              **{k: v for k, v in paths.items() if k in ("degrees", "adjacency")},
              "summary": summary, "voxels": seg["voxels"], "seconds": round(time.perf_counter() - start, 2),
              "stages": seg["stages"], **{k: seg[k] for k in ("section_order",) if k in seg}}
    print_result(args, result, "\n".join([
        f"segmentation: {seg['segmentation']}", f"synapses: {result['synapses']}",
        f"segments: {result.get('segments', 'none (--no-types)')}",
        describe(summary), f"edges: {paths['edges']}  GraphML: {paths['graphml']}"]))
    return 0

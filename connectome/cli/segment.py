"""Segment a raw EM volume: affinities, fragments, agglomeration, final segmentation (resumes)."""

from __future__ import annotations

import sys

from connectome.cli.arg_types import (
    band_or_off,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    share,
)
from connectome.cli.held_notes import held_until_accepted
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early
from connectome.core.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("raw", help="raw volume address (zarr, precomputed://..., FILE.npz#KEY, ...)")
    parser.add_argument("out_dir", help="output directory (an OME-Zarr group)")
    parser.add_argument("--method", default="affinities", choices=["affinities", "ffn"])
    parser.add_argument("--model", default=None,
                        help="shipped model name or a .pt path (default: synthetic; with --method ffn: ffn-synthetic)")
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, default=None, metavar=("Z", "Y", "X"),
                        help="output chunks (default: the block shape)")
    parser.add_argument("--threshold", type=fraction, default=None,
                        help="merge threshold on 1 - mean affinity (default: the model's validated value)")
    parser.add_argument("--scoring", choices=["mean", "quantile", "learned"], default=None,
                        help="agglomeration score: 1 - mean affinity, 1 - median affinity (waterz's scores), or "
                             "1 - an edge classifier's p(merge) (learned; default: the model's validated choice)")
    parser.add_argument("--edge-model", default=None, metavar="NAME|FILE.json",
                        help="learned scoring: the edge classifier (default: the model's <model>-edges.json)")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"),
                        help="nm; required for sources that carry none")
    parser.add_argument("--allow-voxel-mismatch", action="store_true",
                        help="run a model on data whose voxel size differs from its own by more than 1.5x")
    parser.add_argument("--tta", type=int, default=None, choices=range(1, 9), metavar="N",
                        help="test-time augmentation: average the affinities predicted on N flipped copies of each "
                             "block (1 = none; 4 = plain, x, y and z flips: N times the prediction time; default: "
                             "the model's validated value)")
    add_min_segment_option(parser)
    add_section_order_option(parser)
    add_blank_options(parser)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=None,
                        help="the network's arithmetic (auto: bfloat16 on a GPU and on a CPU with native bfloat16 - "
                             "AMX or AVX512-BF16 - else float32; default auto)")
    parser.add_argument("--mask", default=None, metavar="ADDR",
                        help="a uint8 volume of the raw's shape; voxels where it is nonzero are left out of every "
                             "segment and nothing merges across them (e.g. OUT/tissue_mask from `connectome tissue`, "
                             "OUT/defects from `connectome align`)")
    add_mask_values_option(parser)
    parser.add_argument("--overlap", nargs=3, type=non_negative_int, default=None, metavar=("Z", "Y", "X"),
                        help="ffn: context each block reads beyond its write box (default: the model's FOV)")
    parser.add_argument("--reverse-seeds", action="store_true", help="ffn: fill from the seeds in reverse order")
    parser.add_argument("--consensus", action="store_true",
                        help="ffn: fill every block twice (seeds in forward and reverse order) and keep voxels "
                             "together only where both runs agree (fewer merges, more splits)")
    parser.add_argument("--consensus-model", metavar="MODEL", default=None,
                        help="ffn: also fill every block with this second FFN model (e.g. one of twice the voxel "
                             "size, run on the downsampled image) and keep voxels together only where it agrees")
    parser.add_argument("--ffn-agglomerate", action="store_true",
                        help="ffn: then merge touching segments where the network, started on each side of their "
                             "contact, fills into the other side from both")
    parser.add_argument("--ffn-agree", type=share, default=None, metavar="A",
                        help="ffn: with --ffn-agglomerate, the share (0-1] of the other segment the fill from each "
                             "side must cover to merge (default: the model's; ffn-fib-10nm 0.95, chosen on a "
                             "medulla validation crop; 0.8 for models that chose none)")
    parser.add_argument("--ffn-scale", nargs=3, type=positive_int, default=None, metavar=("Z", "Y", "X"),
                        help="ffn: run the network on the image downsampled by these whole factors and upsample its "
                             "objects (default: the model's voxel size over the data's, rounded)")
    parser.add_argument("--ffn-weak-seed", choices=["stop", "reject", "continue"], default=None,
                        help="ffn: when an object's seed falls below the move threshold, stop moving (default), stop "
                             "and discard the object, or keep moving (the behaviour before this option)")
    parser.add_argument("--ffn-seed-margin", type=non_negative_int, default=None, metavar="N",
                        help="ffn: a seed with an accepted object's voxel within N voxels does not start (default 1; "
                             "0 = the behaviour before this option)")
    parser.add_argument("--ffn-step-budget", type=non_negative_float, default=None, metavar="F",
                        help="ffn: FOV steps a block may take, as F times the FOV positions that tile it (default 20; "
                             "0 = no limit); once spent no new object starts and the block is reported")
    parser.add_argument("--ffn-moves", choices=["connected", "face"], default=None,
                        help="ffn: move the FOV only through face voxels joined, inside the FOV, to what the object "
                             "reached from its seed (connected, default), or through any face voxel at the move "
                             "threshold (face: the reference's rule, the behaviour before this option)")
    parser.add_argument("--ffn-batch", type=positive_int, default=None,
                        help="ffn: objects filled together in one batch (default 1, the fastest on CPU and GPU)")
    add_run_options(parser)


def add_blank_options(parser) -> None:
    """`--blank-band` and `--fill-blank`, for the commands that run the affinity chain or the FFN."""
    parser.add_argument("--blank-band", type=band_or_off, default=None, metavar="N|off",
                        help="blank regions (image exactly 0 over an 11 x 11 square of a section: padding, an aligned "
                             "section's margins, a blacked-out region) and N voxels of tissue beside them are left "
                             "out of every segment; the networks merge neurons along that band otherwise (default: the "
                             "model's, fib-10nm 4, sstem 12; off: not looked for; --method ffn: 4, masked as --mask)")
    add_fill_blank_option(parser)


def add_mask_values_option(parser) -> None:
    """`--mask-values`, for the commands that take `--mask`."""
    parser.add_argument("--mask-values", type=int, nargs="+", default=None, metavar="V",
                        help="only voxels where --mask holds one of these values are left out (e.g. 2 3 with "
                             "OUT/defects: flagged regions and outside; a flagged section is then read as "
                             "its neighbours' blend, where the model fills, instead of a wall)")


def add_fill_blank_option(parser) -> None:
    """`--fill-blank`, for the commands that run the affinity, FFN or cleft network."""
    parser.add_argument("--fill-blank", type=non_negative_int, default=None, metavar="N",
                        help="a blank voxel with tissue within N sections above and below it is read by the networks "
                             "as the image interpolated between the two, so a missing section is segmented through, "
                             "not left out, the clefts beside it do not fade and the neurite features do not take it "
                             "as black (default: the affinity model's, fib-10nm 2, sstem 0; 2 for the FFN, the clefts "
                             "and the neurite features; 0: read as black, and left out of the segments like other "
                             "blank regions)")


def add_min_segment_option(parser) -> None:
    """`--min-segment-voxels`, for the commands that run the affinity chain."""
    parser.add_argument("--min-segment-voxels", type=int, default=None, metavar="N",
                        help="after the merge, segments under N voxels that fit in the model's max_extent box join "
                             "the neighbour they touch most (0 = none; default: the model's validated value)")


ONLY_FOR = {  # options that one method reads, the other would ignore: refused there
    "ffn": ("overlap", "reverse_seeds", "consensus", "consensus_model", "ffn_agglomerate", "ffn_agree", "ffn_scale",
            "ffn_weak_seed", "ffn_seed_margin", "ffn_step_budget", "ffn_moves", "ffn_batch"),
    "affinities": ("threshold", "scoring", "edge_model", "tta", "min_segment_voxels"),
}


def refuse_options_of_the_other_method(args) -> None:
    """One line naming an option given to the method that would ignore it (`ONLY_FOR`)."""
    for method, names in ONLY_FOR.items():
        if method == args.method:
            continue
        for name in names:
            value = getattr(args, name, None)
            if value is not None and value is not False:
                shown = "" if value is True else " " + " ".join(map(str, value if isinstance(value, list | tuple)
                                                                    else [value]))
                raise UserError(f"--{name.replace('_', '-')}{shown}: for --method {method}, not {args.method}")


def add_section_order_option(parser, effect: str = "segment in the order recovered from the images and write the "
                             "segmentation in the stored order", default: str | None = None) -> None:
    """`--section-order`, for the commands that take serial sections (`effect`: what they do when reordering)."""
    parser.add_argument("--section-order", choices=["auto", "keep", "recover"], default=default,
                        help=f"serial sections stored out of their physical order: {effect} (auto, the default: when "
                             "fewer than half of the stored neighbours are neighbours in that order, checked for a z "
                             "voxel at least twice the in-plane one; beyond 2048 sections each is compared with the 10 "
                             "after it only, the stored order kept and a stack out of order said; recover: always; "
                             "keep: never)")


def say_default_model(args) -> None:
    """One note on stderr, once the run is done, where no --model was given: a model trained on synthetic volumes only
    segmented the data (said after the run, so that a refusal stays its one line)."""
    if getattr(args, "default_model", False):
        print(f"connectome: note: no --model given: {args.model}, trained on synthetic volumes only (real EM: "
              "fib-10nm, sstem; README 'Choosing an affinity model')", file=sys.stderr)


def say_mask_frame(command: str, args) -> None:
    """One warning line on stderr where `--mask` is not known to be in the frame of the raw (`mask_frame_warning`)."""
    from connectome.alignment.frames import mask_frame_warning

    warning = mask_frame_warning(command, args.raw, args.mask) if args.mask else None
    if warning:
        print(warning, file=sys.stderr)


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    from connectome.affinity.segment import check_method, plan_segmentation, run_segmentation, segmentation_config
    from connectome.cluster.client import open_client
    from connectome.cluster.worker_logs import worker_logs
    from connectome.engine.plan import check_input_chunks, check_outputs

    check_method(args.method)
    refuse_options_of_the_other_method(args)
    if args.model is None:
        args.model = "ffn-synthetic" if args.method == "ffn" else "synthetic"
        args.default_model = True  # said once the run is done (`say_default_model`)
    if args.method == "ffn":
        return _run_ffn(args)
    with held_until_accepted():  # a refusal is its one line: the warnings of the checks are said once they pass
        cluster = cluster_settings(args)
        config = segmentation_config(args.raw, args.out_dir, args.model, args.block_shape, args.chunk_shape,
                                     args.threshold, args.voxel_size, cluster, args.scoring,
                                     allow_voxel_mismatch=args.allow_voxel_mismatch, edge_model=args.edge_model,
                                     mask=args.mask, tta=args.tta, precision=args.precision or "auto",
                                     min_segment_voxels=args.min_segment_voxels,
                                     section_order=args.section_order or "auto", blank_band=args.blank_band,
                                     fill_blank=args.fill_blank, mask_values=args.mask_values)
        plan = plan_segmentation(config, args.overwrite)
        check_outputs(plan, args.overwrite)
        check_input_chunks(config.input, args.strict_input)
        say_mask_frame("segment", args)
    with worker_logs(plan.work_dir), open_client(cluster, quiet=args.json, lazy=True) as client:
        summary = run_segmentation(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    rate = summary["voxels"] / max(summary["seconds"], 1e-9)
    ran = sum(s["ran"] for s in summary["stages"])
    work = (f"{ran} block runs, {summary['seconds']:.1f} s ({rate / 1e6:.2f} Mvx/s)" if ran else
            f"no block ran (all were done before), {summary['seconds']:.1f} s")
    say_default_model(args)
    print_result(args, summary, f"segmentation: {summary['segmentation']}\n{summary['voxels']:,} voxels, {work}")
    return 0


def _run_ffn(args) -> int:
    from connectome.cluster.client import open_client
    from connectome.cluster.worker_logs import worker_logs
    from connectome.engine.plan import check_input_chunks, check_outputs, check_plan_resumable, plan_run
    from connectome.ffn.segment import budget_warning, ffn_config, run_ffn

    if args.ffn_agree is not None and not args.ffn_agglomerate:
        raise UserError(f"--ffn-agree {args.ffn_agree}: for --ffn-agglomerate, which is not given")
    with held_until_accepted():  # (as `run`'s)
        cluster = cluster_settings(args)
        config = ffn_config(args.raw, args.out_dir, args.model, args.block_shape, args.chunk_shape, args.voxel_size,
                            cluster, args.overlap, args.ffn_batch, allow_voxel_mismatch=args.allow_voxel_mismatch,
                            mask=args.mask, consensus=args.consensus, reverse=args.reverse_seeds,
                            agglomerate=args.ffn_agglomerate, agree=args.ffn_agree, precision=args.precision,
                            scale=args.ffn_scale,
                            consensus_model=args.consensus_model, weak_seed=args.ffn_weak_seed,
                            seed_margin=args.ffn_seed_margin, step_budget=args.ffn_step_budget,
                            moves=args.ffn_moves, section_order=args.section_order or "auto",
                            blank_band=args.blank_band, mask_values=args.mask_values, fill_blank=args.fill_blank)
        plan = plan_run(config)
        check_plan_resumable(plan, args.overwrite)
        check_outputs(plan, args.overwrite)
        check_input_chunks(config.input, args.strict_input)
        say_mask_frame("segment", args)
    with worker_logs(plan.work_dir), open_client(cluster, quiet=args.json, lazy=True) as client:
        summary = run_ffn(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    say_default_model(args)
    warning = budget_warning(summary)
    if warning:
        print(f"connectome segment: {warning}", file=sys.stderr)
    rate = summary["voxels"] / max(summary["seconds"], 1e-9)
    print_result(args, summary, f"segmentation: {summary['segmentation']}\n"
                                f"{summary['voxels']:,} voxels (ffn), {summary['seconds']:.1f} s "
                                f"({rate / 1e3:.1f} kvx/s)")
    return 0

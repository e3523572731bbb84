"""Align serial sections: patch matches, robust fits, elastic mesh, global solve, defect flags (resumes).

Writes OUT_DIR/aligned (the aligned volume), OUT_DIR/defects (1: flagged section, 2: flagged region, 3: outside:
warp margins and the padding of smaller sections) and OUT_DIR/alignment/transforms.npz (per-section displacement
fields on the mesh nodes and affine transforms). Run it again on the same OUT_DIR to resume.

--labels ADDR (repeatable): a label volume or integer mask in RAW's frame (ground truth, annotations) carried into the
aligned frame with the same transforms, nearest neighbour, ids exact: OUT_DIR/aligned_labels (then aligned_labels_2,
...), to score a segmentation of OUT_DIR/aligned against. --unalign ADDR: a label volume in the aligned frame (a
segmentation of OUT_DIR/aligned) carried back into RAW's frame: OUT_DIR/unaligned_labels (then _2, ...). Each resumes
on its own; run the alignment's command again with them added.
"""

from __future__ import annotations

import sys

from connectome.cli.arg_types import non_negative_float, positive_float, positive_int
from connectome.cli.held_notes import held_until_accepted
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early
from connectome.cli.segment import add_section_order_option


def add_arguments(parser) -> None:
    parser.add_argument("raw", help="raw volume address (zarr, precomputed://..., FILE.npz#KEY, TIFF stack, ...)")
    parser.add_argument("out_dir", help="output directory (an OME-Zarr group)")
    parser.add_argument("--block-shape", nargs=3, type=positive_int, default=(16, 512, 512), metavar=("Z", "Y", "X"),
                        help="sections and pixels per block (a block is a tile of sections)")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, default=None, metavar=("Z", "Y", "X"),
                        help="output chunks (default: the block shape)")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"),
                        help="nm; required for sources that carry none")
    parser.add_argument("--patch", type=int, default=64, help="template side in pixels (default 64)")
    parser.add_argument("--stride", type=int, default=64, help="mesh node spacing in pixels (default 64)")
    parser.add_argument("--search", type=int, default=80,
                        help="largest shift between neighbouring sections searched, pixels (default 80)")
    parser.add_argument("--model", choices=["translation", "rigid", "affine"], default="affine",
                        help="per-pair robust fit that rejects outlier patches (default affine)")
    parser.add_argument("--refine", action="store_true",
                        help="refine each pair's fit on intensities over the whole overlap and search again the "
                             "patches that disagree with it (slower: about 12 s per 1024^2 section on one core)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="K",
                        help="hold a neighbour pair as registered (no displacement) where its fit moves the section "
                             "by at most K times the scatter of its patches about the fit, so a stack registered "
                             "already is left as it is (e.g. 3; default 0: every pair's fit is followed)")
    parser.add_argument("--strain", type=non_negative_float, default=0.1, metavar="W",
                        help="weight holding each section's scale and shear (not its rotation) at none, so the "
                             "content differences between real sections do not add up to a drift of scale along "
                             "the stack (default 0.1; 0: scale and shear followed as freely as rotation, as before "
                             "2026-12-07)")
    parser.add_argument("--labels", action="append", default=[], metavar="ADDR",
                        help="a label volume (or integer mask) in RAW's frame, e.g. ground truth: carried into the "
                             "aligned frame (nearest neighbour, ids exact) as OUT_DIR/aligned_labels (given again: "
                             "aligned_labels_2, ...); repeatable")
    parser.add_argument("--unalign", action="append", default=[], metavar="ADDR",
                        help="a label volume in the aligned frame (a segmentation of OUT_DIR/aligned): carried back "
                             "into RAW's frame as OUT_DIR/unaligned_labels (then unaligned_labels_2, ...); repeatable")
    add_section_order_option(parser, "align them in the order recovered from the images and write the aligned "
                                     "volume in it", "auto")
    add_run_options(parser)


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    from connectome.alignment.chain import (
        alignment_config,
        label_plans,
        plan_alignment,
        run_alignment,
        run_label_plans,
    )
    from connectome.cluster.client import open_client
    from connectome.engine.plan import check_input_chunks, check_outputs

    with held_until_accepted():  # a refusal is its one line: the warnings of the checks are said once they pass
        cluster = cluster_settings(args)
        config = alignment_config(args.raw, args.out_dir, args.block_shape, args.chunk_shape, args.voxel_size,
                                  cluster, match={"patch": args.patch, "stride": args.stride, "search": args.search},
                                  solve={"model": args.model, **({"refine": True} if args.refine else {}),
                                         **({"hold": args.hold} if args.hold else {}), "strain": args.strain},
                                  section_order=args.section_order)
        plan = plan_alignment(config, args.overwrite)
        check_outputs(plan, args.overwrite)
        carried = label_plans(config, args.labels, args.unalign, args.overwrite)
        check_input_chunks(config.input, args.strict_input)
    with open_client(cluster, quiet=args.json, lazy=True) as client:
        summary = run_alignment(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
        if carried:
            labelled = run_label_plans(carried, client, overwrite=args.overwrite, progress=not args.no_progress)
            summary["stages"].extend(labelled.pop("stages"))
            summary.update({k: v for k, v in labelled.items() if v})
    flagged = summary["flagged_sections"]
    listed = ", ".join(f"{z} ({why})" for z, why in list(flagged.items())[:10]) or "none"
    linked = "".join(f"\nno matched pair joins sections {x['from']} and {x['to']}: linked by their whole sections "
                     f"(correlation {x['agreement']:.2f})" for x in summary["links"])
    if summary["breaks"]:
        pieces = ", ".join(f"{a} | {b}" for a, b in summary["breaks"])
        print(f"connectome: warning: the stack is aligned in {len(summary['breaks']) + 1} pieces that nothing joins "
              f"(between sections {pieces}): sections on either side of a break may be far out of register; check "
              f"them, or align with a larger --search or --patch", file=sys.stderr)
    carried_lines = "".join(f"\n{what}: {source} -> {dst}" for what, source, dst in _carried(args, summary))
    print_result(args, summary, f"aligned: {summary['aligned']}\n"
                                f"{summary['sections']} sections, flagged: {listed}; "
                                f"{summary['flagged_regions']} flagged patches; {summary['seconds']:.1f} s" + linked
                                + carried_lines)
    return 0


def _carried(args, summary: dict) -> list[tuple[str, str, str]]:
    """(what, source, destination) of each label volume carried, for the human summary."""
    pairs = [("labels in the aligned frame", source, dst)
             for source, dst in zip(args.labels, summary.get("aligned_labels", []))]
    pairs += [("labels in the raw frame", source, dst) for source, dst in zip(args.unalign,
                                                                               summary.get("unaligned_labels", []))]
    return pairs

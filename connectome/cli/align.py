"""Align serial sections: patch matches, robust fits, elastic mesh, global solve, defect flags (resumes).

Writes OUT_DIR/aligned (the aligned volume), OUT_DIR/defects (1: flagged section, 2: flagged region, 3: outside:
warp margins and the padding of smaller sections) and OUT_DIR/alignment/transforms.npz (per-section displacement
fields on the mesh nodes and affine transforms). Run it again on the same OUT_DIR to resume.
"""

from __future__ import annotations

import sys

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.held_notes import held_until_accepted
from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings
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
    add_section_order_option(parser, "align them in the order recovered from the images and write the aligned "
                                     "volume in it", "auto")
    add_run_options(parser)


def run(args) -> int:
    from connectome.alignment.chain import alignment_config, plan_alignment, run_alignment
    from connectome.cluster.client import open_client
    from connectome.engine.plan import check_input_chunks, check_outputs

    with held_until_accepted():  # a refusal is its one line: the warnings of the checks are said once they pass
        cluster = cluster_settings(args)
        config = alignment_config(args.raw, args.out_dir, args.block_shape, args.chunk_shape, args.voxel_size,
                                  cluster, match={"patch": args.patch, "stride": args.stride, "search": args.search},
                                  solve={"model": args.model, **({"refine": True} if args.refine else {}),
                                         **({"hold": args.hold} if args.hold else {})},
                                  section_order=args.section_order)
        plan = plan_alignment(config, args.overwrite)
        check_outputs(plan, args.overwrite)
        check_input_chunks(config.input, args.strict_input)
    with open_client(cluster, quiet=args.json) as client:
        summary = run_alignment(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    flagged = summary["flagged_sections"]
    listed = ", ".join(f"{z} ({why})" for z, why in list(flagged.items())[:10]) or "none"
    linked = "".join(f"\nno matched pair joins sections {x['from']} and {x['to']}: linked by their whole sections "
                     f"(correlation {x['agreement']:.2f})" for x in summary["links"])
    if summary["breaks"]:
        pieces = ", ".join(f"{a} | {b}" for a, b in summary["breaks"])
        print(f"connectome: warning: the stack is aligned in {len(summary['breaks']) + 1} pieces that nothing joins "
              f"(between sections {pieces}): sections on either side of a break may be far out of register; check "
              f"them, or align with a larger --search or --patch", file=sys.stderr)
    print_result(args, summary, f"aligned: {summary['aligned']}\n"
                                f"{summary['sections']} sections, flagged: {listed}; "
                                f"{summary['flagged_regions']} flagged patches; {summary['seconds']:.1f} s" + linked)
    return 0

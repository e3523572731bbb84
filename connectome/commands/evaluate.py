"""Score a segmentation against ground truth: VOI split/merge, adapted Rand, ERL, merges and splits.

Both volumes are read box by box (--block-shape). ERL uses ground-truth skeletons from
--skeletons (an .npz with nodes, edges, skeleton_ids; nodes in voxels z y x) or, without it,
skeletonises the whole ground truth with kimimaro (needs the gt in memory).
"""

from __future__ import annotations

from connectome.cli import print_result
from connectome.metrics.evaluate import DEFAULT_BLOCK_SHAPE, evaluate_volumes


def add_arguments(parser) -> None:
    parser.add_argument("--seg", required=True, metavar="ADDR", help="segmentation volume address")
    parser.add_argument("--gt", required=True, metavar="ADDR", help="ground-truth volume address (0 = unlabelled)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--block-shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=list(DEFAULT_BLOCK_SHAPE),
        help=f"voxels read per step (default {' '.join(map(str, DEFAULT_BLOCK_SHAPE))})",
    )
    parser.add_argument("--skeletons", metavar="FILE", help="precomputed ground-truth skeletons (.npz)")
    parser.add_argument(
        "--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
        help="voxel size in nm (default: the ground truth's own)",
    )


def _fmt(value, unit: str = "", digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def run(args) -> int:
    r = evaluate_volumes(
        args.seg, args.gt, block_shape=args.block_shape, skeletons=args.skeletons, voxel_size=args.voxel_size
    )
    rows = [
        ("VOI split", _fmt(r["voi_split"])),
        ("VOI merge", _fmt(r["voi_merge"])),
        ("VOI", _fmt(r["voi"])),
        ("adapted Rand", _fmt(r["arand"])),
        ("ERL", f"{_fmt(r['erl_nm'], ' nm', 1)} (gt itself: {_fmt(r['max_erl_nm'], ' nm', 1)})"),
        ("merges", f"{r['merges']} segments"),
        ("splits", f"{r['splits']} skeleton edges"),
    ]
    width = max(len(k) for k, _ in rows)
    human = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    human += (
        f"\n({r['voxels']} voxels in {r['blocks']} blocks, {r['skeletons']} skeletons, "
        f"{r['seconds']:.1f} s)"
    )
    print_result(args, r, human)
    return 0

"""Score a segmentation against ground truth: VOI split/merge, adapted Rand, ERL, merges and splits.

Both volumes are read box by box (--block-shape). ERL uses ground-truth skeletons from
--skeletons (an .npz with nodes, edges, skeleton_ids, nodes in voxels z y x; or `connectome synth`'s
ground_truth/skeletons.npz, nodes in nm, divided by the voxel size below) or, without it,
skeletonises the whole ground truth with kimimaro (needs the gt in memory). --per-section scores
each z section on its own (2-D ground truth such as ISBI 2012) and reports the means. The voxel
size is --voxel-size, else the segmentation's (zarr/precomputed metadata, or a resolution_zyx_nm
array in its npz), else the ground truth's. Either address may end in a section range [z0:z1]. Both volumes
must cover the same voxels: where both carry a world offset (zarr/precomputed metadata, the start of a [z0:z1]
range) and the offsets differ, the pair is refused in one line naming both (and the ranges that would match).
Where the segmentation was made from an aligned volume (`connectome align`'s `aligned`, as its run records tell) and
the ground truth is not known to be in that frame (`connectome align --labels` writes it there), one warning line
says so on stderr and how to carry the ground truth into the aligned frame; the evaluation runs all the same. So
does a segmentation made in a recovered section order (its skeleton counts follow the stored order).
"""

from __future__ import annotations

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.main import print_result

DEFAULT_BLOCK_SHAPE = (128, 256, 256)  # connectome.metrics.evaluate's (not imported here: `--help` stays fast)


def add_arguments(parser) -> None:
    parser.add_argument("--seg", required=True, metavar="ADDR", help="segmentation volume address (may end in [z0:z1])")
    parser.add_argument("--gt", required=True, metavar="ADDR",
                        help="ground-truth volume address (ids >= 0, 0 = unlabelled; may end in [z0:z1])")
    parser.add_argument("--per-section", action="store_true",
                        help="score each z section on its own (2-D ground truth) and report the means; each section "
                             "as a 2-D segmentation: segments and gt objects as their connected pieces in it, as 2-D "
                             "ground truth labels each connected profile (ISBI 2012's scoring)")
    parser.add_argument("--whole-segments", action="store_true",
                        help="with --per-section: score a segment's disconnected pieces in a section as one object "
                             "(a merge of the gt profiles they hold), as before 2026-12-07")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--block-shape", nargs=3, type=positive_int, metavar=("Z", "Y", "X"), default=list(DEFAULT_BLOCK_SHAPE),
        help=f"voxels read per step (default {' '.join(map(str, DEFAULT_BLOCK_SHAPE))})",
    )
    parser.add_argument("--skeletons", metavar="FILE",
                        help="precomputed ground-truth skeletons (.npz): nodes, edges, skeleton_ids (voxels), or "
                             "connectome synth's ground_truth/skeletons.npz (nm)")
    parser.add_argument(
        "--voxel-size", nargs=3, type=positive_float, metavar=("Z", "Y", "X"),
        help="voxel size in nm (default: the segmentation's own, else the ground truth's)",
    )


def _fmt(value, unit: str = "", digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _section_table(r: dict) -> str:
    """One row per scored section, then the means."""
    header = f"{'z':>6}  {'VOI split':>9}  {'VOI merge':>9}  {'adapted Rand':>12}"
    lines = [header]
    for s in r["sections"]:
        lines.append(f"{s['z']:>6}  {s['voi_split']:>9.4f}  {s['voi_merge']:>9.4f}  {s['arand']:>12.4f}")
    lines.append(f"{'mean':>6}  {r['voi_split']:>9.4f}  {r['voi_merge']:>9.4f}  {r['arand']:>12.4f}")
    skipped = r["skipped_sections"]
    if skipped:
        shown = ", ".join(map(str, skipped[:20])) + (", ..." if len(skipped) > 20 else "")
        lines.append(f"skipped {len(skipped)} section(s) without labelled gt voxels: z = {shown}")
    return "\n".join(lines)


def _load_skeletons(args):
    """The --skeletons file read with the voxel size evaluate measures ERL with (a synth-format file is in nm)."""
    from connectome.io import open_volume
    from connectome.metrics.evaluate import resolve_voxel_size
    from connectome.metrics.skeletons import Skeletons

    voxel_size, _ = resolve_voxel_size(open_volume(args.seg), open_volume(args.gt), args.voxel_size)
    return Skeletons.load(args.skeletons, voxel_size)


def run(args) -> int:
    import sys

    from connectome.alignment.frames import frame_warning
    from connectome.alignment.reordering import recorded_order
    from connectome.engine.inputs import note_padding
    from connectome.metrics.evaluate import evaluate_volumes

    if args.whole_segments and not args.per_section:
        from connectome.core.errors import UserError

        raise UserError("--whole-segments: only with --per-section (a whole-volume score takes segments whole)")
    for address in (args.seg, args.gt):  # (a label zarr's missing chunks are its all-zero ones: not said)
        note_padding(address)
    warning = frame_warning(args.seg, args.gt)  # (None wherever the run records cannot be read)
    if not args.per_section and recorded_order(args.seg) is not None:
        warning = "\n".join(w for w in (warning, (
            f"connectome evaluate: warning: seg {args.seg} was segmented in a recovered section order (its run's "
            "reorder_sections): merges, splits and ERL follow the stored order, in which neighbouring sections are not "
            "neighbours; VOI and adapted Rand do not depend on the order")) if w)
    skeletons = None if args.skeletons is None else _load_skeletons(args)
    r = evaluate_volumes(
        args.seg, args.gt, block_shape=args.block_shape, skeletons=skeletons, voxel_size=args.voxel_size,
        per_section=args.per_section, section_pieces=not args.whole_segments,
    )
    if warning:  # once the pair is accepted: a refusal stays its one line
        print(warning, file=sys.stderr, flush=True)
    mean = f" (mean of {len(r['sections'])} sections)" if r["per_section"] else ""
    rows = [
        ("VOI split", _fmt(r["voi_split"]) + mean),
        ("VOI merge", _fmt(r["voi_merge"]) + mean),
        ("VOI", _fmt(r["voi"]) + mean),
        ("adapted Rand", _fmt(r["arand"]) + mean),
        ("ERL", f"{_fmt(r['erl_nm'], ' nm', 1)} (gt itself: {_fmt(r['max_erl_nm'], ' nm', 1)})"),
        ("merges", f"{r['merges']} segments" + (" (counted per section)" if r["per_section"] else "")),
        ("splits", f"{r['splits']} skeleton edges"),
        *([("left out", f"{r['cross_section_edges']} skeleton edges between sections (per section, a skeleton is "
                        "its pieces within each section)")] if r.get("cross_section_edges") else []),
        ("voxel size", f"{' x '.join(f'{v:g}' for v in r['voxel_size'])} nm, from {r['voxel_size_from']}"),
    ]
    width = max(len(k) for k, _ in rows)
    human = _section_table(r) + "\n" if r["per_section"] else ""
    human += "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    human += (
        f"\n({r['voxels']} voxels in {r['blocks']} blocks, {r['skeletons']} skeletons, "
        f"{r['seconds']:.1f} s)"
    )
    print_result(args, r, human)
    return 0

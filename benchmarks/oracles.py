"""How much of a segmentation's VOI two kinds of fix could remove at most, measured with the ground truth.

- boundary oracle: every voxel whose ground-truth object is not the majority object of its segment moves
  to a 6-neighbour's segment whose majority object is its own, where one exists (one pass). What is left
  is not a question of where the boundary between two segments runs by one voxel.
- pieces oracle: each segment cut into its 4-connected pieces in every section, each piece then given its
  majority ground-truth id: a perfect agglomeration of those pieces, across sections (z linking) and
  within them. What is left lies inside the pieces (in-plane merges, minority voxels).
- with `--fragments` (the run's `fragments` volume), two bounds of any agglomeration of those fragments:
  the fragments oracle gives each fragment its majority ground-truth id (pieces of one object are joined
  even where they do not touch); the touching-fragments oracle then keeps only the joins of fragments that
  touch (6-connected components of that labelling), which is the best a merge of the region graph can do.
  `connected_floor` is the ground truth's own 6-connected components scored against it: the split that
  every segmentation whose segments are connected pays where an object leaves the volume and comes back.
- with `--per-section` (2-D ground truth, as `connectome evaluate --per-section`): every score is the mean of the
  sections' own VOI. `section_pieces` is then the score the ISBI 2012 challenge's protocol gives (each section's
  segmentation taken as its 2-D connected pieces): a 3-D segment that meets a section in two places is not
  charged as a merge there, which 2-D labels cannot judge.

Prints one JSON object with VOI (split, merge) of the segmentation, of each oracle, and of the pieces
alone. Usage:
    .venv/bin/python benchmarks/oracles.py --seg RUN/segmentation --gt 'FILE.npz#neuron_ids[z0:z1]' \
        [--fragments RUN/fragments] [--per-section]
"""

from __future__ import annotations

import argparse
import json

import cc3d
import numpy as np

from connectome.affinity.edge_training import majority_labels
from connectome.io import open_volume
from connectome.metrics.voi import voi


def majority(seg: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per voxel: the ground-truth id that most of its segment's labelled voxels carry (0 if none)."""
    labelled = gt > 0
    ids = np.unique(seg)
    covered = np.unique(seg[labelled])
    owners = np.zeros(len(ids), np.int64)
    owners[np.searchsorted(ids, covered)] = majority_labels(seg[labelled], gt[labelled], covered)
    return owners[np.searchsorted(ids, seg)]


def majority_apart(labels: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`majority`, with each piece that holds no labelled voxel kept apart under an id of its own."""
    owned = majority(labels, gt)
    return np.where(owned > 0, owned, labels + owned.max() + 1)


def boundary_oracle(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, dict]:
    owner = majority(seg, gt)
    wrong = (owner != gt) & (gt > 0)
    fixed = seg.copy()
    moved = np.zeros_like(wrong)
    per_axis = {}
    for axis, name in enumerate("zyx"):
        count = 0
        for shift in (1, -1):
            neighbour = np.roll(seg, shift, axis)
            neighbour_owner = np.roll(owner, shift, axis)
            edge = [slice(None)] * 3
            edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            ok = wrong & (neighbour_owner == gt) & ~moved
            ok[tuple(edge)] = False  # np.roll wrapped these
            fixed[ok] = neighbour[ok]
            moved |= ok
            count += int(ok.sum())
        per_axis[name] = count
    return fixed, {"wrong_voxels": int(wrong.sum()), "moved_voxels": int(moved.sum()), "moved_from": per_axis}


def section_pieces(seg: np.ndarray) -> np.ndarray:
    pieces = np.zeros(seg.shape, np.int64)
    start = 0
    for z in range(seg.shape[0]):  # + 1: segment 0, if any, is a segment here, not background
        cut = cc3d.connected_components(seg[z].astype(np.uint64) + 1, connectivity=4).astype(np.int64)
        pieces[z] = cut + start
        start = int(pieces[z].max())
    return pieces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seg", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--fragments", help="the run's fragments: also the bounds of agglomerating them")
    ap.add_argument("--per-section", action="store_true", help="each score the mean of the sections' own")
    args = ap.parse_args()
    seg_volume, gt_volume = open_volume(args.seg), open_volume(args.gt)
    seg = seg_volume.read(seg_volume.box).astype(np.int64)
    gt = gt_volume.read(gt_volume.box).astype(np.int64)

    def score(labels):
        if args.per_section:
            labelled = [z for z in range(gt.shape[0]) if gt[z].any()]
            split, merge = np.mean([voi(labels[z], gt[z]) for z in labelled], axis=0)
        else:
            split, merge = voi(labels, gt)
        return {"voi_split": round(split, 3), "voi_merge": round(merge, 3), "voi": round(split + merge, 3)}

    fixed, moved = boundary_oracle(seg, gt)
    pieces = section_pieces(seg)
    linked = majority_apart(pieces, gt)
    result = {"seg": args.seg, "gt": args.gt, "segmentation": score(seg),
              "boundary_oracle": {**score(fixed), **moved},
              "section_pieces": score(pieces), "pieces_oracle": score(linked)}
    if args.fragments:
        fragments_volume = open_volume(args.fragments)
        fragments = fragments_volume.read(fragments_volume.box).astype(np.int64)
        owned = majority_apart(fragments, gt)
        touching = cc3d.connected_components(owned.astype(np.uint64), connectivity=6).astype(np.int64)
        result.update({"fragments": {**score(fragments), "count": int(len(np.unique(fragments)))},
                       "fragments_oracle": score(owned), "touching_fragments_oracle": score(touching)})
    result["connected_floor"] = score(cc3d.connected_components(gt.astype(np.uint64), connectivity=6).astype(np.int64))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

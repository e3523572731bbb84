"""Evaluate a segmentation volume against a ground-truth volume, reading both box by box.

One pass over a BlockGrid: each block reads its box from both volumes, tabulates its contingency
table and reads the segment and gt ids at the skeleton nodes that fall inside it. Only those small
summaries are kept, so the volumes themselves never need to fit in memory. The one whole-volume
step is skeletonising the ground truth with kimimaro when no skeleton file is given; pass
precomputed skeletons (`Skeletons.save`) for volumes that do not fit.

With `per_section`, for 2-D ground truth (ISBI, VNC): each block tabulates one table per z section,
VOI and adapted Rand are scored per section (gt == 0 excluded, as for the whole volume) and
averaged over the sections that hold labelled gt; the gt is skeletonised section by section, and
segment and skeleton ids are taken per section, so a segment that touches two gt objects of one
section is a merge while one segment spanning several sections is not. Such ground truth labels
each connected profile of a section as its own object (it cannot tell two profiles of one neuron
from two neurons), so by default (`section_pieces`) each section is scored as a 2-D segmentation:
the segments and the gt objects as their 4-connected pieces within it, as the ISBI 2012 challenge
labelled each slice's connected components. Two profiles of one 3-D segment are then not a merge
where they do not touch. The blocks then hold whole sections (their y and x span the volume).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from connectome.core.address import parse_address
from connectome.core.errors import UserError
from connectome.core.geometry import Block, BlockGrid, Box, vec3
from connectome.io import Volume, open_volume, readonly, same_voxel_size
from connectome.io.precomputed import PrecomputedVolume
from connectome.io.readonly import RESOLUTION_KEY
from connectome.io.sections import SectionRange
from connectome.io.zarr_store import ZarrVolume
from connectome.metrics.contingency import Contingency, ContingencyAccumulator, check_label_dtype, wrapped_ignore_id
from connectome.metrics.erl import expected_run_length
from connectome.metrics.rand import adapted_rand_stats
from connectome.metrics.skeletons import NodeLookup, Skeletons
from connectome.metrics.voi import voi_from_table

DEFAULT_BLOCK_SHAPE = (128, 256, 256)


@dataclass(frozen=True)
class BlockSummary:
    """What one block contributes: its table(s) and the ids at the skeleton nodes inside it.

    `sections` holds one table per z section of the block (z in volume coordinates) when the
    evaluation is per section, else it is empty and `table` holds the whole block.
    """

    table: Contingency
    nodes: np.ndarray
    seg_at_nodes: np.ndarray
    gt_at_nodes: np.ndarray
    sections: dict[int, Contingency]


def read_labels(vol: Volume, box: Box, role: str) -> np.ndarray:
    """`vol`'s voxels in `box`, for the `role` ("seg" or "gt") it plays. A chunk that cannot be read (a damaged
    or truncated file) and, in the gt, a negative id are one line naming the chunk or the voxel (UserError): the
    gt's ids are objects >= 1 and 0 = unlabelled, and a negative one would be scored as an object of its own."""
    try:
        data = vol.read(box)
    except OSError as e:  # the zarr reader names the chunk file it cannot decode
        raise UserError(f"{e} (reading the {role}); expected a readable chunk: rewrite the volume, e.g. re-run the "
                        "command that made it") from None
    if role == "gt" and data.dtype.kind == "i" and data.size and data.min() < 0:
        at = np.unravel_index(int(np.argmin(data)), data.shape)
        voxel = [int(o) + int(i) for o, i in zip(box.offset, at)]
        raise UserError(f"gt {vol.address}: expected ground-truth ids >= 0 (0 = unlabelled), found {int(data.min())} "
                        f"at voxel [z y x] {voxel}")
    if role == "gt" and (wrapped := wrapped_ignore_id(data)) is not None:
        at = np.unravel_index(int(np.argmax(data)), data.shape)
        voxel = [int(o) + int(i) for o, i in zip(box.offset, at)]
        raise UserError(f"gt {vol.address}: id {wrapped} (the largest {data.dtype}: -1 written unsigned, an 'ignore' "
                        f"label?) at voxel [z y x] {voxel}; expected object ids >= 1 and 0 = unlabelled: map it to 0")
    return data


def section_pieces(labels: np.ndarray) -> np.ndarray:
    """Each section's labels split into their 4-connected pieces within it (ids numbered per section, 0 kept)."""
    return np.stack([cc3d.connected_components(np.ascontiguousarray(labels[i:i + 1]), connectivity=6,
                                               out_dtype=np.uint64)[0] for i in range(labels.shape[0])])


def evaluate_block(seg: Volume, gt: Volume, block: Block, lookup: NodeLookup,
                   per_section: bool = False, pieces: bool = False) -> BlockSummary:
    """Read one block's write box from both volumes and summarise it (`pieces`: the segments and gt objects of each
    section split into their connected pieces, where the block holds whole sections)."""
    box = block.write_box
    s, g = read_labels(seg, box, "seg"), read_labels(gt, box, "gt")
    if pieces:
        s, g = section_pieces(s), section_pieces(g)
    if per_section:
        sections = {box.offset[0] + i: Contingency.from_arrays(s[i], g[i]) for i in range(box.shape[0])}
        table = Contingency.empty()
    else:
        sections, table = {}, Contingency.from_arrays(s, g)
    nodes, seg_values = lookup.values(block, s)
    _, gt_values = lookup.values(block, g)
    return BlockSummary(table, nodes, seg_values.astype(np.uint64), gt_values.astype(np.uint64), sections)


def _open_pair(seg_address: str, gt_address: str) -> tuple[Volume, Volume]:
    seg, gt = open_volume(seg_address), open_volume(gt_address)
    for name, vol in (("seg", seg), ("gt", gt)):
        if vol.meta.channels is not None:
            raise UserError(f"{vol.address}: expected a label volume, found {vol.meta.channels} channels")
        try:
            check_label_dtype(vol.dtype, f"{name} {vol.address}")
        except TypeError as e:
            raise UserError(str(e)) from None
    if seg.shape != gt.shape:
        raise UserError(
            f"shape mismatch: seg {seg.address} is {list(seg.shape)}, gt {gt.address} is {list(gt.shape)}"
            + (f" (to compare the same voxels, {hint})" if (hint := _same_voxels_hint(seg, gt)) else "")
        )
    s_off, g_off = carried_offset(seg), carried_offset(gt)
    if any(a is not None and b is not None and a != b for a, b in zip(s_off, g_off)):
        raise UserError(
            f"offset mismatch: seg {seg.address} starts at world voxel [z y x] {_shown(s_off)}, gt {gt.address} at "
            f"{_shown(g_off)}; expected the same offset, so that the same voxels are compared: "
            + (_same_voxels_hint(seg, gt) or "address the same sections of both (ADDR[z0:z1])")
        )
    for (name, vol, off), (other, o_off) in ((("seg", seg, s_off), ("gt", g_off)), (("gt", gt, g_off), ("seg", s_off))):
        if all(v is None for v in off) and any(v for v in o_off if v is not None):  # one side's place unknown
            import sys

            print(f"connectome evaluate: warning: {other} starts at world voxel [z y x] {_shown(o_off)}, {name} "
                  f"{vol.address} records no offset: compared voxel for voxel; address the same sections of both if "
                  f"they are not", file=sys.stderr)
    return seg, gt


def carried_offset(vol: Volume) -> tuple[int | None, int | None, int | None]:
    """Where `vol`'s voxel (0, 0, 0) lies in world voxels, per axis z y x, where the volume says so (None where it
    does not): a precomputed volume's voxel_offset, a zarr's recorded offset (connectome metadata), plus the start
    of an `ADDR[z0:z1]` section range (over an npz, h5 or TIFF stack, which carry none, the range gives z alone)."""
    if isinstance(vol, SectionRange):
        z, y, x = carried_offset(vol.inner)
        return (z or 0) + vol.start, y, x
    m = vol.meta
    # an offset of 0 is what a volume records that was written from a source that carries none (a crop of an npz,
    # h5 or TIFF stack): not a place, so it is compared with nothing (a warning says so where the other has one)
    if isinstance(vol, (PrecomputedVolume, ZarrVolume)) and any(m.offset):
        z, y, x = (int(v) for v in m.offset)
        return z, y, x
    return None, None, None


def _shown(offset) -> str:
    return "[" + ", ".join("?" if v is None else str(v) for v in offset) + "]"


def _range_over(vol: Volume, other: Volume) -> str | None:
    """The address of the sections of `vol`'s file that `other` covers (`ADDR[z0:z1]`), where `other` carries its z
    offset, the file holds all those sections and the y x extent and offsets agree; else None."""
    base = vol.inner if isinstance(vol, SectionRange) else vol
    b_off, o_off = carried_offset(base), carried_offset(other)
    bz = carried_offset(vol)[0] or 0  # a file that carries none (npz, h5, TIFF): its section 0 taken as z 0
    if o_off[0] is None or base.shape[1:] != other.shape[1:]:
        return None
    if any(a is not None and b is not None and a != b for a, b in zip(b_off[1:], o_off[1:])):
        return None
    z0 = o_off[0] - (bz - (vol.start if isinstance(vol, SectionRange) else 0))
    z1 = z0 + other.shape[0]
    if z0 < 0 or z1 > base.shape[0]:
        return None
    return f"{parse_address(vol.address).base}[{z0}:{z1}]"


def _same_voxels_hint(seg: Volume, gt: Volume) -> str:
    """"give --seg X or --gt Y" with the section ranges that would compare the same voxels, or "" where none is
    known."""
    ways = [f"{flag} {address}" for flag, address in (("--seg", _range_over(seg, gt)), ("--gt", _range_over(gt, seg)))
            if address is not None]
    return f"give {' or '.join(ways)}" if ways else ""


def npz_resolution(address: str) -> tuple[float, float, float] | None:
    """The `resolution_zyx_nm` array stored beside an npz address's key, if the file has one."""
    parsed = parse_address(address)
    return readonly.npz_resolution(parsed.path) if parsed.kind == "npz" else None


def resolve_voxel_size(seg: Volume, gt: Volume, given: Sequence[float] | None) -> tuple[tuple[float, ...], str]:
    """(voxel size in nm, where it came from): --voxel-size, else the seg's, else the gt's, else 1 1 1.
    Sizes the two volumes carry must agree with each other and with --voxel-size (one line otherwise)."""
    carried = [(name, vol) for name, vol in (("seg", seg), ("gt", gt)) if vol.meta.voxel_size_known]
    if len(carried) == 2 and not same_voxel_size(seg.meta.voxel_size, gt.meta.voxel_size):
        raise UserError(f"voxel size: seg {seg.address} has {list(seg.meta.voxel_size)} nm, gt {gt.address} has "
                        f"{list(gt.meta.voxel_size)} nm; expected the same (resample one of them)")
    if given is not None:
        size = tuple(float(v) for v in given)
        if len(size) != 3 or any(not np.isfinite(v) or v <= 0 for v in size):
            raise UserError(f"voxel size: expected 3 positive values (z y x nm), found {list(size)}")
        for name, vol in carried:
            if not same_voxel_size(vol.meta.voxel_size, size):
                raise UserError(f"--voxel-size: {name} {vol.address} has voxel size {list(vol.meta.voxel_size)} nm, "
                                f"but {list(size)} was given")
        return size, "--voxel-size"
    for name, vol in carried:
        found = npz_resolution(vol.address)  # (an npz volume's metadata holds it too: named as the file's here)
        if found is not None:
            return found, f"{name} file ({parse_address(vol.address).path}#{RESOLUTION_KEY})"
        return tuple(float(v) for v in vol.meta.voxel_size), f"{name} metadata ({vol.address})"
    return (1.0, 1.0, 1.0), "none found: 1 1 1 assumed, ERL in voxels (give --voxel-size)"


def _whole_sections(block_shape: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Blocks of whole sections, as many as `block_shape`'s voxels hold (at least one)."""
    plane = int(shape[1]) * int(shape[2])
    return max(1, min(int(shape[0]), int(np.prod(block_shape)) // plane)), int(shape[1]), int(shape[2])


def _first_section(vol: Volume) -> int:
    """Index, in the addressed file, of the volume's section 0 (non-zero for an `ADDR[z0:z1]` range)."""
    return vol.start if isinstance(vol, SectionRange) else 0


def _per_section_ids(ids: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ids made distinct per z section ((z, id) pairs numbered from 1); id 0 stays 0."""
    ids = np.asarray(ids, np.uint64)
    out = np.zeros(len(ids), np.uint64)
    on = ids != 0
    if on.any():
        pairs = np.stack([np.asarray(z, np.uint64)[on], ids[on]], axis=1)
        _, inverse = np.unique(pairs, axis=0, return_inverse=True)
        out[on] = inverse.reshape(-1).astype(np.uint64) + np.uint64(1)
    return out


def _skeletons_per_section(gt: Volume, voxel_size) -> Skeletons:
    """Kimimaro skeletons of each z section of the gt on its own, ids distinct per section."""
    _, ny, nx = gt.shape
    parts = []
    for z in range(gt.shape[0]):
        sk = Skeletons.from_labels(read_labels(gt, Box((z, 0, 0), (1, ny, nx)), "gt"), voxel_size)
        parts.append(Skeletons(sk.nodes + np.array([z, 0, 0]), sk.edges, sk.skeleton_ids))
    starts = np.cumsum([0] + [len(p.nodes) for p in parts])
    nodes = np.concatenate([p.nodes for p in parts])
    edges = np.concatenate([p.edges + start for p, start in zip(parts, starts)])
    ids = np.concatenate([p.skeleton_ids for p in parts])
    return Skeletons(nodes, edges, _per_section_ids(ids, np.rint(nodes[:, 0]).astype(np.int64)))


def _skeletons_for(skeletons, gt: Volume, voxel_size, per_section: bool = False) -> tuple[Skeletons, int]:
    """(the skeletons ERL is measured on, how many of a given file's edges crossed sections and were
    left out: per section, a skeleton is its pieces within each section, as the gt's own there)."""
    if skeletons is None:
        if per_section:
            return _skeletons_per_section(gt, voxel_size), 0
        return Skeletons.from_labels(read_labels(gt, gt.box, "gt"), voxel_size), 0  # whole-volume: see module docstring
    skel = skeletons if isinstance(skeletons, Skeletons) else Skeletons.load(str(skeletons), voxel_size)
    if not per_section:
        return skel, 0
    z = skel.voxels()[:, 0]
    within = z[skel.edges[:, 0]] == z[skel.edges[:, 1]]
    _, piece = np.unique(np.stack([z.astype(np.uint64), skel.skeleton_ids], axis=1), axis=0, return_inverse=True)
    return Skeletons(skel.nodes, skel.edges[within], piece.reshape(-1) + 1), int((~within).sum())


def _section_scores(tables: dict[int, ContingencyAccumulator], first: int) -> tuple[list[dict], list[int]]:
    """(one score entry per section holding labelled gt, z of the sections without any)."""
    scored, skipped = [], []
    for z in sorted(tables):
        table = tables[z].result()
        labelled = int(table.count[table.gt != 0].sum())
        if labelled == 0:
            skipped.append(first + z)
            continue
        split, merge = voi_from_table(table)
        rand = adapted_rand_stats(table)
        scored.append({"z": first + z, "voi_split": split, "voi_merge": merge, "arand": rand.error,
                       "arand_precision": rand.precision, "arand_recall": rand.recall,
                       "labelled_voxels": labelled})
    return scored, skipped


def evaluate_volumes(
    seg_address: str,
    gt_address: str,
    block_shape: Sequence[int] = DEFAULT_BLOCK_SHAPE,
    skeletons: Skeletons | str | None = None,
    voxel_size: Sequence[float] | None = None,
    per_section: bool = False,
    section_pieces: bool = True,
) -> dict:
    """VOI, adapted Rand, ERL and merge/split counts of `seg_address` against `gt_address`.

    `skeletons`: a Skeletons, a path to a skeleton .npz, or None to skeletonise the gt with
    kimimaro. `voxel_size` (nm, z y x) defaults to the segmentation's own (zarr/precomputed
    metadata, or a `resolution_zyx_nm` array in its npz), then the gt's. Keys of the result:
    voi_split, voi_merge, voi, arand, arand_precision, arand_recall, erl_nm, max_erl_nm (ERL of the
    gt scored against itself), merges, splits, merged_edges, omitted_edges, skeletons,
    skeleton_length_nm, voxels, labelled_voxels, blocks, block_shape, voxel_size, voxel_size_from,
    per_section, seconds. With `per_section` (see the module docstring) the VOI and Rand keys are
    means over the scored sections, and `sections` (z, voi_split, voi_merge, arand, ...) and
    `skipped_sections` (z of sections without labelled gt) are added; z counts from the start of
    the addressed file, also for an `ADDR[z0:z1]` range. `section_pieces` (per section only; see the module
    docstring): segments and gt objects scored as their connected pieces in each section, and the result's
    `section_pieces` says so. Refused in one line (UserError): volumes of other shapes or, where both carry one
    (`carried_offset`), other world offsets; a negative gt id; a chunk that cannot be read.
    """
    start = time.perf_counter()
    seg, gt = _open_pair(seg_address, gt_address)
    voxel_size, voxel_size_from = resolve_voxel_size(seg, gt, voxel_size)
    pieces = per_section and section_pieces
    grid = BlockGrid(gt.box, _whole_sections(block_shape, gt.shape) if pieces else vec3(block_shape))
    skel, crossing = _skeletons_for(skeletons, gt, voxel_size, per_section)
    lookup = NodeLookup(skel, grid)

    tables = ContingencyAccumulator()
    section_tables = {z: ContingencyAccumulator() for z in range(gt.shape[0])} if per_section else {}
    seg_at_nodes = np.zeros(len(skel.nodes), np.uint64)
    gt_at_nodes = np.zeros(len(skel.nodes), np.uint64)
    for block in grid:
        part = evaluate_block(seg, gt, block, lookup, per_section, pieces)
        tables.add(part.table)
        for z, section in part.sections.items():
            section_tables[z].add(section)
        seg_at_nodes[part.nodes] = part.seg_at_nodes
        gt_at_nodes[part.nodes] = part.gt_at_nodes

    if per_section:
        scored, skipped = _section_scores(section_tables, _first_section(gt))
        if not scored:
            raise UserError(f"{gt.address}: ground truth has no labelled voxels (gt == 0 everywhere)")
        node_z = skel.voxels()[:, 0]
        seg_at_nodes = _per_section_ids(seg_at_nodes, node_z)
        gt_at_nodes = _per_section_ids(gt_at_nodes, node_z)
        means = {k: float(np.mean([s[k] for s in scored]))
                 for k in ("voi_split", "voi_merge", "arand", "arand_precision", "arand_recall")}
        split, merge = means["voi_split"], means["voi_merge"]
        rand_keys = {"arand": means["arand"], "arand_precision": means["arand_precision"],
                     "arand_recall": means["arand_recall"]}
        voxels = int(np.prod(gt.shape))
        labelled = sum(s["labelled_voxels"] for s in scored)
    else:
        table = tables.result()
        if not np.any(table.gt != 0):
            raise UserError(f"{gt.address}: ground truth has no labelled voxels (gt == 0 everywhere)")
        split, merge = voi_from_table(table)
        rand = adapted_rand_stats(table)
        rand_keys = {"arand": rand.error, "arand_precision": rand.precision, "arand_recall": rand.recall}
        voxels, labelled = table.total, int(table.count[table.gt != 0].sum())
    run = expected_run_length(skel, seg_at_nodes, voxel_size)
    best = expected_run_length(skel, gt_at_nodes, voxel_size)
    result = {
        "voi_split": split,
        "voi_merge": merge,
        "voi": split + merge,
        **rand_keys,
        "erl_nm": run.erl_nm,
        "max_erl_nm": best.erl_nm,
        "merges": run.merges,
        "splits": run.splits,
        "merged_edges": run.merged_edges,
        "omitted_edges": run.omitted_edges,
        "skeletons": int(len(np.unique(skel.skeleton_ids))),
        "skeleton_length_nm": run.total_length_nm,
        "voxels": voxels,
        "labelled_voxels": labelled,
        "blocks": len(grid),
        "block_shape": list(grid.block_shape),
        "voxel_size": list(voxel_size),
        "voxel_size_from": voxel_size_from,
        "per_section": per_section,
    }
    if per_section:
        result["section_pieces"] = pieces
        result["sections"] = scored
        result["skipped_sections"] = skipped
        result["cross_section_edges"] = crossing
    result["seconds"] = time.perf_counter() - start
    return result

"""Validation segmentation with the chain `connectome segment` runs, in memory, as one block.

`connectome segment` stores the predicted affinities as uint8 (`encoding`), cuts them into
fragments with the steepest-ascent watershed (`watershed`: `edge_values`, `pointers`, `basins`,
the `fragments` stage's aff_low / aff_high), builds the region graph (`region_graph`), merges it
globally (`agglomeration.lookup_table`, mean scoring, the `relabel` stage's default) and relabels
the fragments (`relabel.relabel`). `segment_affinities` does exactly that on an in-memory volume
for several thresholds at once (the watershed and the region graph do not depend on the threshold),
so the threshold chosen on validation is the one that scores best with the command that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from connectome.affinity.agglomeration import lookup_table
from connectome.affinity.encoding import affinities_as_float, affinities_as_uint8
from connectome.affinity.region_graph import region_graph
from connectome.affinity.stages import RelabelParams, WatershedParams
from connectome.affinity.watershed import basins, edge_values, pointers, within_sections
from connectome.core.geometry import Box
from connectome.core.ids import globalise
from connectome.io.lookup import relabel

_WATERSHED = WatershedParams()
AFF_LOW: float = _WATERSHED.aff_low  # the fragments stage's defaults
AFF_HIGH: float = _WATERSHED.aff_high
SCORING: str = RelabelParams().scoring  # the relabel stage's default ("mean")
CHAIN = "connectome: uint8 affinities, steepest-ascent watershed, region graph, global merge, relabel"


def one_block_graph(affs_u8: np.ndarray, aff_low: float = AFF_LOW, aff_high: float = AFF_HIGH,
                    in_plane: bool = False):
    """Fragments (uint64, ids of block 0), the region-graph table of one block covering the volume, and
    the edges' affinity histograms (scipy CSR)."""
    z, y, x = (int(s) for s in affs_u8.shape[1:])
    box = Box((0, 0, 0), (z, y, x))
    edges = edge_values(affinities_as_float(affs_u8, np.float32), box, box)
    if in_plane:
        within_sections(edges)
    fragments = globalise(basins(pointers(edges, aff_low), edges, aff_high), 0)
    u, v, sums, counts, hist = region_graph(fragments, affinities_as_float(affs_u8, np.float64),
                                            (False, False, False))
    nodes = np.unique(fragments)
    nodes = nodes[nodes != 0]
    empty = np.zeros(0, np.uint64)
    tables = {"nodes": nodes, "u": u, "v": v, "sums": sums, "counts": counts, "link_u": empty, "link_v": empty}
    return fragments, tables, hist


def fragments_and_tables(affs_u8: np.ndarray, aff_low: float = AFF_LOW, aff_high: float = AFF_HIGH,
                         in_plane: bool = False):
    """Fragments (uint64, ids of block 0) and the region-graph table of one block covering the volume."""
    fragments, tables, _hist = one_block_graph(affs_u8, aff_low, aff_high, in_plane)
    return fragments, tables


def segment_affinities(affs: np.ndarray, thresholds: Sequence[float], aff_low: float = AFF_LOW,
                       aff_high: float = AFF_HIGH, scoring: str = SCORING, in_plane: bool = False):
    """Yield (threshold, segmentation) for float affinities (3, z, y, x) in [0, 1], as `connectome
    segment` would segment them in one block (uint8 storage included)."""
    affs_u8 = affs if affs.dtype == np.uint8 else affinities_as_uint8(np.asarray(affs))
    fragments, tables = fragments_and_tables(affs_u8, aff_low, aff_high, in_plane)
    for t in thresholds:
        if len(tables["nodes"]) == 0:
            yield float(t), np.zeros(fragments.shape, np.uint64)
            continue
        keys, values = lookup_table(tables, float(t), scoring)
        yield float(t), relabel(fragments, keys, values)


def voi_over_thresholds(affs: np.ndarray, gt: np.ndarray, thresholds, in_plane: bool = False) -> list[dict]:
    """Our chain at each threshold, scored against `gt` (VOI in bits, gt == 0 excluded)."""
    from connectome.metrics import voi

    out = []
    for t, seg in segment_affinities(affs, thresholds, in_plane=in_plane):
        split, merge = voi(seg, gt)
        split, merge = split + 0.0, merge + 0.0  # no -0.0 in reports
        out.append({"threshold": t, "voi_split": split, "voi_merge": merge, "voi": split + merge})
    return out


__all__ = ["segment_affinities", "fragments_and_tables", "voi_over_thresholds", "AFF_LOW", "AFF_HIGH", "CHAIN"]

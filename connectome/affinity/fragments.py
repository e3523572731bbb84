"""Supervoxels per block: the steepest-ascent watershed (affinity.watershed), ids `(block << 32) | local`.

The basins of a block are the global basins cut at its faces; the agglomerate stage records the
pointers that cross faces, and the global merge joins those pieces first, so the fragments do not
depend on the block layout.
"""

from __future__ import annotations

import numpy as np

from connectome.affinity.encoding import affinities_as_float
from connectome.affinity.watershed import affinity_box, edge_values
from connectome.io import Volume


def block_edges(affinities: Volume, region) -> np.ndarray:
    """The six edge affinities of each voxel in `region`, from the stored uint8 affinities."""
    box = affinity_box(region).intersect(affinities.box)
    return edge_values(affinities_as_float(affinities.read(box), np.float32), region, affinities.box)


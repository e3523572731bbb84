"""One block's region-graph table: edges (also those across the block's lower faces) and the
watershed pointers across those faces that join pieces of one basin (`link_u`, `link_v`).

The edges come from `affinity.region_graph`; each block's table is an npz with `nodes`, `u`,
`v`, `sums`, `counts`, the links, and the affinity histograms stored sparsely (`hist_edge`,
`hist_bin`, `hist_count`: only non-zero bins), since most contacts are a few voxel pairs. With an edge
classifier (`edge_classifier`), `sums` hold p(merge) x contact count instead and the affinity sums
move to `affinity_sums`.
"""

from __future__ import annotations

import numpy as np

from connectome.affinity.edge_classifier import EdgeClassifier
from connectome.affinity.edge_context import context_sums
from connectome.affinity.edge_features import extent_limit
from connectome.affinity.encoding import affinities_as_float
from connectome.affinity.fragments import block_edges
from connectome.affinity.region_graph import region_graph
from connectome.affinity.watershed import face_links, pointers, within_sections
from connectome.core.geometry import Box
from connectome.io import Volume

EDGES_FORMAT = 2  # 2: sparse histograms


def block_graph(fragments: Volume, affinities: Volume, read: Box, write: Box, aff_low: float,
                aff_high: float, classifier: EdgeClassifier | None = None,
                in_plane: bool = False, image: Volume | None = None, image_fill: int = 0) -> dict[str, np.ndarray]:
    """The region-graph table of the block writing `write`; `read` adds one voxel below each inner face.
    With `classifier` (learned scoring), `sums` are its p(merge) x contact count on edges with a small
    side and the affinity sums elsewhere (`edge_context`; `image`, the EM image, where the classifier reads it,
    its blank voxels filled as `affinity.blank.fill_blank(..., image_fill)` fills them)."""
    (rz, ry, rx), (wz, wy, wx) = read.offset, write.offset
    has_lower = (rz < wz, ry < wy, rx < wx)
    frag = fragments.read(read)
    affs = affinities_as_float(affinities.read(write), np.float64)
    u, v, sums, counts, hist = region_graph(frag, affs, has_lower)
    edges = block_edges(affinities, read)
    if in_plane:
        within_sections(edges)
    ptr = pointers(edges, aff_low)
    link_u, link_v = face_links(ptr, edges, frag, has_lower, aff_high)
    start = tuple(int(h) for h in has_lower)
    nodes = np.unique(frag[tuple(slice(s, None) for s in start)])
    nodes = nodes[nodes != 0]
    extra = {}
    if classifier is not None:
        extra = {"affinity_sums": sums}
        sums = context_sums(affinities, frag, affs, has_lower, read, u, v, classifier,
                            extent_limit(affinities.meta.voxel_size, classifier.extent), aff_low, aff_high,
                            in_plane, image, image_fill)
    hist_edge = np.repeat(np.arange(len(u), dtype=np.uint32), np.diff(hist.indptr))
    return dict(nodes=nodes, u=u, v=v, sums=sums, counts=counts, hist_edge=hist_edge,
                hist_bin=hist.indices.astype(np.uint8), hist_count=hist.data, link_u=link_u, link_v=link_v, **extra)

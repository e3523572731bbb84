"""Ground-truth skeletons for ERL: a node/edge table, kimimaro on labels, an npz file format.

The file format (`Skeletons.save` / `Skeletons.load`) is an .npz with three arrays:
`nodes` (N, 3) float, voxel coordinates (z, y, x) in the volume's array coordinates;
`edges` (E, 2) int, pairs of row indices into `nodes`; `skeleton_ids` (N,) int, the
ground-truth object each node belongs to (an edge joins two nodes of one skeleton).

`Skeletons.load` also reads the format `connectome synth` writes (ground_truth/skeletons.npz): `ids`
(K,) int, and per id `nodes_<id>` (N, 3) in nm (z, y, x; voxel i has its centre at i * voxel size) and
`edges_<id>` (E, 2), row indices into that id's nodes. Its nodes are divided by the voxel size given
to `load` (the one ERL is then measured with), so lengths in nm are the file's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Block, BlockGrid
from connectome.io.readonly import npz_member, open_npz

TABLE_KEYS = ("nodes", "edges", "skeleton_ids")  # `Skeletons.save`'s format, nodes in voxels
SYNTH_KEYS = "ids, nodes_<id>, edges_<id>"  # `connectome synth`'s ground_truth/skeletons.npz, nodes in nm
FORMATS = (f"{', '.join(TABLE_KEYS)} (voxels; Skeletons.save) or {SYNTH_KEYS} (nm; connectome synth's "
           "ground_truth/skeletons.npz)")
_PER_ID = re.compile(r"(nodes|edges)_\d+")


@dataclass(frozen=True)
class Skeletons:
    """Skeleton graphs of many objects in one table; nodes in voxels (z, y, x)."""

    nodes: np.ndarray  # (N, 3) float64 voxel coordinates
    edges: np.ndarray  # (E, 2) int64 node indices
    skeleton_ids: np.ndarray  # (N,) uint64

    def __post_init__(self) -> None:
        nodes, edges = np.asarray(self.nodes, dtype=np.float64), np.asarray(self.edges)
        if nodes.size == 0:
            nodes = nodes.reshape(0, 3)
        if edges.size == 0:
            edges = edges.reshape(0, 2)
        if nodes.ndim != 2 or nodes.shape[1] != 3:
            raise ValueError(f"skeletons: expected nodes of shape (N, 3), found {list(nodes.shape)}")
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise ValueError(f"skeletons: expected edges of shape (E, 2), found {list(edges.shape)}")
        if not np.all(np.isfinite(nodes)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(nodes), axis=1))[0])
            raise ValueError(f"skeletons: expected finite node coordinates, found {nodes[bad].tolist()} at node {bad}")
        if len(edges) and not np.issubdtype(edges.dtype, np.integer):
            raise ValueError(f"skeletons: expected integer node indices in edges, found dtype {edges.dtype}")
        edges = edges.astype(np.int64)
        ids = np.asarray(self.skeleton_ids).astype(np.uint64).reshape(-1)
        if len(ids) != len(nodes):
            raise ValueError(f"skeletons: {len(nodes)} nodes but {len(ids)} skeleton ids")
        if len(edges) and (edges.min() < 0 or edges.max() >= len(nodes)):
            raise ValueError(f"skeletons: edge node index outside 0..{len(nodes) - 1}")
        if len(edges) and np.any(ids[edges[:, 0]] != ids[edges[:, 1]]):
            raise ValueError("skeletons: an edge joins nodes of two different skeletons")
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "skeleton_ids", ids)

    @property
    def edge_skeleton_ids(self) -> np.ndarray:
        return self.skeleton_ids[self.edges[:, 0]]

    def edge_lengths(self, voxel_size: Sequence[float]) -> np.ndarray:
        """Euclidean length of every edge in nm."""
        delta = (self.nodes[self.edges[:, 0]] - self.nodes[self.edges[:, 1]]) * np.asarray(
            voxel_size, dtype=np.float64
        )
        return np.sqrt(np.einsum("ij,ij->i", delta, delta))

    def voxels(self) -> np.ndarray:
        """The voxel (z, y, x) each node lies in (nearest voxel centre), int64."""
        return np.rint(self.nodes).astype(np.int64)

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, voxel_size: Sequence[float], teasar_params: dict | None = None
    ) -> Skeletons:
        """TEASAR skeletons (kimimaro) of every non-zero label of a whole in-memory volume."""
        import kimimaro

        voxel_size = tuple(float(v) for v in voxel_size)
        kwargs = {} if teasar_params is None else {"teasar_params": teasar_params}
        # kimimaro takes the array's axes positionally: anisotropy follows (z, y, x) here,
        # and vertices come back in nm along the same axes
        found = kimimaro.skeletonize(
            np.ascontiguousarray(labels),
            anisotropy=voxel_size,
            dust_threshold=0,
            progress=False,
            parallel=1,
            **kwargs,
        )
        nodes, edges, ids, start = [], [], [], 0
        for label in sorted(found):
            sk = found[label]
            if len(sk.edges) == 0:
                continue
            nodes.append(np.asarray(sk.vertices, np.float64) / np.asarray(voxel_size))
            edges.append(np.asarray(sk.edges, np.int64) + start)
            ids.append(np.full(len(sk.vertices), np.uint64(int(label) % 2**64)))  # a negative id wraps, as in VOI
            start += len(sk.vertices)
        if not nodes:
            return cls(np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.uint64))
        return cls(np.concatenate(nodes), np.concatenate(edges), np.concatenate(ids))

    def save(self, path: str) -> None:
        np.savez_compressed(path, nodes=self.nodes, edges=self.edges, skeleton_ids=self.skeleton_ids)

    @classmethod
    def load(cls, path: str, voxel_size: Sequence[float] | None = None) -> Skeletons:
        """Read either npz format of the module docstring; bad files raise UserError. `voxel_size` (nm, z y x)
        converts the nm nodes of the synth format to voxels; it is needed for that format only."""
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such skeleton file")
        with open_npz(path) as f:
            keys = set(f.files)
            if keys >= set(TABLE_KEYS):
                arrays = [npz_member(path, f, k) for k in TABLE_KEYS]
            elif "ids" in keys:
                if voxel_size is None:
                    raise UserError(f"{path}: skeletons of connectome synth's format ({SYNTH_KEYS}) are in nm; "
                                    "expected a voxel size (z y x nm) to read them with, found none")
                arrays = list(_synth_arrays(path, f, voxel_size))
            else:
                found = sorted(k for k in keys if not _PER_ID.fullmatch(k))
                per_id = len(keys) - len(found)
                shown = f"keys {found}" + (f" and {per_id} nodes_<id>/edges_<id> keys" if per_id else "")
                raise UserError(f"{path}: skeleton file lacks the keys of either format: expected {FORMATS}; "
                                f"found {shown}")
        try:
            return cls(*arrays)
        except (ValueError, TypeError) as e:
            raise UserError(f"{path}: {e}") from None


def _synth_arrays(path: str, f, voxel_size: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nodes in voxels, edges, skeleton ids) of an open synth-format file; one line naming the key that is bad."""
    size = np.asarray([float(v) for v in voxel_size], np.float64)
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise UserError(f"{path}: expected a voxel size of 3 positive values (z y x nm), found {size.tolist()}")
    ids = np.asarray(npz_member(path, f, "ids"))
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise UserError(f"{path}: key 'ids': expected a 1-d array of integer skeleton ids, found dtype {ids.dtype} "
                        f"shape {list(ids.shape)}")
    if ids.size and np.issubdtype(ids.dtype, np.signedinteger) and ids.min() < 0:
        raise UserError(f"{path}: key 'ids': expected ids >= 0, found {int(ids.min())}")
    ids = ids.astype(np.uint64)
    if len(np.unique(ids)) != len(ids):
        raise UserError(f"{path}: key 'ids': expected distinct ids, found {len(ids) - len(np.unique(ids))} repeated")
    missing = [k for i in ids for k in (f"nodes_{i}", f"edges_{i}") if k not in f.files]
    if missing:
        raise UserError(f"{path}: expected {SYNTH_KEYS} for every id in 'ids', found no key "
                        f"{missing[0]!r}" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    nodes, edges, owners, start = [], [], [], 0
    for i in ids:  # one step per skeleton, not per node
        n, e = np.asarray(npz_member(path, f, f"nodes_{i}")), np.asarray(npz_member(path, f, f"edges_{i}"))
        n = n.reshape(0, 3) if n.size == 0 else n
        e = e.reshape(0, 2) if e.size == 0 else e
        if n.ndim != 2 or n.shape[1] != 3 or not np.issubdtype(n.dtype, np.number):
            raise UserError(f"{path}: key 'nodes_{i}': expected (N, 3) numbers (z y x nm), found dtype {n.dtype} "
                            f"shape {list(n.shape)}")
        if e.ndim != 2 or e.shape[1] != 2 or (e.size and not np.issubdtype(e.dtype, np.integer)):
            raise UserError(f"{path}: key 'edges_{i}': expected (E, 2) integer node indices, found dtype {e.dtype} "
                            f"shape {list(e.shape)}")
        if e.size and (e.min() < 0 or e.max() >= len(n)):
            raise UserError(f"{path}: key 'edges_{i}': expected node indices in 0..{len(n) - 1}, found "
                            f"{int(e.min())}..{int(e.max())}")
        nodes.append(n.astype(np.float64) / size)
        edges.append(e.astype(np.int64) + start)
        owners.append(np.full(len(n), i, np.uint64))
        start += len(n)
    if not nodes:
        return np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.uint64)
    return np.concatenate(nodes), np.concatenate(edges), np.concatenate(owners)


class NodeLookup:
    """Reads label values at skeleton nodes block by block, so no volume is ever whole in memory."""

    def __init__(self, skeletons: Skeletons, grid: BlockGrid):
        voxels = skeletons.voxels()
        box = grid.volume
        outside = np.any((voxels < box.offset) | (voxels >= box.end), axis=1)
        if outside.any():
            raise UserError(
                f"skeletons: {int(outside.sum())} of {len(voxels)} nodes lie outside the volume "
                f"{list(box.shape)} (nodes are voxel coordinates z, y, x)"
            )
        gz, gy, gx = grid.grid_shape
        position = (voxels - np.asarray(box.offset)) // np.asarray(grid.block_shape)
        block_of_node = (position[:, 0] * gy + position[:, 1]) * gx + position[:, 2]
        self._order = np.argsort(block_of_node, kind="stable")
        self._starts = np.searchsorted(block_of_node[self._order], np.arange(len(grid) + 1))
        self._voxels = voxels

    def nodes_in(self, block_index: int) -> np.ndarray:
        return self._order[self._starts[block_index] : self._starts[block_index + 1]]

    def values(self, block: Block, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(node indices, values of `data` there); `data` holds the block's write box."""
        nodes = self.nodes_in(block.index)
        local = self._voxels[nodes] - np.asarray(block.write_box.offset)
        return nodes, data[tuple(local.T)]

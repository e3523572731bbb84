"""One block's clefts: thresholded cleft probability cut into 6-connected pieces (fragments), their
statistics (with their voxels on the volume's outer faces: a cleft cut by the volume is smaller), the
fragment voxels on the block's faces (to join pieces across faces in the global step) and the partner
votes of each fragment's voxels."""

from __future__ import annotations

import cc3d
import numpy as np

from connectome.core.geometry import Box
from connectome.core.ids import globalise
from connectome.synapses.interface import interface_sums

FRAGMENTS_FORMAT = 5  # 5: the partner network's columns after the interface sums


def vector_reach(vector_nm: float, voxel_size) -> tuple[int, int, int]:
    """Voxels a partner direction of `vector_nm` can reach along each axis."""
    return tuple(int(np.ceil(vector_nm / float(v))) for v in voxel_size)  # type: ignore[return-value]


def _level(threshold: float) -> np.uint8:
    return np.uint8(min(255, int(np.ceil(threshold * 255.0))))


def label_block(prob: np.ndarray, threshold: float, block_index: int,
                core_threshold: float | None = None) -> np.ndarray:
    """Global fragment ids (uint64) of the voxels whose probability (uint8) reaches `threshold`. With
    `core_threshold`, a fragment is cut into pieces: its 6-connected cores (probability at least
    `core_threshold`, one piece each) and the rest (one piece: the fragment's own id)."""
    low = cc3d.connected_components(prob >= _level(threshold), connectivity=6, out_dtype=np.uint32)
    if core_threshold is None:
        return globalise(low, block_index)
    core = cc3d.connected_components((prob >= _level(core_threshold)) & (low > 0), connectivity=6,
                                     out_dtype=np.uint32)
    n = np.uint32(low.max())
    return globalise(np.where(core > 0, core + n, low), block_index)


def core_pieces(frag: np.ndarray, prob: np.ndarray, ids: np.ndarray, core_threshold: float | None):
    """Per fragment id of `ids` (sorted): whether it is a core piece (label_block) and its parent: the
    rest piece of the same 6-connected fragment (itself for a rest piece; 0 for a core piece of a
    fragment that is all core)."""
    if core_threshold is None or not len(ids):
        return np.zeros(len(ids), bool), ids.copy()
    whole = cc3d.connected_components(frag != 0, connectivity=6, out_dtype=np.uint32)
    is_core = prob >= _level(core_threshold)
    rest_of = np.zeros(int(whole.max()) + 1, np.uint64)
    rest = (frag != 0) & ~is_core
    rest_of[whole[rest]] = frag[rest]
    core = np.isin(ids, frag[(frag != 0) & is_core])
    parent = ids.copy()
    cv = (frag != 0) & is_core
    at = np.searchsorted(ids, frag[cv])
    parent[at] = rest_of[whole[cv]]
    return core, parent


def _faces(frag: np.ndarray, write: Box, volume: Box) -> dict[str, np.ndarray]:
    """Fragment voxels on each inner face: `low_*` on the block's lower faces, `high_*` on its upper
    faces, as global positions (the upper ones moved one voxel across the face) and ids."""
    pos_low: list[np.ndarray] = []
    id_low: list[np.ndarray] = []
    pos_high: list[np.ndarray] = []
    id_high: list[np.ndarray] = []
    off = np.asarray(write.offset)
    for axis in range(3):
        for side in ("low", "high"):
            if side == "low" and write.offset[axis] == volume.offset[axis]:
                continue
            if side == "high" and write.end[axis] == volume.end[axis]:
                continue
            index = 0 if side == "low" else frag.shape[axis] - 1
            layer = np.take(frag, index, axis=axis)
            where = np.argwhere(layer != 0)
            ids = layer[layer != 0]
            pos = np.insert(where, axis, index, axis=1) + off
            if side == "high":
                pos[:, axis] += 1
            (pos_low if side == "low" else pos_high).append(np.c_[pos, np.full(len(pos), axis)])
            (id_low if side == "low" else id_high).append(ids)
    empty_pos, empty_id = np.zeros((0, 4), np.int64), np.zeros(0, np.uint64)
    return {
        "low_pos": np.concatenate(pos_low).astype(np.int64) if pos_low else empty_pos,
        "low_id": np.concatenate(id_low).astype(np.uint64) if id_low else empty_id,
        "high_pos": np.concatenate(pos_high).astype(np.int64) if pos_high else empty_pos,
        "high_id": np.concatenate(id_high).astype(np.uint64) if id_high else empty_id,
    }


def fragment_table(frag: np.ndarray, prob: np.ndarray, vectors: np.ndarray | None, seg: np.ndarray,
                   seg_box: Box, write: Box, volume: Box, vector_nm: float, voxel_size,
                   raw: np.ndarray | None = None, core_threshold: float | None = None) -> dict[str, np.ndarray]:
    """The block's table: per fragment (ids, voxels, probability sum and max, coordinate sums, voxels
    on the volume's outer faces, whether it is a core piece and its parent piece: core_pieces), block
    face voxels, and partner votes per (fragment, post = segment at the voxel, pre = segment where the
    voxel's direction points): voxel count, coordinate sums and probability sum. `frag`, `prob` and
    `vectors` cover the write box, `seg` (and `raw`, when given: the partner classifier's interface
    sums, connectome.synapses.interface) covers `seg_box`; `core_threshold`: label_block's."""
    nz = np.nonzero(frag)
    ids_all = frag[nz]
    ids, inverse = np.unique(ids_all, return_inverse=True)
    inverse = inverse.ravel()
    n = len(ids)
    pos = np.stack(nz, axis=1).astype(np.int64) + np.asarray(write.offset)
    p = prob[nz].astype(np.float64) / 255.0
    max_prob = np.zeros(n)
    np.maximum.at(max_prob, inverse, p)
    table = {
        "ids": ids.astype(np.uint64),
        "voxels": np.bincount(inverse, minlength=n).astype(np.int64),
        "prob_sum": np.bincount(inverse, weights=p, minlength=n),
        "prob_max": max_prob,
        "coord_sum": np.stack([np.bincount(inverse, weights=pos[:, k], minlength=n) for k in range(3)], axis=1)
        if n else np.zeros((0, 3)),
        "edge_voxels": np.bincount(inverse, weights=on_volume_face(pos, volume), minlength=n).astype(np.int64),
        **_faces(frag, write, volume),
    }
    table["core"], table["parent"] = core_pieces(frag, prob, table["ids"], core_threshold)
    post, pre = partners_at(pos, nz, vectors, seg, seg_box, vector_nm, voxel_size)
    vcoord: np.ndarray
    vprob: np.ndarray
    if n:
        votes, vinv = np.unique(np.stack([ids_all, post, pre], axis=1), axis=0, return_inverse=True)
        vinv = vinv.ravel()
        m = len(votes)
        counts = np.bincount(vinv, minlength=m)
        vcoord = np.stack([np.bincount(vinv, weights=pos[:, k], minlength=m) for k in range(3)], axis=1)
        vprob = np.bincount(vinv, weights=p, minlength=m)
    else:
        votes, counts = np.zeros((0, 3), np.uint64), np.zeros(0, np.int64)
        vcoord, vprob = np.zeros((0, 3)), np.zeros(0)
    table.update(vote_fragment=votes[:, 0], vote_post=votes[:, 1], vote_pre=votes[:, 2],
                 vote_count=counts.astype(np.int64), vote_coord_sum=vcoord, vote_prob_sum=vprob)
    if raw is not None:
        table.update(interface_sums(ids_all, post, pos, raw, seg, seg_box.offset, seg_box.end, voxel_size))
    return table


def on_volume_face(pos: np.ndarray, volume: Box) -> np.ndarray:
    """Whether each global position lies on one of the volume's outer faces."""
    lo, hi = np.asarray(volume.offset), np.asarray(volume.end) - 1
    return np.any((pos == lo) | (pos == hi), axis=1) if len(pos) else np.zeros(0, bool)


def partners_at(pos: np.ndarray, nz, vectors: np.ndarray | None, seg: np.ndarray, seg_box: Box, vector_nm: float,
                voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """Per cleft voxel (global positions `pos`, write-box indices `nz`): the segment under it (post)
    and the segment `vector_nm` away along its predicted direction (pre; 0 without directions). The
    direction is normalised: its length says how sure the network is, not how far the partner is."""
    seg_off = np.asarray(seg_box.offset)
    post = seg[tuple((pos - seg_off).T)].astype(np.uint64) if len(pos) else np.zeros(0, np.uint64)
    if vectors is None or not len(pos):
        return post, np.zeros_like(post)
    v = vectors[:, nz[0], nz[1], nz[2]].T
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-3)
    d = v * (vector_nm / np.asarray(voxel_size, float))
    tip = np.clip(np.round(pos + d).astype(np.int64), seg_box.offset, np.asarray(seg_box.end) - 1)
    return post, seg[tuple((tip - seg_off).T)].astype(np.uint64)

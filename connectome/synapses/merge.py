"""The global step of the synapses stage: cleft fragments joined across block faces (a union-find
over the face contacts) into cleft objects; each object split into synapses, one per postsynaptic
segment under at least `min_voxels` of its voxels, the presynaptic one chosen by the partner
classifier among the segments around it (interface.py) - or, without a classifier, one per
(postsynaptic, presynaptic) pair of the direction votes with `min_voxels`; written as the synapse table
and a lookup (fragment -> object, (object, post[, pre]) -> synapse).

An object with two or more large cores (one per density) is one object per core; an object cut by
the volume's faces has a minimum size of its own; a small synapse beside a much larger one is a piece
of its density (satellites). An object with no such pair of two assigned segments is one synapse with
its majority pair (pre or post 0: reported as unassigned, not dropped); a pair with pre == post is an
autapse (reported).
Memory grows with the number of fragments, cleft face voxels and votes, not with the volume.
"""

from __future__ import annotations

import functools
import glob
import os

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from connectome.engine.global_step import GlobalStep
from connectome.io.lookup import lut_path
from connectome.synapses.interface import (
    DISTANCES_NM,
    FEATURES,
    STATS,
    PartnerClassifier,
    candidate_features,
    group_softmax,
    load_classifier,
)
from connectome.synapses.table import SYNAPSES_FILE, write_segmentation_record, write_synapses

_KEYS = ("ids", "voxels", "edge_voxels", "core", "parent", "prob_sum", "prob_max", "coord_sum", "low_pos", "low_id",
         "high_pos", "high_id", "vote_fragment", "vote_post", "vote_pre", "vote_count", "vote_coord_sum",
         "vote_prob_sum")
_IFACE_KEYS = ("iface_fragment", "iface_post", "iface_cand", "iface_stats")


def load_fragment_tables(directory: str) -> dict[str, np.ndarray]:
    """Every block's table in `directory`, concatenated."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _KEYS + _IFACE_KEYS}
    for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
        with np.load(path) as t:
            for k in _KEYS + tuple(k for k in _IFACE_KEYS if k in t.files):
                parts[k].append(t[k])
    out = {}
    for k, v in parts.items():
        if v:
            out[k] = np.concatenate(v)
        elif k == "iface_stats":
            out[k] = np.zeros((0, len(STATS) * len(DISTANCES_NM)))
        else:
            width = 3 if k.endswith("coord_sum") else 4 if k.endswith("_pos") else 0
            out[k] = np.zeros((0, width)) if width else np.zeros(0)
    return out


def face_links(t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of fragment ids that touch across a block face (an upper-face voxel moved across the face
    lands on a lower-face voxel of the next block)."""
    low, high = t["low_pos"].astype(np.int64), t["high_pos"].astype(np.int64)
    if not len(low) or not len(high):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    span = np.maximum(low.max(0), high.max(0)) + 1
    key_low = np.ravel_multi_index(tuple(low.T), tuple(span))
    key_high = np.ravel_multi_index(tuple(high.T), tuple(span))
    order = np.argsort(key_low)
    at = np.minimum(np.searchsorted(key_low[order], key_high), len(order) - 1)
    hit = key_low[order][at] == key_high
    return t["high_id"][hit].astype(np.uint64), t["low_id"][order][at[hit]].astype(np.uint64)


def group_fragments(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over the links (a, b): the component index of each of `ids` (sorted, unique)."""
    n = len(ids)
    ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
    graph = coo_matrix((np.ones(len(ia)), (ia, ib)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cleft_objects(t: dict[str, np.ndarray], ids: np.ndarray, core_min_voxels: int | None = None):
    """Per fragment of `ids` (sorted): its cleft object (fragments joined across block faces and to
    their parent pieces), or, in an object with two or more cores of at least `core_min_voxels`
    voxels (core pieces joined across faces), its core: one object per density; the rest of such an
    object belongs to no object (index n, one past the last). Returns (index per fragment, n, whether
    each object is a core of a split object)."""
    if not len(ids):
        return np.zeros(0, np.int64), 0, np.zeros(0, bool)
    a, b = face_links(t)
    order = np.argsort(t["ids"].astype(np.uint64))
    core, parent = t["core"].astype(bool)[order], t["parent"].astype(np.uint64)[order]
    has_parent = (parent != 0) & (parent != ids)
    obj = group_fragments(ids, np.r_[a, ids[has_parent]], np.r_[b, parent[has_parent]])
    n = int(obj.max()) + 1
    if core_min_voxels is None or not core.any():
        return obj, n, np.zeros(n, bool)
    ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
    both = core[ia] & core[ib]
    cgroup = group_fragments(ids, a[both], b[both])
    csize = np.bincount(cgroup, weights=t["voxels"][order])
    big = core & (csize[cgroup] >= core_min_voxels)
    pairs = np.unique(np.stack([obj[big], cgroup[big]], 1), axis=0)
    split = np.bincount(pairs[:, 0], minlength=n) >= 2
    whole = ~split[obj]
    keep_obj, obj_index = np.unique(obj[whole], return_inverse=True)
    keep_core, core_index = np.unique(cgroup[~whole & big], return_inverse=True)
    out = np.full(len(ids), len(keep_obj) + len(keep_core), np.int64)
    out[whole] = obj_index.ravel()
    out[~whole & big] = len(keep_obj) + core_index.ravel()
    m = len(keep_obj) + len(keep_core)
    return out, m, np.arange(m) >= len(keep_obj)


def synapse_rows(t: dict[str, np.ndarray], min_voxels: int, voxel_size, partners: bool, split: bool = False,
                 classifier: PartnerClassifier | None = None, edge_min_voxels: int | None = None,
                 core_min_voxels: int | None = None, satellite_nm: float | None = None,
                 satellite_ratio: float = 0.2, vote_split_voxels: int | None = None):
    """The synapse table's columns, and the lookup: (fragment ids, their object), and per synapse its
    (object, post, pre). Without `split`, one synapse per cleft object of at least `min_voxels`, its
    partners the majority of its voxels' votes; with it, one per well-supported (post, pre) pair; with
    a `classifier` too, one per well-supported post, its pre the classifier's best candidate, and with
    `vote_split_voxels` also one per other (post, pre) pair of the votes with at least that many voxels
    (several boutons on one density of the post cell, as on a soma; `vote_splits`). An object
    that touches the volume's outer faces (cut by them) needs `edge_min_voxels` (default: `min_voxels`).
    With `core_min_voxels`, an object of several such cores (cleft_objects) is one object per core,
    each needing `core_min_voxels` only. With `satellite_nm`, a synapse within that distance of one
    over 1 / `satellite_ratio` times its size is a piece of that one's density (satellites)."""
    split = split and partners
    by_post = split and classifier is not None
    ids = np.sort(t["ids"].astype(np.uint64))
    obj, n_obj, is_core = cleft_objects(t, ids, core_min_voxels)
    on_edge = np.zeros(n_obj + 1, bool)
    if len(ids):
        on_edge = np.bincount(obj[np.searchsorted(ids, t["ids"].astype(np.uint64))], weights=t["edge_voxels"],
                              minlength=n_obj + 1) > 0
    vo = obj[np.searchsorted(ids, t["vote_fragment"].astype(np.uint64))] if len(ids) else np.zeros(0, np.int64)
    if (vo == n_obj).any():  # the rest of a split object: in no synapse
        t = {**t, **{k: t[k][vo < n_obj] for k in _KEYS if k.startswith("vote_")}}
        vo = vo[vo < n_obj]
    post_votes = t["vote_post"].astype(np.uint64)
    pre_votes = t["vote_pre"].astype(np.uint64) if partners else np.zeros(len(post_votes), np.uint64)
    post = post_votes if split else np.zeros(len(post_votes), np.uint64)  # else grouped by object alone
    pre = pre_votes if split and not by_post else np.zeros(len(post_votes), np.uint64)
    keys, inv = np.unique(np.stack([vo.astype(np.uint64), post, pre], 1), axis=0, return_inverse=True) \
        if len(vo) else (np.zeros((0, 3), np.uint64), np.zeros(0, np.int64))
    inv = inv.ravel()
    k = len(keys)
    count = np.bincount(inv, weights=t["vote_count"], minlength=k)
    coord = np.stack([np.bincount(inv, weights=t["vote_coord_sum"][:, j], minlength=k) for j in range(3)], 1) \
        if k else np.zeros((0, 3))
    prob = np.bincount(inv, weights=t["vote_prob_sum"], minlength=k)
    kobj = keys[:, 0].astype(np.int64)
    obj_total = np.bincount(kobj, weights=count, minlength=n_obj)
    share = count / np.maximum(obj_total[kobj], 1)
    if not split:  # the partners: the object's majority votes
        maj_post, post_w, total = majority(vo, post_votes, t["vote_count"], n_obj)
        maj_pre, pre_w, _ = majority(vo, pre_votes, t["vote_count"], n_obj)
        keys[:, 1], keys[:, 2] = maj_post[kobj], maj_pre[kobj]
        pre_share = pre_w[kobj] / np.maximum(total[kobj], 1) if partners else 1.0
        share = post_w[kobj] / np.maximum(total[kobj], 1) * pre_share
    assigned = (keys[:, 1] != 0) & ((keys[:, 2] != 0) | by_post) if split else np.zeros(k, bool)
    row_min = np.where(on_edge[kobj], min_voxels if edge_min_voxels is None else edge_min_voxels, min_voxels)
    if core_min_voxels is not None:
        row_min = np.where(is_core[kobj], np.minimum(row_min, core_min_voxels), row_min)
    chosen = (count >= row_min) & assigned
    has = np.bincount(kobj[chosen], minlength=n_obj) > 0
    # an object without a well-supported assigned pair: one synapse with its largest pair
    order = np.lexsort((-count, kobj))
    first = order[np.r_[True, kobj[order][1:] != kobj[order][:-1]]] if k else np.zeros(0, np.int64)
    fallback = first[~has[kobj[first]] & (obj_total[kobj[first]] >= row_min[first])]
    chosen[fallback] = True
    sel = np.flatnonzero(chosen)
    size = np.where(np.isin(sel, fallback), obj_total[kobj[sel]], count[sel])  # a fallback: the whole object
    obj_coord = np.stack([np.bincount(kobj, weights=coord[:, j], minlength=n_obj) for j in range(3)], 1)
    is_fb = np.isin(sel, fallback)
    centre = np.where(is_fb[:, None], obj_coord[kobj[sel]] / np.maximum(obj_total[kobj[sel]], 1)[:, None],
                      coord[sel] / np.maximum(count[sel], 1)[:, None])
    loc = np.round(centre).astype(np.int64)
    alias = np.zeros((0, 3), np.int64)
    if by_post:
        assert classifier is not None
        # which groups are synapses (spills across the membrane, vote splits) follows the linear ranking; the
        # partner network, which learned to rank presynaptic boutons only, then names each synapse's pre
        (keys[sel, 2], share[sel]), (network_pre, network_share) = interface_partners(
            t, ids, obj, vo, kobj[sel], keys[sel, 1], count[sel], pre_votes, (classifier.linear(), classifier))
        keep, into = _mirrors(kobj[sel], keys[sel, 1], keys[sel, 2], size)
        alias = np.stack([kobj[sel][~keep], keys[sel, 1][~keep].astype(np.int64), into[~keep]], 1)
        sel, size, loc = sel[keep], size[keep], loc[keep]
        network_pre, network_share = network_pre[keep], network_share[keep]
        alias[:, 2] = np.cumsum(keep)[alias[:, 2]] - 1  # the kept synapse's index after the cut
    extra = np.zeros(len(sel), bool)
    if by_post and vote_split_voxels is not None and len(sel):
        keys, count, prob, share, sel, size, loc, extra = vote_splits(
            t, vo, pre_votes, keys, count, prob, share, sel, size, loc, kobj, vote_split_voxels)
        kobj = keys[:, 0].astype(np.int64)
    if by_post and classifier is not None and classifier.network and len(sel):
        _network_partners(keys, share, sel, extra, network_pre, network_share)
    if satellite_nm:
        keep, into = satellites(loc, size, voxel_size, satellite_nm, satellite_ratio)
        keep[extra], into[extra] = True, np.flatnonzero(extra)  # a split-off bouton is no piece of its group
        if by_post:  # a satellite's voxels, and those of its other side, join the larger synapse
            alias[:, 2] = into[alias[:, 2]]
            alias = np.concatenate([alias, np.stack([kobj[sel][~keep], keys[sel, 1][~keep].astype(np.int64),
                                                     into[~keep]], 1)])
            alias[:, 2] = np.cumsum(keep)[alias[:, 2]] - 1
        sel, size, loc, extra = sel[keep], size[keep], loc[keep], extra[keep]
    order = np.lexsort((keys[sel, 2], keys[sel, 1], loc[:, 2], loc[:, 1], loc[:, 0])) if len(sel) else sel
    sel, size, loc, extra = sel[order], size[order], loc[order], extra[order]
    if len(alias):
        alias[:, 2] = np.argsort(order)[alias[:, 2]] + 1  # synapse ids
    rows = {
        "id": np.arange(1, len(sel) + 1), "z": loc[:, 0], "y": loc[:, 1], "x": loc[:, 2],
        "pre": keys[sel, 2], "post": keys[sel, 1], "score": prob[sel] / np.maximum(count[sel], 1),
        "partner_score": share[sel],
        "size_voxels": size.astype(np.int64), "size_nm3": size * float(np.prod(voxel_size)),
        "autapse": (keys[sel, 2] == keys[sel, 1]) & (keys[sel, 1] != 0),
    }
    lookup = {"fragments": ids, "objects": obj.astype(np.int64), "syn_object": kobj[sel],
              "syn_post": keys[sel, 1], "syn_pre": keys[sel, 2], "syn_fallback": np.isin(sel, fallback),
              "syn_vote_split": extra,
              "by_post": np.array(by_post), "alias_object": alias[:, 0], "alias_post": alias[:, 1].astype(np.uint64),
              "alias_synapse": alias[:, 2]}
    return rows, lookup


def _network_partners(keys: np.ndarray, share: np.ndarray, sel: np.ndarray, extra: np.ndarray,
                      network_pre: np.ndarray, network_share: np.ndarray) -> None:
    """Each group's pre (the first rows of `sel`, before the vote splits `extra`) becomes the one the
    classifier with the partner network ranks first, unless that one is already a split-off synapse
    of the same group (then the group keeps the linear ranking's pre)."""
    base = sel[:len(network_pre)]
    wanted = np.stack([keys[base, 0], keys[base, 1], network_pre.astype(np.uint64)], 1)
    clash = find_rows(np.unique(keys[sel[extra]], axis=0), wanted) >= 0 if extra.any() else np.zeros(len(base), bool)
    keys[base[~clash], 2] = network_pre[~clash]
    share[base[~clash]] = network_share[~clash]


def vote_splits(t: dict[str, np.ndarray], vo: np.ndarray, pre_votes: np.ndarray, keys: np.ndarray, count: np.ndarray,
                prob: np.ndarray, share: np.ndarray, sel: np.ndarray, size: np.ndarray, loc: np.ndarray,
                kobj: np.ndarray, min_voxels: int):
    """Extra synapses of the chosen groups (rows `sel` of `keys`: (object, post, classifier's pre)): every
    other (object, post, pre) of the direction votes with at least `min_voxels` voxels, pre neither 0
    nor the post, becomes a synapse of its own at its voters' centroid; its voxels leave the group's
    synapse, whose size and centroid become those of the rest. Returns the extended arrays and which
    synapses are such splits."""
    vkeys, vinv = np.unique(np.stack([vo.astype(np.uint64), t["vote_post"].astype(np.uint64), pre_votes], 1),
                            axis=0, return_inverse=True)
    vinv = vinv.ravel()
    vcount = np.bincount(vinv, weights=t["vote_count"], minlength=len(vkeys))
    vcoord = np.stack([np.bincount(vinv, weights=t["vote_coord_sum"][:, j], minlength=len(vkeys))
                       for j in range(3)], 1)
    vprob = np.bincount(vinv, weights=t["vote_prob_sum"], minlength=len(vkeys))
    groups = np.stack([kobj[sel].astype(np.uint64), keys[sel, 1]], 1)
    g = find_rows(groups, vkeys[:, :2])
    top = np.where(g >= 0, keys[sel[np.maximum(g, 0)], 2], 0)
    pick = np.flatnonzero((g >= 0) & (vcount >= min_voxels) & (vkeys[:, 2] != 0) & (vkeys[:, 2] != vkeys[:, 1])
                          & (vkeys[:, 2] != top))
    n_sel = len(sel)
    if not len(pick):
        return keys, count, prob, share, sel, size, loc, np.zeros(n_sel, bool)
    gp = g[pick]
    # the group keeps the rest: its centroid from the sums of all its votes less the split-off ones
    gsum = np.zeros((n_sel, 3))
    np.add.at(gsum, g[g >= 0], vcoord[g >= 0])
    gcount = np.bincount(g[g >= 0], weights=vcount[g >= 0], minlength=n_sel)
    np.subtract.at(gsum, gp, vcoord[pick])
    gcount_rest = gcount - np.bincount(gp, weights=vcount[pick], minlength=n_sel)
    moved = np.bincount(gp, minlength=n_sel) > 0
    size = size.astype(np.float64).copy()
    size[moved] = np.maximum(size[moved] - np.bincount(gp, weights=vcount[pick], minlength=n_sel)[moved], 0)
    loc = loc.copy()
    rest = moved & (gcount_rest > 0)
    loc[rest] = np.round(gsum[rest] / gcount_rest[rest][:, None]).astype(np.int64)
    first = len(keys)
    keys = np.concatenate([keys, vkeys[pick]])
    count = np.concatenate([count, vcount[pick]])
    prob = np.concatenate([prob, vprob[pick]])
    share = np.concatenate([share, vcount[pick] / np.maximum(gcount[gp], 1)])
    sel = np.concatenate([sel, first + np.arange(len(pick))])
    size = np.concatenate([size, vcount[pick]])
    loc = np.concatenate([loc, np.round(vcoord[pick] / vcount[pick][:, None]).astype(np.int64)])
    extra = np.r_[np.zeros(n_sel, bool), np.ones(len(pick), bool)]
    return keys, count, prob, share, sel, size, loc, extra


def satellites(loc: np.ndarray, size: np.ndarray, voxel_size, radius_nm: float,
               ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Synapses (voxel positions `loc`, sizes) within `radius_nm` of a synapse over 1 / `ratio` times
    their size: pieces of its density (a cleft object cut off the larger one, or the density's
    other side). Returns which to keep and, for the others, the index of the largest such synapse."""
    n = len(loc)
    keep, into = np.ones(n, bool), np.arange(n)
    if n < 2:
        return keep, into
    from scipy.spatial import cKDTree

    pairs = cKDTree(loc * np.asarray(voxel_size, float)).query_pairs(radius_nm, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    small = np.where(size[a] < size[b], a, b)
    big = a + b - small
    hit = size[small] < ratio * size[big]
    small, big = small[hit], big[hit]
    order = np.lexsort((big, -size[big], small))  # per satellite: its largest neighbour first
    first = order[np.r_[True, small[order][1:] != small[order][:-1]]] if len(order) else order
    keep[small[first]], into[small[first]] = False, big[first]
    while not np.array_equal(into[into], into):  # a neighbour that is itself a satellite: its owner
        into = into[into]
    return keep, into


def _mirrors(obj: np.ndarray, post: np.ndarray, pre: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cleft that spills across the membrane makes a second group in the presynaptic segment: a
    group whose chosen pre is the post of a larger group of the same object is that group's other
    side. Returns which groups to keep and, for the others, the index of the group they belong to."""
    n = len(obj)
    keep, into = np.ones(n, bool), np.arange(n)
    if not n:
        return keep, into
    j = find_rows(np.stack([obj.astype(np.uint64), post.astype(np.uint64)], 1),
                  np.stack([obj.astype(np.uint64), pre.astype(np.uint64)], 1))
    rank = np.lexsort((np.arange(n), -size))  # larger first, then earlier
    place = np.empty(n, np.int64)
    place[rank] = np.arange(n)
    mirror = (j >= 0) & (j != np.arange(n))
    mirror[mirror] = place[j[mirror]] < place[mirror]
    keep[mirror], into[mirror] = False, j[mirror]
    # a group that mirrors a group which is itself a mirror joins that one's owner
    for _ in range(3):
        into = np.where(keep[into], into, into[into])
    return keep, into


def find_rows(table: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row index in `table` (unique rows) of each row of `query`; -1 where absent."""
    if not len(table) or not len(query):
        return np.full(len(query), -1, np.int64)
    both = np.concatenate([table, query]).astype(np.uint64)
    _, inv = np.unique(both, axis=0, return_inverse=True)
    inv = inv.ravel()
    at = np.full(int(inv.max()) + 1, -1, np.int64)
    at[inv[:len(table)]] = np.arange(len(table))
    return at[inv[len(table):]]


def group_candidates(t: dict[str, np.ndarray], ids: np.ndarray, obj: np.ndarray, vo: np.ndarray,
                     groups: np.ndarray, g_count: np.ndarray, pre_votes: np.ndarray):
    """The presynaptic candidates of groups (rows (cleft object, postsynaptic segment)): their group
    index, segment id and features (interface.FEATURES); and the direction votes as (object, post,
    pre) rows with their voxel counts."""
    vkeys, vinv = np.unique(np.stack([vo.astype(np.uint64), t["vote_post"].astype(np.uint64), pre_votes], 1),
                            axis=0, return_inverse=True)
    vcount = np.bincount(vinv.ravel(), weights=t["vote_count"], minlength=len(vkeys))
    gi, cand, feats = np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros((0, len(FEATURES)))
    if len(t["iface_fragment"]) and len(ids) and len(groups):
        io = obj[np.searchsorted(ids, t["iface_fragment"].astype(np.uint64))].astype(np.uint64)
        ikeys, iinv = np.unique(np.stack([io, t["iface_post"].astype(np.uint64), t["iface_cand"].astype(np.uint64)],
                                         1), axis=0, return_inverse=True)
        stats = np.zeros((len(ikeys), t["iface_stats"].shape[1]))
        np.add.at(stats, iinv.ravel(), t["iface_stats"])
        gi = find_rows(groups, ikeys[:, :2])
        keep = gi >= 0
        ikeys, stats, gi = ikeys[keep], stats[keep], gi[keep]
        vi = find_rows(vkeys, ikeys)
        votes = np.where(vi >= 0, vcount[np.maximum(vi, 0)], 0.0)
        cand, feats = ikeys[:, 2], candidate_features(g_count[gi], stats, votes)
    return gi, cand, feats, vkeys, vcount


def interface_partners(t: dict[str, np.ndarray], ids: np.ndarray, obj: np.ndarray, vo: np.ndarray,
                       g_obj: np.ndarray, g_post: np.ndarray, g_count: np.ndarray, pre_votes: np.ndarray,
                       classifiers: tuple[PartnerClassifier, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per classifier, per group (cleft object, postsynaptic segment): the presynaptic segment the
    classifier ranks first among the group's candidates (found once for all classifiers) and its
    probability; a group without candidates keeps its majority direction vote (an autapse when that
    is its own segment) and the vote's share."""
    n = len(g_obj)
    if not n:
        return [(np.zeros(0, np.uint64), np.zeros(0)) for _ in classifiers]
    groups = np.stack([g_obj.astype(np.uint64), g_post.astype(np.uint64)], 1)
    gi, cand, feats, vkeys, vcount = group_candidates(t, ids, obj, vo, groups, g_count, pre_votes)
    none = np.ones(n, bool)
    none[gi] = False
    if none.any():  # no candidate: the majority vote
        vg = find_rows(groups, vkeys[:, :2])
        hit = vg >= 0
        best, best_w, total = majority(vg[hit], vkeys[hit, 2], vcount[hit], n)
    out = []
    for classifier in classifiers:
        pre, prob = np.zeros(n, np.uint64), np.zeros(n)
        if len(gi):
            p = group_softmax(gi, classifier.scores(feats), n)
            order = np.lexsort((cand, -p, gi))
            first = order[np.r_[True, gi[order][1:] != gi[order][:-1]]]
            pre[gi[first]], prob[gi[first]] = cand[first], p[first]
        if none.any():
            pre[none] = best[none]
            prob[none] = best_w[none] / np.maximum(total[none], 1)
        out.append((pre, prob))
    return out


def majority(group: np.ndarray, value: np.ndarray, weight: np.ndarray, n: int):
    """Per group: the value of the largest total weight (ties: the smallest value), that weight, and
    the group's total weight."""
    best = np.zeros(n, np.uint64)
    best_w = np.zeros(n)
    if not len(group):
        return best, best_w, best_w.copy()
    keys, inv = np.unique(np.stack([group.astype(np.uint64), value], axis=1), axis=0, return_inverse=True)
    total = np.bincount(inv.ravel(), weights=weight, minlength=len(keys))
    order = np.lexsort((keys[:, 1], -total, keys[:, 0]))
    first = order[np.r_[True, keys[order, 0][1:] != keys[order, 0][:-1]]]
    best[keys[first, 0].astype(np.int64)] = keys[first, 1]
    best_w[keys[first, 0].astype(np.int64)] = total[first]
    return best, best_w, np.bincount(group, weights=weight, minlength=n)


def label_voxels(lookup: dict[str, np.ndarray], frag: np.ndarray, post: np.ndarray, pre: np.ndarray,
                 partners: bool) -> np.ndarray:
    """Synapse id (0: none) of cleft voxels with fragment ids `frag` and their partner votes: the synapse
    of their (object, post, pre), or the one synapse of an object reported by its majority pair."""
    out = np.zeros(len(frag), np.uint64)
    if not len(frag) or not len(lookup["fragments"]):
        return out
    keys = lookup["fragments"]
    at = np.minimum(np.searchsorted(keys, frag), len(keys) - 1)
    if not np.array_equal(keys[at], frag):
        raise RuntimeError("cleft fragments missing from the synapse lookup; re-run the cleft_fragments stage")
    obj = lookup["objects"][at]
    syn_id = np.arange(1, len(lookup["syn_object"]) + 1, dtype=np.uint64)
    single = np.zeros(int(lookup["objects"].max()) + 1, np.uint64)
    fb = lookup["syn_fallback"].astype(bool)
    single[lookup["syn_object"][fb]] = syn_id[fb]
    out = single[obj]
    exact = ~fb
    if exact.any():
        by_post = bool(lookup.get("by_post", False))  # synapses are (object, post); pre from the classifier
        split_off = lookup["syn_vote_split"].astype(bool) if "syn_vote_split" in lookup else np.zeros(len(fb), bool)
        syn_pre = np.zeros_like(lookup["syn_pre"]) if by_post else lookup["syn_pre"]
        group = exact & ~split_off
        table = {(int(o), int(q), int(p)): int(s) for o, q, p, s in zip(
            lookup["syn_object"][group], lookup["syn_post"][group], syn_pre[group], syn_id[group])}
        for o, q, s in zip(lookup.get("alias_object", ()), lookup.get("alias_post", ()),
                           lookup.get("alias_synapse", ())):  # the other side of a cleft: its synapse
            table[(int(o), int(q), 0)] = int(s)
        q = post if partners else np.zeros_like(post)
        r = pre if partners and not by_post else np.zeros_like(pre)
        triples, inv = np.unique(np.stack([obj.astype(np.uint64), q, r], 1), axis=0, return_inverse=True)
        found = np.array([table.get((int(o), int(a), int(b)), 0) for o, a, b in triples], np.uint64)
        hit = found[inv.ravel()]
        out = np.where(hit != 0, hit, out)
        if split_off.any() and partners:  # voxels voting for a split-off bouton: its synapse
            own = {(int(o), int(q), int(p)): int(s) for o, q, p, s in zip(
                lookup["syn_object"][split_off], lookup["syn_post"][split_off], lookup["syn_pre"][split_off],
                syn_id[split_off])}
            triples, inv = np.unique(np.stack([obj.astype(np.uint64), post, pre], 1), axis=0, return_inverse=True)
            found = np.array([own.get((int(o), int(a), int(b)), 0) for o, a, b in triples], np.uint64)
            hit = found[inv.ravel()]
            out = np.where(hit != 0, hit, out)
    return out


class SynapseStep(GlobalStep):
    """Every block's cleft fragments -> the synapse table and the synapse lookup."""

    name = "synapse_merge"

    def __init__(self, tables_dir: str, out_dir: str, min_voxels: int, voxel_size, partners: bool,
                 split: bool = False, classifier: str | None = None, edge_min_voxels: int | None = None,
                 core_min_voxels: int | None = None, satellite_nm: float | None = None,
                 satellite_ratio: float = 0.2, vote_split_voxels: int | None = None, segmentation: str | None = None):
        self.tables_dir = tables_dir
        self.segmentation = segmentation  # recorded beside the table (not in the fingerprint)
        self.out_dir = out_dir
        self.min_voxels = int(min_voxels)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.partners = bool(partners)
        self.split = bool(split)
        self.classifier = classifier
        self.edge_min_voxels = None if edge_min_voxels is None else int(edge_min_voxels)
        self.core_min_voxels = None if core_min_voxels is None else int(core_min_voxels)
        self.satellite_nm = None if satellite_nm is None else float(satellite_nm)
        self.satellite_ratio = float(satellite_ratio)
        self.vote_split_voxels = None if vote_split_voxels is None else int(vote_split_voxels)

    @property
    def params(self) -> dict:
        params = {"min_voxels": self.min_voxels, "voxel_size": list(self.voxel_size), "partners": self.partners,
                  "split": self.split}
        if self.edge_min_voxels is not None:
            params["edge_min_voxels"] = self.edge_min_voxels
        if self.core_min_voxels is not None:
            params["core_min_voxels"] = self.core_min_voxels
        if self.satellite_nm is not None:
            params["satellites"] = [self.satellite_nm, self.satellite_ratio]
        if self.vote_split_voxels is not None and self.split and self.classifier:
            params["vote_split_voxels"] = self.vote_split_voxels
        if self.classifier:
            c = load_classifier(self.classifier)
            params["classifier"] = {"name": c.name, "weights": c.weights.round(8).tolist(),
                                    **({"network": [c.network, c.network_weight]} if c.network else {})}
        return params

    @property
    def lut(self) -> str:
        return lut_path(self.tables_dir, self.params, prefix="synapse-lut")

    @property
    def table(self) -> str:
        return os.path.join(self.out_dir, SYNAPSES_FILE)

    def fingerprint(self) -> dict:
        return {"step": self.name, "params": self.params, "tables": self.tables_dir,
                "lut": os.path.basename(self.lut), "table": self.table}

    def run(self) -> dict:
        t = load_fragment_tables(self.tables_dir)
        classifier = load_classifier(self.classifier) if self.classifier else None
        rows, lookup = synapse_rows(t, self.min_voxels, self.voxel_size, self.partners, self.split, classifier,
                                    self.edge_min_voxels, self.core_min_voxels, self.satellite_nm,
                                    self.satellite_ratio, self.vote_split_voxels)
        tmp = f"{self.lut}.tmp{os.getpid()}.npz"
        np.savez(tmp, **lookup)
        os.replace(tmp, self.lut)
        write_synapses(self.table, rows)
        if self.segmentation is not None:
            write_segmentation_record(self.out_dir, self.segmentation)
        return {"fragments": int(len(lookup["fragments"])), "synapses": int(len(rows["id"])),
                "autapses": int(rows["autapse"].sum()),
                "unassigned": int(((rows["pre"] == 0) | (rows["post"] == 0)).sum())}


def load_lookup(path: str) -> dict[str, np.ndarray]:
    """The synapse lookup, cached per worker while the file is unchanged."""
    return _load_lookup(path, os.path.getmtime(path))


@functools.lru_cache(maxsize=2)
def _load_lookup(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as t:
        return {k: t[k] for k in t.files}

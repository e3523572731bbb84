"""The top of the merge tree as rounds of tasks per super-block, so that no task grows with the volume.

The tree (`merge_tree`) decides inside each super-block what it can alone and passes up the
segments frozen at its faces; a tree level's task holds its children's faces, so the top task
grows with the volume's middle planes. Above level `top_level`, the segments still frozen there
are merged instead in rounds of tasks, one per level-`top_level` super-block (a *shard*); a
segment is owned by the shard of its name (its least fragment id), which never changes shard,
since a merge names a group by the least of its names.

Each shard keeps the edges of its segments, pooled per segment pair (both directions of an edge
are kept, one by each end's shard). A round, each phase one task per shard that was sent edges:

- `local`: pool the rows received; the tree's partial merge (`merge_tree.partial_merge`) of the
  shard's own segments, whose edges are all here, every other segment frozen; the renames sent to
  the shards of the merged segments' neighbours;
- `propose`: with every name now current, each segment's least edge in the strict order (score,
  contact count, -hi, -lo) of `merge_regions` (a watershed link, a piece of one basin that a face
  cut, comes before every edge); a segment whose least edge scores at or above the threshold is
  final (a pooled edge never scores below its least part) and its rows are dropped; each other
  segment proposes its least edge to its partner's shard (with its number of neighbours) and, when
  the partner is in another shard, offers that shard its rows;
- `decide`: every segment is decided by exactly one shard: its own when its least edge stays in
  the shard or when it wins a mutual least edge (more neighbours, then the lesser name: a hub stays
  home), else its partner's. A shard runs the partial merge over the segments it decides (its own
  rows and the offered ones), every other segment frozen, and sends each rename to the renamed
  segment's shard and to the shards of its group's neighbours;
- `move`: each shard renames its rows, and sends them to the shard of their segment's new name.

Why this is the serial merge's result: the tree's argument (an edge that is the least at both its
segments is merged by the serial merge, with the same pooled statistics, whatever merges
elsewhere; an edge seen only in part underestimates its key, which can only freeze a segment)
holds inside each partial merge, because the segments it decides have all their edges there with
exact statistics; the shards decide disjoint sets of segments, and a merge elsewhere only pools
the edges at its own segments into edges with larger keys. A watershed link is an edge below
everything, so its pieces join before anything merges with them. Each segment's least edge is
chosen only after the round's local renames reached every shard (choosing it on a neighbour's
stale piece would see part of a contact as a whole edge).

Rounds end when no segment proposes. Then, backwards from the last round, each shard hands the
final name of every segment that merged into one of its own back to the merged segment's shard,
and writes the tree's `down` result of its super-block.

Memory: a task holds one shard's segments and their edges (the segments of its super-block frozen at
its faces, and what merged into them) and the messages addressed to it, whatever the volume (a
segment's edges are held whole, by the shard of its name). Every task writes its messages, then its
marker; a killed round resumes with the tasks that have no marker (messages of a killed task are
written again, the same); what a round passes between its phases is deleted once it is done.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass

import numpy as np

from connectome.affinity.agglomeration import score_function
from connectome.affinity.tree_layout import TreeLayout, owner

PHASES = ("bridge1", "bridge2", "local", "propose", "decide", "move", "resolve", "collect")


@dataclass(frozen=True)
class MergeRounds:
    """The rounds above tree level `level`: their files under `work`."""

    work: str
    layout: TreeLayout
    level: int
    threshold: float
    scoring: str = "mean"
    quantile: float = 0.5

    @property
    def shards(self) -> int:
        return self.layout.count(self.level)

    def shard_of(self, names: np.ndarray) -> np.ndarray:
        """The shard (level-`level` super-block) of fragment ids or segment names."""
        return self.layout.super_block(owner(names), self.level)

    # -- files: messages to a shard, a shard's state, a task's marker

    def _path(self, kind: str, r: int, *parts: object) -> str:
        return os.path.join(self.work, kind, str(r), *(str(p) for p in parts))

    def _write(self, path: str, **arrays: np.ndarray) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)

    def _read(self, path: str) -> dict[str, np.ndarray]:
        with np.load(path) as t:
            return {k: t[k] for k in t.files}

    def _send(self, kind: str, r: int, tag: str, src: int, dest: np.ndarray, **arrays: np.ndarray) -> None:
        """Rows of `arrays` to the shards `dest` (one file per shard that gets any)."""
        if len(dest) == 0:
            return
        order = np.argsort(dest, kind="stable")
        dest = dest[order]
        cuts = np.flatnonzero(np.diff(dest)) + 1
        for part in np.split(np.arange(len(dest)), cuts):
            to = int(dest[part[0]])
            self._write(self._path(kind, r, to, f"{tag}-{src}.npz"), **{k: a[order][part] for k, a in arrays.items()})

    def _received(self, kind: str, r: int, shard: int, keys: tuple[str, ...], widths: dict[str, int]) -> dict:
        """Every message of `kind` addressed to `shard` in round `r`, concatenated (in file-name order)."""
        files = sorted(glob.glob(os.path.join(self._path(kind, r, shard), "*.npz")))
        parts = [self._read(f) for f in files]
        out = {}
        for k in keys:
            if parts:
                out[k] = np.concatenate([p[k] for p in parts])
            else:
                out[k] = np.zeros((0, widths[k]) if k in widths else 0, np.float64 if k in widths else np.uint64)
        return out

    def busy(self, r: int) -> list[int]:
        """Shards that were sent edges for round `r`: only they can hold a segment that proposes, is
        proposed to, or is renamed. Read from the round's rows, or, once the round is done and its
        rows deleted, from its `propose` markers (a resumed run walks the finished rounds again)."""
        shards: set[int] = set()
        for path in (self._path("rows", r), self._path("done", r, "propose")):
            if os.path.isdir(path):
                shards.update(int(name.split(".")[0]) for name in os.listdir(path) if not name.endswith(".tmp"))
        return sorted(shards)

    def marker(self, phase: str, r: int, shard: int) -> str:
        return self._path("done", r, phase, f"{shard}.npz")

    def done(self, phase: str, r: int, shard: int) -> bool:
        return os.path.exists(self.marker(phase, r, shard))

    TRANSIENT = ("bridge", "rows", "pooled", "local-rename", "propose", "offer", "adj", "rename")

    def forget(self, r: int) -> None:
        """Delete what round `r` passed between its phases (once its last phase is done everywhere):
        what the final names need (`local`, `absorb`, markers) stays, so disk use does not grow
        with the rounds."""
        for kind in self.TRANSIENT:
            shutil.rmtree(self._path(kind, r), ignore_errors=True)

    def mark(self, phase: str, r: int, shard: int, summary: dict) -> None:
        """The task's marker, with its summary: written after everything else it writes."""
        self._write(self.marker(phase, r, shard), **{k: np.array(int(v)) for k, v in summary.items()})

    def summary(self, phase: str, r: int, shard: int) -> dict:
        return {k: int(v) for k, v in self._read(self.marker(phase, r, shard)).items()}

    # -- scores

    def _keys(self, a: np.ndarray, b: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, ...]:
        """(score, contact, ~hi, ~lo) of each row, least first in lexicographic order; links score -inf."""
        linked = stats[:, -1] > 0
        body = stats[:, :-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(linked, -np.inf, score_function(self.scoring, self.quantile)(body)) if len(a) else \
                np.zeros(0)
        contact = body[:, 1] if self.scoring == "mean" else body.sum(axis=1)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return score, contact, ~hi, ~lo

    # -- the bridge: the level's crossing fragment edges as segment edges

    def bridge1(self, up: dict[str, np.ndarray], shard: int) -> dict:
        """Rows among this shard's frozen segments; each crossing edge (the copy its stored block
        gave) sent to the other side's shard with this side's segment."""
        width = up["es"].shape[1] + 1
        es = np.concatenate([up["es"], np.zeros((len(up["es"]), 1))], axis=1)
        a, b = np.concatenate([up["eu"], up["ev"]]), np.concatenate([up["ev"], up["eu"]])
        self._send("rows", 0, "b1", shard, np.full(len(a), shard), a=a, b=b, stats=np.concatenate([es, es]))
        keys, values = up["face_keys"], up["face_values"]
        sides: dict[str, list[np.ndarray]] = {"x": [], "f": [], "stats": []}
        for u, v, stats, own, link in ((up["cu"], up["cv"], up["cs"], up["cown"], 0.0),
                                       (up["clu"], up["clv"], np.zeros((len(up["clu"]), width - 1)), up["clown"], 1.0)):
            take = own == 1
            u, v, stats = u[take], v[take], stats[take]
            mine = self.shard_of(u) == shard
            here, there = np.where(mine, u, v), np.where(mine, v, u)
            sides["x"].append(values[np.searchsorted(keys, here)])
            sides["f"].append(there)
            sides["stats"].append(np.concatenate([stats, np.full((len(u), 1), link)], axis=1))
        x, f, stats = (np.concatenate(sides[k]) for k in ("x", "f", "stats"))
        self._send("bridge", 0, "b1", shard, self.shard_of(f), x=x, f=f, stats=stats)
        self._write(self._path("names", 0, f"{shard}.npz"), names=up["nodes"])
        return {"rows": len(a), "crossing": len(x)}

    def bridge2(self, up: dict[str, np.ndarray], shard: int, width: int) -> dict:
        """The crossing edges received, as rows at both ends' shards."""
        got = self._received("bridge", 0, shard, ("x", "f", "stats"), {"stats": width})
        y = up["face_values"][np.searchsorted(up["face_keys"], got["f"])]
        self._send("rows", 0, "b2", shard, np.full(len(y), shard), a=y, b=got["x"], stats=got["stats"])
        self._send("rows", 0, "b2", shard, self.shard_of(got["x"]), a=got["x"], b=y, stats=got["stats"])
        return {"crossing": len(y)}

    # -- a round

    def local(self, r: int, shard: int, width: int) -> dict:
        """Pool the rows received; merge what this shard decides alone; the renames sent on."""
        got = self._received("rows", r, shard, ("a", "b", "stats"), {"stats": width})
        a, b, stats = _pool_rows(got["a"], got["b"], got["stats"])
        old, new = self._merge_among(a, b, stats, np.unique(a))  # its own segments, whose edges are all here
        if len(old):
            a, b = _renamed(a, old, new), _renamed(b, old, new)
            a, b, stats = _pool_rows(a[a != b], b[a != b], stats[a != b])
        self._send_renames(r, "local-rename", shard, a, b, new, old, new)
        self._write(self._path("local", r, f"{shard}.npz"), old=old, new=new)  # kept for the final names
        self._write(self._path("pooled", r, f"{shard}.npz"), a=a, b=b, stats=stats)
        return {"rows": len(a), "local_merges": len(old)}

    def propose(self, r: int, shard: int) -> dict:
        """Each segment's least edge (names now current everywhere); final segments dropped, the
        others' least edges proposed to their partners' shards."""
        state = self._read(self._path("pooled", r, f"{shard}.npz"))
        got = self._received("local-rename", r, shard, ("old", "new"), {})
        old, first = np.unique(got["old"], return_index=True)
        a, b, stats = state["a"], _renamed(state["b"], old, got["new"][first]), state["stats"]
        if len(old):
            a, b, stats = _pool_rows(a, b, stats)
        score, contact, nhi, nlo = self._keys(a, b, stats)
        best = np.lexsort((nlo, nhi, contact, score, a))
        first = best[np.concatenate([[True], np.diff(a[best]) != 0])] if len(a) else best
        nodes, partner = a[first], b[first]
        active = score[first] < self.threshold
        keep = np.isin(a, nodes[active])
        nodes, partner = nodes[active], partner[active]
        a, b, stats = a[keep], b[keep], stats[keep]
        degree = np.diff(np.searchsorted(a, nodes), append=len(a)).astype(np.int64)
        self._send("propose", r, "p", shard, self.shard_of(partner), a=nodes, b=partner, degree=degree)
        # a segment whose least edge leaves the shard offers its rows to its partner's shard
        away = self.shard_of(partner) != shard
        offered = np.isin(a, nodes[away])
        self._send("offer", r, "o", shard, self.shard_of(partner[np.searchsorted(nodes, a[offered])]),
                   a=a[offered], b=b[offered], stats=stats[offered])
        self._write(self._path("adj", r, f"{shard}.npz"), a=a, b=b, stats=stats, nodes=nodes, partner=partner,
                    degree=degree)
        return {"active": len(nodes), "final": int((~active).sum()), "rows": len(a), "offered": int(offered.sum())}

    def decide(self, r: int, shard: int, width: int) -> dict:
        """The merges of the segments this shard decides: its own whose least edge stays in the
        shard or wins a mutual least edge, and those of other shards whose least edge comes here
        (and does not win one), with the rows they offered; the tree's partial merge over them,
        every other segment frozen. Each segment is decided by one shard."""
        adj = self._read(self._path("adj", r, f"{shard}.npz"))
        got = self._received("propose", r, shard, ("a", "b", "degree"), {})
        offers = self._received("offer", r, shard, ("a", "b", "stats"), {"stats": width})
        nodes, partner, degree = adj["nodes"], adj["partner"], adj["degree"]
        # proposals to my segments: mutual when my segment's least edge is the proposer's
        if len(nodes):
            at = np.minimum(np.searchsorted(nodes, got["b"]), len(nodes) - 1)
            mutual_in = (nodes[at] == got["b"]) & (partner[at] == got["a"])
            wins_in = _wins(got["degree"], got["a"], degree[at], got["b"])
        else:
            mutual_in = wins_in = np.zeros(len(got["a"]), bool)
        foreign = self.shard_of(got["a"]) != shard
        delegates = got["a"][foreign & ~(mutual_in & wins_in)]
        # my segments whose least edge leaves: they stay only when it is mutual and they win
        home = self.shard_of(partner) == shard
        by_proposer = np.argsort(got["a"])  # each segment proposes once
        pa = got["a"][by_proposer]
        at = np.minimum(np.searchsorted(pa, partner), max(len(pa) - 1, 0))
        back = by_proposer[at] if len(pa) else np.zeros(len(partner), np.int64)
        mutual_out = (pa[at] == partner) & (got["b"][back] == nodes) if len(pa) else np.zeros(len(nodes), bool)
        their_degree = got["degree"][back] if len(pa) else np.zeros(len(nodes), np.int64)
        stays = nodes[home | (mutual_out & _wins(degree, nodes, their_degree, partner))]
        members = np.union1d(stays, delegates)
        mine = np.isin(adj["a"], stays)
        theirs = np.isin(offers["a"], delegates)
        a = np.concatenate([adj["a"][mine], offers["a"][theirs]])
        b = np.concatenate([adj["b"][mine], offers["b"][theirs]])
        stats = np.concatenate([adj["stats"][mine], offers["stats"][theirs]])
        old, new = self._merge_among(a, b, stats, members)
        # renames: to the home of each merged segment, and to the shards of its group's neighbours
        group = _renamed(a, old, new)
        self._send_renames(r, "rename", shard, group, b, new, old, new)
        self._send("rename", r, "h", shard, self.shard_of(old), old=old, new=new)
        self._send("absorb", r, "a", shard, self.shard_of(new), absorbed=old, into=new)
        return {"merges": len(old), "members": len(members), "delegates": len(delegates)}

    def _merge_among(self, a: np.ndarray, b: np.ndarray, stats: np.ndarray, members: np.ndarray):
        """(segments, new names) of the partial merge of `members`, whose rows a -> b are all
        given, every other segment frozen."""
        from connectome.affinity.merge_tree import partial_merge

        if len(a) == 0:
            return a, a
        inside = np.isin(b, members)
        linked = stats[:, -1] > 0
        body = stats[:, :-1]
        measured = (body[:, 1] if self.scoring == "mean" else body.sum(axis=1)) > 0
        once = ~inside | (a < b)  # an edge between two members has a row from each
        edge, link = once & measured, once & linked & inside
        boundary = np.unique(np.concatenate([b[~inside], a[linked & ~inside]]))
        nodes = np.unique(np.concatenate([a, b]))
        merged = partial_merge(nodes, a[edge], b[edge], body[edge], a[link], b[link], boundary, self.threshold,
                               score_function(self.scoring, self.quantile))
        changed = merged["values"] != nodes
        return nodes[changed], merged["values"][changed]

    def move(self, r: int, shard: int) -> dict:
        """This shard's rows renamed by the round's decisions, sent to the shard of their new names."""
        adj = self._read(self._path("adj", r, f"{shard}.npz"))
        got = self._received("rename", r, shard, ("old", "new"), {})
        old, first = np.unique(got["old"], return_index=True)
        new = got["new"][first]
        a, b, stats = _renamed(adj["a"], old, new), _renamed(adj["b"], old, new), adj["stats"]
        keep = a != b  # an edge inside a merged group
        a, b, stats = a[keep], b[keep], stats[keep]
        self._send("rows", r + 1, "m", shard, self.shard_of(a), a=a, b=b, stats=stats)
        return {"rows": len(a), "moved": int((self.shard_of(a) != shard).sum())}

    def _send_renames(self, r: int, kind: str, shard: int, a: np.ndarray, b: np.ndarray, segment: np.ndarray,
                      pieces: np.ndarray, to: np.ndarray) -> None:
        """Each of `pieces` (of `segment`, now named `to`) sent to the shard of every neighbour of
        its segment (rows a -> b; a merged segment's neighbours are those of its pieces)."""
        order = np.argsort(segment, kind="stable")
        segment, pieces, to = segment[order], pieces[order], to[order]
        rows = np.isin(a, segment)
        dest = self.shard_of(b[rows]).astype(np.uint64)
        pairs = np.unique(np.stack([a[rows], dest], 1), axis=0) if rows.any() else np.zeros((0, 2), np.uint64)
        lo = np.searchsorted(segment, pairs[:, 0], "left")
        span = np.searchsorted(segment, pairs[:, 0], "right") - lo
        pick = np.repeat(lo, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
        self._send(kind, r, "r", shard, np.repeat(pairs[:, 1].astype(np.int64), span), old=pieces[pick],
                   new=to[pick])

    # -- the final names, backwards

    def resolving(self, r: int) -> list[int]:
        """Shards whose `resolve` of round `r` has anything to do: those that held edges in it (`busy`: a local
        merge to record) and those sent absorbed segments in it (final names to send). The others' final names
        are those of round r + 1 (`_finals` reads them there), so they write nothing: at a petabyte, most shards
        are idle in most rounds."""
        absorbed = self._path("absorb", r)
        sent = {int(name) for name in os.listdir(absorbed)} if os.path.isdir(absorbed) else set()
        return sorted(set(self.busy(r)) | sent)

    def resolve(self, r: int, shard: int) -> dict:
        """Final names of this shard's segments known after the rounds after `r`; for each segment
        that merged into one of them in round `r`, its final name sent to its shard."""
        names, final = self._finals(r + 1, shard)
        merged = self._received("absorb", r, shard, ("absorbed", "into"), {})
        to = final[np.searchsorted(names, merged["into"])]
        self._send("final", r, "f", shard, self.shard_of(merged["absorbed"]), name=merged["absorbed"], final=to)
        self._write(self._path("finals", r, f"{shard}.npz"), names=names, final=final)
        return {"sent": len(to)}

    def _finals(self, r: int, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(names, final names) of this shard's segments, known once rounds `r` on are resolved:
        the state after round r + 1, the final names sent for round r's mutual merges, then those
        of the segments merged here by round r's partial merge."""
        path = self._path("finals", r, f"{shard}.npz")
        if os.path.exists(path):
            state = self._read(path)
            names, final = state["names"], state["final"].copy()
        elif os.path.isdir(self._path("done", r + 1, "propose")):  # no resolve ran here (`resolving`): what it
            names, final = self._finals(r + 1, shard)                  # would have written
        else:  # after the last round: each name is its own
            names = np.sort(self._read(self._path("names", 0, f"{shard}.npz"))["names"])
            final = names.copy()
        got = self._received("final", r, shard, ("name", "final"), {})
        final[np.searchsorted(names, got["name"])] = got["final"]
        path = self._path("local", r, f"{shard}.npz")
        if os.path.exists(path):  # none where the shard had nothing to do in round r
            local = self._read(path)
            final[np.searchsorted(names, local["old"])] = final[np.searchsorted(names, local["new"])]
        return names, final

    def collect(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(names, final names) of this shard's segments, after every round."""
        return self._finals(0, shard)


def _pool_rows(a: np.ndarray, b: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one (a, b) pair summed into one (sorted by a, then b)."""
    order = np.lexsort((b, a))
    a, b, stats = a[order], b[order], stats[order]
    if len(a) == 0:
        return a, b, stats
    starts = np.flatnonzero(np.concatenate([[True], (np.diff(a) != 0) | (np.diff(b) != 0)]))
    return a[starts], b[starts], np.add.reduceat(stats, starts, axis=0)


def _wins(degree: np.ndarray, name: np.ndarray, other_degree: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Of a mutual least edge, whether the segment stays in its shard and decides it: the one with
    more neighbours (a hub, so that what proposes to it is decided with it), then the lesser name."""
    return (degree > other_degree) | ((degree == other_degree) & (name < other))


def _renamed(ids: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """`ids` with each of the sorted `old` replaced by its `new`."""
    if len(old) == 0:
        return ids
    at = np.minimum(np.searchsorted(old, ids), len(old) - 1)
    return np.where(old[at] == ids, new[at], ids)

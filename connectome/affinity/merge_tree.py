"""The global merge as a tree of partial merges, each a small task: the distributed twin of
`agglomeration.lookup_table`, with the same result.

Blocks are grouped into super-blocks of `fanout`^3 blocks (level 0), those into super-blocks of
`fanout`^3 super-blocks (level 1), and so on until one covers the grid. A task of level 0 reads
the region-graph tables of its blocks (and of the blocks just above its upper faces, for the
edges that reach into it); a task of level k > 0 reads what its children passed up. Each task
merges what it can decide alone and passes up only the segments that touch its faces and the
edges between them (as ABISS does for mean-affinity agglomeration):

- a node is *frozen* when an edge or a watershed link of it crosses the super-block's faces;
- the merge takes edges one at a time in the strict order (score, contact count, -hi, -lo) of
  `merge_regions` (hi, lo: the least fragment ids of the edge's two segments, the same in every
  task as in the serial merge); the least edge left merges, unless one of its segments is frozen:
  then the other freezes too;
- segments frozen at the end go up, with the pooled edges among them; the others are final.

Why this is the serial merge's result (mean or quantile scoring, ordered strictly): no merge
lowers an edge's key. A pooled edge scores at least the least of its parts (a weighted mean; a
quantile of the union lies between its parts'), and when it scores the same it has more voxel
pairs; a merge only lowers a segment's least id. So an edge e that is the least of all edges at
its two segments stays so whatever merges elsewhere (their edges only grow), and the serial
merge, which always takes the least edge of all, merges e with the same pooled statistics; and
merging e first changes nothing else the serial merge does (the two merges commute: statistics
add exactly, ids take minima). Inside a super-block, an unfrozen segment has all its edges in
view with their true statistics and ids; an edge at a frozen segment is seen with only part of
its statistics and maybe a larger id than the whole volume's (the segment may extend beyond the
faces), which only underestimates its key. So the least edge left, when neither end is frozen,
is the least at its two segments in the whole volume, and merging it is what the serial merge
does; freezing only defers a decision to the parent, which sees the frozen segments with their
pooled edges. A segment that ends unfrozen has every edge at or above the threshold (an edge
below it would have merged it or frozen it), and pooled scores never fall below their parts', so
it never merges again. Statistics are exact in float64 (`agglomeration.edge_stats`: sums of the
stored uint8 affinities), so pooling in another order gives the same sums, and scores are
computed from them the same way everywhere (1 - sum / count in float64). That float score need
not order two edges as their exact means do, but the argument needs only that it is monotone:
rounding never reverses an order, so a pooled edge's score never rounds below its least part's,
and where the two round equal the voxel-pair count decides.

Equal scores are not taken as one tie: the merge tree used to merge all edges of the least score
at once (that made it order-free), which over-merges where uint8 mean affinities tie often
(ISBI 2012 per section, VOI 2.835 with whole ties, 2.342 in the strict order; see
`benchmarks/results/merge_tree.md`). The `relabel` stage runs quantile scoring serially in
waterz's (score, i, j) order; the tree with quantile scoring equals `lookup_table(...,
order="strict")` (exact for the median; for other quantiles the float product q x total can
round differently for a pooled histogram than for its parts). Where the tree can differ: a score
that can fall below its least part's when edges pool (a learned score not monotone in the
pooled statistics); one computed from additive per-edge statistics fits the scheme (the tables
carry them, every task pools them) and equals the serial merge when it never does.

A task's result is one npz written atomically; it is the task's done-marker, so a killed level
resumes with the tasks that have none. After the top, a downward pass hands each super-block
the final segment of the segments it passed up, and level 0 writes the lookup table sharded by
block (`io.lookup.save_shard`): no task holds a table that grows with the volume; a task holds
its super-block's fragments (level 0) or the segments and fragments on its children's faces.

A task of level k holds its children's faces, so the top task grows with the volume's middle
planes. With `top_level` set, the tree stops there: the segments still frozen at that level's
faces are merged by rounds of tasks per super-block of that level (`merge_rounds`, the same
result), whose top task hands the tree's downward pass the final segments.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass

import numpy as np

from connectome.affinity.agglomeration import HIST_BINS, STRICT, edge_stats, join_links, merge_regions, score_function
from connectome.affinity.merge_rounds import PHASES, MergeRounds
from connectome.affinity.tree_layout import TreeLayout, owner
from connectome.engine.litter import remove_dead_writers
from connectome.io.lookup import save_shard

TREE_FORMAT = 1
FINGERPRINT = "fingerprint.json"
# the temporary files of the tree's writers, each named with its process id: the fingerprint and task results
# (`MergeTree._save`), the rounds' files (`merge_rounds`) and the lookup table's shards (`io.lookup.save_shard`)
LITTER = re.compile(r"^(?:fingerprint\.json\.(?P<p1>\d+)\.tmp|\d+\.(?P<p2>\d+)\.tmp\.npz"
                    r"|[\w.-]+\.npz\.(?P<p3>\d+)\.tmp|\.\d+\.(?P<p4>\d+)\.tmp\.npz)$")


class GridMismatch(ValueError):
    """The fragment ids do not name the blocks of the tables' grid (fragments made on another one)."""


def on_one_grid(edges_dir: str, blocks: int, samples: int = 16) -> bool:
    """Whether the fragments of a sample of tables belong to those tables' blocks (ids name their block)."""
    for block in np.unique(np.linspace(0, blocks - 1, min(samples, blocks)).astype(int)).tolist():
        try:
            with np.load(os.path.join(edges_dir, f"{block}.npz")) as t:
                nodes = t["nodes"]
        except FileNotFoundError:
            continue
        if len(nodes) and not np.all(owner(nodes) == block):
            return False
    return True


# ---------------------------------------------------------------- one partial merge

def _pool(u: np.ndarray, v: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairs (u < v) with their rows summed (in row order)."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    if len(lo) == 0:
        return lo, hi, stats
    pairs, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    pooled = np.zeros((len(pairs), stats.shape[1]))
    np.add.at(pooled, inverse.ravel(), stats)
    return pairs[:, 0], pairs[:, 1], pooled


def partial_merge(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, stats: np.ndarray, link_u: np.ndarray,
                  link_v: np.ndarray, boundary: np.ndarray, threshold: float, score) -> dict[str, np.ndarray]:
    """Join the links, then merge (`merge_regions`) with the `boundary` nodes frozen.

    Nodes are sorted ids; a segment is named by its least node. Returns `keys` (the nodes) ->
    `values` (their segment), the frozen segments `nodes` and the pooled edges among them.
    """
    basin = join_links(nodes, link_u, link_v)
    frozen_node = np.zeros(len(nodes), np.int8)
    frozen_node[np.searchsorted(nodes, boundary)] = 1
    bu, bv = basin[np.searchsorted(nodes, u)], basin[np.searchsorted(nodes, v)]
    keep = bu != bv
    basin_ids = np.unique(basin)
    frozen = np.zeros(len(basin_ids), np.int8)
    frozen[np.searchsorted(basin_ids, basin[frozen_node == 1])] = 1
    roots = merge_regions(basin_ids, np.minimum(bu, bv)[keep], np.maximum(bu, bv)[keep], stats[keep], threshold,
                          score, frozen, order=STRICT)
    segment = nodes[basin_ids[roots]]  # per basin: the least node of its segment
    position = np.searchsorted(basin_ids, basin)
    values = segment[position]
    is_frozen = frozen[position] == 1
    su, sv = values[np.searchsorted(nodes, u)], values[np.searchsorted(nodes, v)]
    fu = is_frozen[np.searchsorted(nodes, u)] & is_frozen[np.searchsorted(nodes, v)] & (su != sv)
    eu, ev, es = _pool(su[fu], sv[fu], stats[fu])
    return {"keys": nodes, "values": values, "nodes": np.unique(values[is_frozen]), "eu": eu, "ev": ev, "es": es}


# ---------------------------------------------------------------- the tree's tasks

@dataclass(frozen=True)
class MergeTree:
    """One merge tree: where its tables and task results live, its layout and parameters."""

    edges_dir: str
    tree_dir: str
    shards_dir: str
    layout: TreeLayout
    threshold: float
    scoring: str = "mean"
    quantile: float = 0.5
    top_level: int | None = None  # the last level of tasks per super-block; rounds (`merge_rounds`) above it

    @property
    def score(self):
        return score_function(self.scoring, self.quantile)

    def result(self, kind: str, level: int, index: int) -> str:
        return os.path.join(self.tree_dir, f"{kind}-{level}", f"{index}.npz")

    @property
    def tree_levels(self) -> int:
        """Levels run as tasks per super-block (all, unless rounds decide the top)."""
        if self.top_level is None:
            return self.layout.levels
        return min(self.layout.levels, self.top_level + 1)

    def rounds(self) -> MergeRounds | None:
        """The rounds above the tree's last level, or None when the tree reaches the top."""
        if self.tree_levels == self.layout.levels:
            return None
        return MergeRounds(os.path.join(self.tree_dir, "rounds"), self.layout, self.tree_levels - 1, self.threshold,
                           self.scoring, self.quantile)

    def fingerprint(self) -> dict:
        return {"format": TREE_FORMAT, "grid": list(self.layout.grid), "fanout": self.layout.fanout,
                "threshold": self.threshold, "scoring": self.scoring, "quantile": self.quantile,
                "tree_levels": self.tree_levels,
                # relative to the tree: a moved output directory keeps its partial results
                "edges": os.path.relpath(os.path.abspath(self.edges_dir), os.path.abspath(self.tree_dir)),
                "tables_written": os.stat(self.edges_dir).st_mtime_ns}  # rewritten tables: results of old ones go

    # -- level 0: the region-graph tables of the super-block's blocks

    def _table(self, block: int) -> dict[str, np.ndarray] | None:
        path = os.path.join(self.edges_dir, f"{block}.npz")
        if not os.path.exists(path):
            return None
        with np.load(path) as t:
            out = {k: t[k] for k in ("nodes", "u", "v", "sums", "counts", "link_u", "link_v")}
            if self.scoring == "quantile":
                hist = np.zeros((len(out["u"]), HIST_BINS))
                hist[t["hist_edge"].astype(np.int64), t["hist_bin"]] = t["hist_count"]
                out["hist"] = hist
        for key in ("nodes", "u", "v", "link_u", "link_v"):
            out[key] = out[key].astype(np.uint64)
        if len(out["nodes"]) and not np.all(owner(out["nodes"]) == block):
            raise GridMismatch(f"{path}: fragments of other blocks among its nodes; the merge tree needs the "
                               "fragments and agglomerate stages on one block grid")
        return out

    def _level0_inputs(self, index: int) -> dict[str, np.ndarray]:
        layout = self.layout
        mine = layout.blocks(0, index)
        above: set[int] = set()
        for d in range(3):  # the blocks just above the upper faces store the edges that reach down into it
            p = layout.positions(mine)
            p[:, d] += 1
            inside = p[:, d] < layout.grid[d]
            idx = (p[inside, 0] * layout.grid[1] + p[inside, 1]) * layout.grid[2] + p[inside, 2]
            above.update(int(b) for b in idx[layout.super_block(idx, 0) != index])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("nodes", "u", "v", "stats", "own", "lu", "lv", "lown")}
        for block, own in [(int(b), 1) for b in mine] + [(b, 0) for b in sorted(above)]:
            t = self._table(block)
            if t is None:
                continue
            stats = edge_stats(t, self.scoring)
            ru = layout.super_block(owner(t["u"]), 0) == index
            rv = layout.super_block(owner(t["v"]), 0) == index
            keep = ru | rv if not own else np.ones(len(ru), bool)
            lu = layout.super_block(owner(t["link_u"]), 0) == index
            lv = layout.super_block(owner(t["link_v"]), 0) == index
            lkeep = lu | lv if not own else np.ones(len(lu), bool)
            if own:
                parts["nodes"].append(t["nodes"])
            parts["u"].append(t["u"][keep])
            parts["v"].append(t["v"][keep])
            parts["stats"].append(stats[keep])
            parts["own"].append(np.full(int(keep.sum()), own, np.int8))
            parts["lu"].append(t["link_u"][lkeep])
            parts["lv"].append(t["link_v"][lkeep])
            parts["lown"].append(np.full(int(lkeep.sum()), own, np.int8))
        width = 2 if self.scoring == "mean" else HIST_BINS
        ids, flags = np.zeros(0, np.uint64), np.zeros(0, np.int8)
        empty: dict[str, np.ndarray] = {"nodes": ids, "u": ids, "v": ids, "stats": np.zeros((0, width)), "own": flags,
                                        "lu": ids, "lv": ids, "lown": flags}
        out: dict[str, np.ndarray] = {k: (np.concatenate(parts[k]) if parts[k] else empty[k]) for k in parts}
        out["nodes"] = np.unique(out["nodes"])
        return out

    def up(self, level: int, index: int) -> dict:
        """The partial merge of one super-block; writes its result (its done-marker)."""
        start = time.perf_counter()
        if level == 0:
            got = self._level0_inputs(index)
            nodes = got["nodes"]
            u, v, stats, own, lu, lv, lown = (got[k] for k in ("u", "v", "stats", "own", "lu", "lv", "lown"))
            eu = ev = np.zeros(0, np.uint64)
            es = np.zeros((0, stats.shape[1]))
            face_keys, face_values = nodes, nodes  # every fragment is its own node here
        else:
            children = [self._load("up", level - 1, c) for c in self.layout.children(level, index)]
            nodes = np.sort(np.concatenate([c["nodes"] for c in children]))
            eu, ev, es = (np.concatenate([c[k] for c in children]) for k in ("eu", "ev", "es"))
            u, v, stats, own = (np.concatenate([c[k] for c in children]) for k in ("cu", "cv", "cs", "cown"))
            lu, lv, lown = (np.concatenate([c[k] for c in children]) for k in ("clu", "clv", "clown"))
            face_keys = np.concatenate([c["face_keys"] for c in children])
            order = np.argsort(face_keys)
            face_keys, face_values = face_keys[order], np.concatenate([c["face_values"] for c in children])[order]
        here = self.layout.super_block
        iu, iv = here(owner(u), level) == index, here(owner(v), level) == index
        ilu, ilv = here(owner(lu), level) == index, here(owner(lv), level) == index
        inner, linner = iu & iv, ilu & ilv

        def node_of(fragments: np.ndarray) -> np.ndarray:
            return face_values[np.searchsorted(face_keys, fragments)]

        take, ltake = inner & (own == 1), linner & (lown == 1)  # of an inner edge, the copy of the block storing it
        all_u = np.concatenate([eu, node_of(u[take])])
        all_v = np.concatenate([ev, node_of(v[take])])
        all_s = np.concatenate([es, stats[take]])
        near = np.concatenate([u[iu & ~inner], v[iv & ~inner], lu[ilu & ~linner], lv[ilv & ~linner]])
        boundary = np.unique(node_of(near))
        merged = partial_merge(nodes, all_u, all_v, all_s, node_of(lu[ltake]), node_of(lv[ltake]), boundary,
                               self.threshold, self.score)
        finals = len(np.unique(merged["values"])) - len(merged["nodes"])
        out: dict[str, np.ndarray] = dict(keys=merged["keys"], values=merged["values"], nodes=merged["nodes"],
                                          eu=merged["eu"], ev=merged["ev"], es=merged["es"], finals=np.array(finals))
        crossing, lcrossing = ~inner & (iu | iv), ~linner & (ilu | ilv)
        out.update(cu=u[crossing], cv=v[crossing], cs=stats[crossing], cown=own[crossing],
                   clu=lu[lcrossing], clv=lv[lcrossing], clown=lown[lcrossing])
        near = np.unique(near)
        out["face_keys"] = near
        out["face_values"] = merged["values"][np.searchsorted(nodes, node_of(near))]
        self._save("up", level, index, out)
        return {"level": level, "index": index, "nodes": int(len(nodes)), "edges": int(len(all_u)),
                "passed_up": int(len(out["nodes"])), "crossing": int(crossing.sum()),
                "seconds": time.perf_counter() - start}

    def down(self, level: int, index: int) -> dict:
        """Final segments of this super-block's nodes: from its parent's result for those it passed
        up; level 0 writes the lookup table shards of its blocks."""
        start = time.perf_counter()
        mine = self._load("up", level, index, keys=("keys", "values", "nodes"))
        values = mine["values"]
        if level + 1 < self.layout.levels:
            given = self._load("down", level, index)  # the final segment of each node passed up
            at = np.searchsorted(given["keys"], values)
            at = np.minimum(at, max(len(given["keys"]) - 1, 0))
            passed = (given["keys"][at] == values) if len(given["keys"]) else np.zeros(len(values), bool)
            values = np.where(passed, given["values"][at] if len(given["keys"]) else values, values)
        if level == 0:
            blocks = owner(mine["keys"])
            for block in self.layout.blocks(0, index):
                sel = blocks == block
                save_shard(self.shards_dir, int(block), mine["keys"][sel], values[sel])
        else:
            keys = mine["keys"]
            for child in self.layout.children(level, index):
                passed_up = self._load("up", level - 1, child, keys=("nodes",))["nodes"]
                self._save("down", level - 1, child,
                           {"keys": passed_up, "values": values[np.searchsorted(keys, passed_up)]})
        return {"level": level, "index": index, "seconds": time.perf_counter() - start}

    def totals(self) -> dict:
        """Fragments and segments over the whole tree (from its results)."""
        fragments = sum(len(self._load("up", 0, i, keys=("keys",))["keys"]) for i in range(self.layout.count(0)))
        segments = sum(int(self._load("up", k, i, keys=("finals",))["finals"])
                       for k in range(self.tree_levels) for i in range(self.layout.count(k)))
        rounds = self.rounds()
        if rounds is not None:  # the segments the rounds left, each named by itself
            for shard in range(rounds.shards):
                given = self._load("down", rounds.level, shard)
                segments += int((given["keys"] == given["values"]).sum())
        return {"fragments": fragments, "segments": segments, "levels": self.layout.levels,
                "tree_levels": self.tree_levels}

    # -- storage of task results

    def _save(self, kind: str, level: int, index: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.result(kind, level, index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path[:-4]}.{os.getpid()}.tmp.npz"
        _write_aside(tmp, path, lambda: np.savez(tmp, **arrays))  # type: ignore[arg-type]

    def _load(self, kind: str, level: int, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        with np.load(self.result(kind, level, index)) as t:
            return {k: t[k] for k in (keys or t.files)}

    # -- the walk

    def claim(self) -> None:
        """Bind the tree directory to this fingerprint; results of another one are discarded."""
        path = os.path.join(self.tree_dir, FINGERPRINT)
        wanted = json.loads(json.dumps(self.fingerprint(), sort_keys=True))
        try:
            with open(path) as f:
                found = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            found = None
        if found != wanted:
            shutil.rmtree(self.tree_dir, ignore_errors=True)
            shutil.rmtree(self.shards_dir, ignore_errors=True)
        else:
            self.remove_litter()
        os.makedirs(self.tree_dir, exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp"

        def write() -> None:
            with open(tmp, "w") as f:
                json.dump(wanted, f, sort_keys=True)

        _write_aside(tmp, path, write)

    def remove_litter(self) -> list[str]:
        """Remove the temporary files that killed writers of this tree's results, its rounds' files and its
        lookup table's shards left (a writer whose process is gone: `engine.litter.remove_dead_writers`)."""
        return [path for root in (self.tree_dir, self.shards_dir) for path in remove_dead_writers(root, LITTER)]

    def tasks(self) -> list[tuple[str, int, list[int]]]:
        """(kind, level, super-blocks) of the tree's own levels in the order they must run: up, then
        down (rounds, when there are any, run between the two, as many as they need)."""
        levels = self.tree_levels
        ups = [("up", k, list(range(self.layout.count(k)))) for k in range(levels)]
        downs = [("down", k, list(range(self.layout.count(k)))) for k in reversed(range(levels))]
        return ups + downs

    def done(self, kind: str, level: int, index: int) -> bool:
        """A task is done when its result is there (level 0 down: its blocks' shards)."""
        if kind in PHASES:
            rounds = self.rounds()
            assert rounds is not None
            if kind == "collect":
                return os.path.exists(self.result("down", rounds.level, index))
            return rounds.done(kind, level, index)
        if kind == "down" and level == 0:
            return os.path.exists(os.path.join(self.shards_dir, f".done-{index}"))
        if kind == "down":
            children = self.layout.children(level, index)
            return all(os.path.exists(self.result("down", level - 1, c)) for c in children)
        return os.path.exists(self.result(kind, level, index))

    def run_task(self, kind: str, level: int, index: int) -> dict:
        """One task, with its peak memory (resident set, reset before it starts where Linux allows)."""
        _reset_peak()
        cpu, start = time.process_time(), time.perf_counter()
        if kind in PHASES:
            summary = self._round_task(kind, level, index)
            summary.update(level=level, index=index, seconds=time.perf_counter() - start)
        else:
            summary = self.up(level, index) if kind == "up" else self.down(level, index)
        summary["cpu_seconds"] = time.process_time() - cpu
        if kind == "down" and level == 0:
            open(os.path.join(self.shards_dir, f".done-{index}"), "w").close()
        summary["kind"] = kind
        summary["peak_rss"] = _peak_rss()
        return summary

    def _round_task(self, phase: str, r: int, shard: int) -> dict:
        """One shard's task of a phase of the rounds (`merge_rounds`); its marker written last."""
        rounds = self.rounds()
        assert rounds is not None
        width = (2 if self.scoring == "mean" else HIST_BINS) + 1
        if phase == "collect":
            names, final = rounds.collect(shard)
            self._save("down", rounds.level, shard, {"keys": names, "values": final})
            return {"segments": int((names == final).sum())}
        if phase in ("bridge1", "bridge2"):
            up = self._load("up", rounds.level, shard, keys=("nodes", "eu", "ev", "es", "cu", "cv", "cs", "cown",
                                                              "clu", "clv", "clown", "face_keys", "face_values"))
            out = rounds.bridge1(up, shard) if phase == "bridge1" else rounds.bridge2(up, shard, width)
        elif phase == "local":
            out = rounds.local(r, shard, width)
        elif phase == "decide":
            out = rounds.decide(r, shard, width)
        else:
            out = getattr(rounds, phase)(r, shard)
        rounds.mark(phase, r, shard, out)
        return out

    def run(self, submit=None) -> list[dict]:
        """Every task not yet done, level by level (then round by round); `submit(tree, list of
        (kind, level, index))` runs one level's tasks (on a cluster) and returns their summaries;
        default: here, one by one."""
        self.claim()
        os.makedirs(self.shards_dir, exist_ok=True)
        summaries: list[dict] = []

        def phase(kind: str, level: int, indices) -> None:
            todo = [(kind, level, i) for i in indices if not self.done(kind, level, i)]
            if todo and submit is None:
                summaries.extend(self.run_task(*t) for t in todo)
            elif todo:
                summaries.extend(submit(self, todo))

        tasks = self.tasks()
        for kind, level, indices in tasks[: self.tree_levels]:
            phase(kind, level, indices)
        rounds = self.rounds()
        if rounds is not None:
            shards = range(rounds.shards)
            phase("bridge1", 0, shards)
            phase("bridge2", 0, shards)
            r = 0
            while True:
                busy = rounds.busy(r)  # shards that hold edges this round; the others have nothing to do
                phase("local", r, busy)
                phase("propose", r, busy)
                if sum(rounds.summary("propose", r, s)["active"] for s in busy) == 0:
                    rounds.forget(r)
                    break
                phase("decide", r, busy)
                phase("move", r, busy)
                rounds.forget(r)
                r += 1
            for q in reversed(range(r)):
                phase("resolve", q, rounds.resolving(q))
            phase("collect", r, shards)
        for kind, level, indices in tasks[self.tree_levels:]:
            phase(kind, level, indices)
        self.remove_litter()  # what the killed workers of tasks retried meanwhile left
        return summaries


def _write_aside(tmp: str, path: str, write) -> None:
    """`write()` the file `tmp`, then rename it to `path`; a write that fails (a full disk) leaves no `tmp`."""
    try:
        write()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident bytes of this process (VmHWM), or 0 where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


MAX_RUN = 256  # super-blocks (shards) one task does at most, whatever the threads present


def task_groups(todo: list[tuple[str, int, int]], threads: int) -> list[list[tuple[str, int, int]]]:
    """One level's or phase's tasks cut into runs of neighbouring super-blocks (or shards): four runs per
    worker thread present, and runs of at most `MAX_RUN`, so a phase over millions of shards is thousands of
    tasks for the scheduler, not one per shard, every thread has several to balance the uneven ones, and a
    pool that is small when the phase starts (an adaptive SLURM pool) still gets work enough to grow into."""
    count = min(len(todo), max(4 * max(1, threads), -(-len(todo) // MAX_RUN)))
    if not count:
        return []
    return [[todo[i] for i in part] for part in np.array_split(np.arange(len(todo)), count)]


def run_tasks(tree: MergeTree, tasks: list[tuple[str, int, int]]) -> list[dict]:
    """A run of tasks, one after another in one worker; a retried run skips those already done."""
    return [tree.run_task(*t) for t in tasks if not tree.done(*t)]


def submit_on_dask(tree: MergeTree, todo: list[tuple[str, int, int]]) -> list[dict]:
    """Run one level's tasks on the Dask cluster this code runs in (from a worker: `worker_client`),
    grouped by `task_groups`; the summaries of the tasks that ran, in order."""
    from distributed import get_client, worker_client
    from distributed.worker import get_worker

    def gather(client) -> list[dict]:
        groups = task_groups(todo, sum(client.nthreads().values()))
        futures = [client.submit(run_tasks, tree, g, pure=False, retries=2) for g in groups]
        return [s for part in client.gather(futures) for s in part]

    try:
        get_worker()
    except ValueError:
        return gather(get_client())
    with worker_client() as client:
        return gather(client)

"""Build the graph from the synapse table and the segment table, and write it: `graph_nodes.csv`,
`graph_edges.csv` (pre, post, count, cleft_voxels, cleft_nm3, autapse) and `graph.graphml`."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

import numpy as np

from connectome.io.tables import write_csv
from connectome.neurites.types import SUMMARY_COLUMNS

NODES_FILE = "graph_nodes.csv"
EDGES_FILE = "graph_edges.csv"
GRAPHML_FILE = "graph.graphml"


@dataclass
class Graph:
    nodes: dict[str, np.ndarray]  # id, size_voxels, class, z, y, x, radius_nm, branch_share
    edges: dict[str, np.ndarray]  # pre, post, count, cleft_voxels, cleft_nm3, autapse


def build_graph(synapses: dict[str, np.ndarray], segments: dict[str, np.ndarray] | None) -> Graph:
    """Edges: synapses with both partners assigned, grouped by (pre, post); nodes: every segment that
    takes part in an edge (with its size, class, centroid, radius and branching from `segments` where known)."""
    ok = (synapses["pre"] != 0) & (synapses["post"] != 0)
    pre, post = synapses["pre"][ok].astype(np.uint64), synapses["post"][ok].astype(np.uint64)
    vox = synapses.get("size_voxels", np.ones(len(ok)))[ok].astype(np.float64)
    nm3 = synapses.get("size_nm3", np.zeros(len(ok)))[ok].astype(np.float64)
    if len(pre):
        pairs, inv = np.unique(np.stack([pre, post], 1), axis=0, return_inverse=True)
        inv = inv.ravel()
    else:
        pairs, inv = np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    edges = {"pre": pairs[:, 0], "post": pairs[:, 1], "count": np.bincount(inv, minlength=len(pairs)),
             "cleft_voxels": np.bincount(inv, weights=vox, minlength=len(pairs)),
             "cleft_nm3": np.bincount(inv, weights=nm3, minlength=len(pairs)), "autapse": pairs[:, 0] == pairs[:, 1]}
    ids = np.unique(pairs.ravel()).astype(np.uint64)
    nodes: dict[str, np.ndarray] = {"id": ids, "size_voxels": np.full(len(ids), np.nan),
                                    "class": np.array(["unknown"] * len(ids), dtype=object),
                                    "z": np.full(len(ids), np.nan), "y": np.full(len(ids), np.nan),
                                    "x": np.full(len(ids), np.nan),
                                    **{k: np.full(len(ids), np.nan) for k in SUMMARY_COLUMNS}}
    if segments is not None and len(segments["id"]) and len(ids):
        sid = segments["id"].astype(np.uint64)
        order = np.argsort(sid)
        at = np.minimum(np.searchsorted(sid[order], ids), len(sid) - 1)
        found = sid[order][at] == ids
        src = order[at[found]]
        for k in ("size_voxels", "class", "z", "y", "x", *SUMMARY_COLUMNS):
            if k in segments:  # segment tables written before 2026-12-04 have no morphology columns
                nodes[k][found] = segments[k][src]
    return Graph(nodes, edges)


def _write_csv(path: str, columns: dict[str, np.ndarray]) -> str:
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    return write_csv(path, names, ([_cell(columns[k][i]) for k in names] for i in range(n)))


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else (str(int(v)) if float(v).is_integer() else f"{float(v):.6g}")
    return str(v)


def to_networkx(graph: Graph):
    import networkx as nx

    g = nx.DiGraph()
    for i in range(len(graph.nodes["id"])):
        attrs = {k: (str(v[i]) if k == "class" else float(v[i])) for k, v in graph.nodes.items() if k != "id"}
        g.add_node(str(int(graph.nodes["id"][i])), **{k: v for k, v in attrs.items() if v == v})
    for i in range(len(graph.edges["pre"])):
        g.add_edge(str(int(graph.edges["pre"][i])), str(int(graph.edges["post"][i])),
                   count=int(graph.edges["count"][i]), cleft_voxels=float(graph.edges["cleft_voxels"][i]),
                   cleft_nm3=float(graph.edges["cleft_nm3"][i]), autapse=bool(graph.edges["autapse"][i]))
    return g


def write_graph(graph: Graph, out_dir: str) -> dict[str, str]:
    """The node and edge tables and the GraphML file in `out_dir` (each written atomically)."""
    import networkx as nx

    os.makedirs(out_dir, exist_ok=True)
    paths = {"nodes": _write_csv(os.path.join(out_dir, NODES_FILE), graph.nodes),
             "edges": _write_csv(os.path.join(out_dir, EDGES_FILE), graph.edges)}
    gml = os.path.join(out_dir, GRAPHML_FILE)
    tmp = f"{gml}.tmp{os.getpid()}"
    nx.write_graphml(to_networkx(graph), tmp)
    os.replace(tmp, gml)
    paths["graphml"] = gml
    return paths


def read_edges(path: str) -> dict[str, np.ndarray]:
    from connectome.core.errors import UserError

    if not os.path.isfile(path):
        raise UserError(f"{path}: no graph edge table; run `connectome reconstruct` first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"pre": np.array([int(r["pre"]) for r in rows], np.uint64),
            "post": np.array([int(r["post"]) for r in rows], np.uint64),
            "count": np.array([int(r["count"]) for r in rows], np.int64),
            "cleft_nm3": np.array([float(r["cleft_nm3"]) for r in rows]),
            "autapse": np.array([r["autapse"] == "1" for r in rows], bool)}


def types_are_current(out_dir: str) -> bool:
    """Whether OUT_DIR/segments.csv belongs to its synapses. The last run recorded in OUT_DIR/run.json decides where
    it ran the synapses (with or without the neurite types); a later run of other stages only (meshes, pyramids)
    does not hide them: then segments.csv counts where it was written no earlier than synapses.csv."""
    from connectome.neurites.types import SEGMENTS_FILE
    from connectome.synapses.table import SYNAPSES_FILE

    segments, synapses = (os.path.join(out_dir, name) for name in (SEGMENTS_FILE, SYNAPSES_FILE))
    if not os.path.isfile(segments):
        return False
    try:
        with open(os.path.join(out_dir, "run.json")) as f:
            stages = {s.get("stage") for s in json.load(f).get("stages", [])}
    except (OSError, ValueError, AttributeError):
        stages = set()
    if "synapses" in stages:
        return "neurite_types" in stages
    return not os.path.isfile(synapses) or os.path.getmtime(segments) >= os.path.getmtime(synapses)


def graph_from_dir(out_dir: str, types: bool | None = None) -> tuple[Graph, dict[str, str], dict[str, np.ndarray]]:
    """Build the graph from OUT_DIR/synapses.csv (and segments.csv where present and `types`) and write it
    there. `types` None: whether segments.csv belongs to the synapses (`types_are_current`), so a run of the
    synapses without the types leaves an earlier run's segments.csv unread, and a later run of other stages
    (meshes, pyramids) into the directory does not hide it."""
    from connectome.neurites.types import SEGMENTS_FILE, read_segments
    from connectome.synapses.table import SYNAPSES_FILE, read_synapses

    synapses = read_synapses(os.path.join(out_dir, SYNAPSES_FILE))
    if types is None:
        types = types_are_current(out_dir)
    seg_path = os.path.join(out_dir, SEGMENTS_FILE)
    segments = read_segments(seg_path) if types and os.path.isfile(seg_path) else None
    graph = build_graph(synapses, segments)
    return graph, write_graph(graph, out_dir), synapses


def graph_outputs(out_dir: str, types: bool | None = None, plots: bool = True) \
        -> tuple[Graph, dict[str, str], dict[str, np.ndarray], dict]:
    """`graph_from_dir` and the summary (with its PNG plots where `plots`), written while holding OUT_DIR's lock:
    a run writing the directory refuses them, and they it."""
    from connectome.core.errors import unwritable
    from connectome.engine.lock import output_lock
    from connectome.graph.summary import plot, summarise

    try:
        with output_lock(out_dir):
            graph, paths, synapses = graph_from_dir(out_dir, types)
            summary = summarise(graph.nodes, graph.edges, synapses)
            if plots:
                paths.update(plot(graph.nodes, graph.edges, out_dir))
    except OSError as e:  # a read-only output directory: one line, as a run's
        raise unwritable(e, out_dir) from None
    return graph, paths, synapses, summary

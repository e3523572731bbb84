"""The graph's summary (neurons, synapses, connections, degrees) and its plots: a degree histogram
and the adjacency matrix with segments sorted by class and degree."""

from __future__ import annotations

import os

import numpy as np

DEGREE_PNG = "graph_degrees.png"
ADJACENCY_PNG = "graph_adjacency.png"


def summarise(nodes: dict[str, np.ndarray], edges: dict[str, np.ndarray], synapses: dict[str, np.ndarray]) -> dict:
    pre, post, count = edges["pre"], edges["post"], edges["count"]
    ids = nodes["id"]
    out_deg = _degree(ids, pre)
    in_deg = _degree(ids, post)
    classes, class_counts = np.unique(nodes["class"].astype(str), return_counts=True)
    assigned = (synapses["pre"] != 0) & (synapses["post"] != 0)
    return {
        "neurons": int(len(ids)),
        "synapses": int(len(synapses["pre"])),
        "synapses_in_graph": int(count.sum()),
        "synapses_unassigned": int((~assigned).sum()),
        "autapses": int(count[edges["autapse"]].sum()) if len(count) else 0,
        "connections": int(len(pre)),
        "classes": {str(c): int(n) for c, n in zip(classes, class_counts)},
        "out_degree": _stats(out_deg), "in_degree": _stats(in_deg),
        "synapses_per_connection": _stats(count),
    }


def _degree(ids: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distinct partners per node (edges are unique (pre, post) pairs)."""
    if not len(ids):
        return np.zeros(0, np.int64)
    at = np.searchsorted(ids, ends)
    return np.bincount(at, minlength=len(ids))


def _stats(v: np.ndarray) -> dict:
    v = np.asarray(v)
    if not len(v):
        return {"mean": 0.0, "max": 0, "histogram": {}}
    values, counts = np.unique(v, return_counts=True)
    return {"mean": round(float(v.mean()), 3), "max": int(v.max()),
            "histogram": {str(int(a)): int(b) for a, b in zip(values, counts)}}


def plot(nodes: dict[str, np.ndarray], edges: dict[str, np.ndarray], out_dir: str) -> dict[str, str]:
    """Write the degree histogram and the sorted adjacency matrix as PNG files; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = nodes["id"]
    out_deg, in_deg = _degree(ids, edges["pre"]), _degree(ids, edges["post"])
    paths = {"degrees": os.path.join(out_dir, DEGREE_PNG), "adjacency": os.path.join(out_dir, ADJACENCY_PNG)}

    fig, ax = plt.subplots(figsize=(5, 3.5))
    top = int(max(out_deg.max(initial=0), in_deg.max(initial=0))) + 1
    bins = [b - 0.5 for b in range(top + 2)]
    ax.hist([out_deg, in_deg], bins=bins, label=["out (as presynaptic)", "in (as postsynaptic)"])
    ax.set_xlabel("partners")
    ax.set_ylabel("segments")
    ax.set_title(f"degree distribution ({len(ids)} segments, {len(edges['pre'])} connections)")
    ax.legend()
    fig.tight_layout()
    _save(fig, paths["degrees"])

    order = np.lexsort((-(out_deg + in_deg), nodes["class"].astype(str))) if len(ids) else np.zeros(0, np.int64)
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    mat = np.zeros((len(ids), len(ids)))
    if len(edges["pre"]):
        mat[rank[np.searchsorted(ids, edges["pre"])], rank[np.searchsorted(ids, edges["post"])]] = edges["count"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(mat if len(ids) else np.zeros((1, 1)), cmap="Greys", interpolation="nearest",
              vmin=0, vmax=max(1.0, float(mat.max(initial=0))))
    ax.set_xlabel("postsynaptic segment (sorted by class, then degree)")
    ax.set_ylabel("presynaptic segment")
    ax.set_title("adjacency (synapse count)")
    fig.tight_layout()
    _save(fig, paths["adjacency"])
    plt.close("all")
    return paths


def _save(fig, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def describe(summary: dict) -> str:
    """The summary as a few human lines."""
    classes = ", ".join(f"{k} {v}" for k, v in summary["classes"].items()) or "none"
    return "\n".join([
        f"graph: {summary['neurons']} segments ({classes}), {summary['connections']} connections, "
        f"{summary['synapses_in_graph']} of {summary['synapses']} synapses "
        f"({summary['autapses']} autapses, {summary['synapses_unassigned']} without both partners)",
        f"out-degree mean {summary['out_degree']['mean']} max {summary['out_degree']['max']}; "
        f"in-degree mean {summary['in_degree']['mean']} max {summary['in_degree']['max']}; "
        f"synapses per connection mean {summary['synapses_per_connection']['mean']}",
    ])

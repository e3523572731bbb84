"""The graph from a synapse table: edges grouped per (pre, post) with counts and cleft sizes, nodes
with their segment data, GraphML readable by networkx, the summary and the `graph` command's plots."""

import json
import os

import networkx as nx
import numpy as np

from connectome.cli.main import main
from connectome.graph.build import build_graph, write_graph
from connectome.graph.summary import summarise
from connectome.neurites.types import write_segments
from connectome.synapses.table import write_synapses

from graph_tables import segment_rows, synapse_rows


def test_edges_nodes_and_summary():
    syn = synapse_rows()
    g = build_graph(syn, segment_rows())
    edges = {(int(a), int(b)): (int(c), float(v)) for a, b, c, v in
             zip(g.edges["pre"], g.edges["post"], g.edges["count"], g.edges["cleft_voxels"])}
    assert edges == {(5, 7): (2, 21.0), (5, 9): (1, 12.0), (7, 9): (1, 13.0), (9, 9): (1, 14.0)}
    assert g.edges["autapse"].tolist() == [False, False, False, True]
    assert g.nodes["id"].tolist() == [5, 7, 9]  # segment 11 takes part in no synapse
    assert g.nodes["class"].tolist() == ["axon", "dendrite", "soma"]
    assert g.nodes["radius_nm"].tolist() == [40.0, 40.0, 40.0]
    assert g.nodes["branch_share"].tolist() == [0.1, 0.2, 0.3]
    bare = build_graph(syn, None).nodes  # no segment table: unknown (NaN, an empty CSV cell), not a size of 0
    assert np.isnan(bare["branch_share"]).all() and np.isnan(bare["size_voxels"]).all()
    assert set(bare["class"]) == {"unknown"}
    s = summarise(g.nodes, g.edges, syn)
    assert (s["neurons"], s["synapses"], s["synapses_in_graph"], s["connections"], s["autapses"],
            s["synapses_unassigned"]) == (3, 7, 5, 4, 1, 2)
    assert s["out_degree"]["histogram"] == {"1": 2, "2": 1}  # 5 -> 7, 9; 7 -> 9; 9 -> 9
    assert s["in_degree"]["max"] == 3  # 9 receives from 5, 7 and itself


def test_graphml_and_command(tmp_path, capsys):
    syn = synapse_rows()
    write_synapses(str(tmp_path / "synapses.csv"), syn)
    write_segments(str(tmp_path / "segments.csv"), segment_rows())
    paths = write_graph(build_graph(syn, None), str(tmp_path / "direct"))
    g = nx.read_graphml(paths["graphml"])
    assert g.number_of_edges() == 4 and g["5"]["7"]["count"] == 2

    assert main(["graph", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["summary"]["connections"] == 4
    for key in ("degrees", "adjacency"):
        with open(result[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    g = nx.read_graphml(result["graphml"])
    assert g.nodes["9"]["class"] == "soma" and g.nodes["9"]["branch_share"] == 0.3
    assert main(["graph", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "3 segments" in text and "4 connections" in text


def test_graph_of_a_directory_without_synapses_is_one_line(tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    assert main(["graph", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "synapses.csv" in err

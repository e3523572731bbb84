"""Build the connectivity graph of an output directory (synapses.csv, segments.csv): tables, GraphML,
a summary (neurons, synapses, connections, degrees) and PNG plots (degree histogram, adjacency)."""

from __future__ import annotations

from connectome.cli.main import print_result


def add_arguments(parser) -> None:
    parser.add_argument("out_dir", help="output directory of `connectome reconstruct` or `connectome synapses`")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import os

    from connectome.core.errors import UserError
    from connectome.graph.build import graph_outputs
    from connectome.graph.summary import describe

    if not os.path.isdir(args.out_dir):
        raise UserError(f"{args.out_dir}: no such output directory")
    _, paths, _, summary = graph_outputs(args.out_dir, plots=not args.no_plots)
    result = {"graph": paths["edges"], "nodes": paths["nodes"], "graphml": paths["graphml"], "summary": summary,
              **{k: v for k, v in paths.items() if k in ("degrees", "adjacency")}}
    plots = f"\nplots: {paths['degrees']} {paths['adjacency']}" if not args.no_plots else ""
    print_result(args, result, f"{describe(summary)}\nedges: {paths['edges']}  GraphML: {paths['graphml']}{plots}")
    return 0

"""The embedded default, end to end: a synthetic EM volume segmented blockwise and scored, its synapses,
neurite types and connectivity graph, and what a viewer shows (meshes, skeletons, pyramids)."""

from __future__ import annotations

import os
import time

from connectome.cli.arg_types import positive_int
from connectome.cli.main import print_result
from connectome.cli.run_options import cluster_settings, start_local_workers_early

SEGMENTATION_STAGES = ("affinities", "fragments", "agglomerate", "merge", "relabel")  # the Mvx/s the demo quotes

SHAPE = (64, 256, 256)
VOXEL_SIZE = (8.0, 8.0, 8.0)
BLOCK_SHAPE = (32, 128, 128)  # 8 blocks, so the demo exercises the seams


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume")
    parser.add_argument("--model", default="synthetic", help="affinity model")
    parser.add_argument("--cluster", default=None, metavar="local|slurm|pbs|tcp://HOST:PORT")
    parser.add_argument("--profile", default=None, metavar="NAME|FILE.yaml", help="cluster profile (e.g. slurm-gpu)")
    parser.add_argument("--workers", type=positive_int, default=None, help="local worker processes (default 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    start_local_workers_early(args)  # (the server's imports run beside the command's own)
    import numpy as np

    from connectome.affinity.segment import plan_segmentation, run_segmentation, segmentation_config
    from connectome.cluster.client import open_client
    from connectome.engine.config import StageConfig
    from connectome.engine.plan import check_output_path
    from connectome.graph.build import graph_outputs
    from connectome.graph.summary import describe
    from connectome.metrics.evaluate import evaluate_volumes
    from connectome.metrics.synapses import synapse_scores
    from connectome.synapses.chain import synapse_outputs, synapse_stages
    from connectome.synth import generate
    from connectome.synth.volume import load_ground_truth

    check_output_path(args.out)  # before the synthetic volume is written into it
    out = os.path.abspath(args.out)
    synth_dir = os.path.join(out, "synth")
    start = time.perf_counter()
    synth_made = not os.path.exists(os.path.join(synth_dir, "ground_truth"))  # (a re-run keeps the one written before)
    if synth_made:
        generate(SHAPE, VOXEL_SIZE, seed=args.seed).save(synth_dir, chunk_shape=BLOCK_SHAPE)
    synth_seconds = time.perf_counter() - start

    cluster = cluster_settings(args)
    config = segmentation_config(os.path.join(synth_dir, "raw"), out, args.model, BLOCK_SHAPE, cluster=cluster)
    viewer = [StageConfig(stage=name) for name in ("meshes", "mesh_manifests", "skeletons", "skeleton_merge",
                                                   "image_pyramid", "label_pyramid")]
    config = config.model_copy(update={"stages": config.stages + synapse_stages() + viewer})
    plan = plan_segmentation(config)
    # lazy: the cluster starts only when a stage has work (a re-run of a finished demo starts none)
    with open_client(cluster, quiet=args.json, lazy=True) as client:
        seg = run_segmentation(plan, client, progress=not args.no_progress)
    metrics = evaluate_volumes(seg["segmentation"], os.path.join(synth_dir, "labels"))
    _, graph_paths, synapses, graph_summary = graph_outputs(out, types=True)
    truth = load_ground_truth(synth_dir).synapses
    found = synapse_scores(np.stack([synapses["z"], synapses["y"], synapses["x"]], 1),
                           np.stack([truth["z"], truth["y"], truth["x"]], 1), 200.0, VOXEL_SIZE)
    summary = {**seg, "raw": os.path.join(synth_dir, "raw"), "ground_truth": os.path.join(synth_dir, "labels"),
               "synth_seconds": round(synth_seconds, 2),
               "metrics": {k: metrics[k] for k in ("voi_split", "voi_merge", "arand", "erl_nm", "max_erl_nm",
                                                   "merges", "splits")},
               **synapse_outputs(out), "graph": graph_paths["edges"], "graph_summary": graph_summary,
               "synapse_detection_200nm": {"precision": found.precision, "recall": found.recall, "f1": found.f1,
                                           "true": int(len(truth))}}
    m = summary["metrics"]
    text = "\n".join([
        f"synthetic EM: {summary['raw']} {list(SHAPE)} voxels at {list(VOXEL_SIZE)} nm "
        + (f"({synth_seconds:.1f} s)" if synth_made else "(written before)"),
        f"segmentation: {seg['segmentation']} ({_work_done(seg, len(plan.stages[0].grid), args.model)})",
        f"VOI split {m['voi_split']:.3f}  merge {m['voi_merge']:.3f}  adapted Rand {m['arand']:.3f}  "
        f"ERL {m['erl_nm']:.0f} nm of {m['max_erl_nm']:.0f} nm  merges {m['merges']}  splits {m['splits']}",
        f"synapses: {summary['synapses']}  detection F1 {found.f1:.2f} (200 nm; {len(truth)} true, "
        f"{len(synapses['z'])} found: too few to judge; held-out figures in benchmarks/results/synapses.md)",
        describe(graph_summary),
        f"graph: {graph_paths['edges']}  plots: {graph_paths['degrees']} {graph_paths['adjacency']}",
        f"view: connectome view {out}   (napari: .venv/bin/pip install -e '.[napari]'; napari --plugin napari-ome-zarr "
        f"{out})",
    ])
    print_result(args, summary, text)
    return 0


def _work_done(seg: dict, blocks: int, model: str) -> str:
    """What the run did: the throughput of the segmentation stages only where all their blocks ran in it."""
    where = f"{blocks} blocks, model {model}"
    if not any(st["ran"] for st in seg["stages"]):
        return f"nothing left to do: every stage finished before; {where}"
    stages = [st for st in seg["stages"] if st["stage"] in SEGMENTATION_STAGES]
    ran, skipped = sum(st["ran"] for st in stages), sum(st["skipped"] for st in stages)
    total = f"all {len(seg['stages'])} stages {seg['seconds']:.0f} s"
    if not skipped:
        seconds = sum(st["seconds"] for st in stages)
        return f"{seg['voxels'] / max(seconds, 1e-9) / 1e6:.2f} Mvx/s for the segmentation stages, {where}; {total}"
    if ran:
        return (f"resumed: {skipped} of {ran + skipped} block runs of the segmentation stages were done before, no "
                f"throughput figure; {where}; {total}")
    return f"the segmentation stages had finished before; {where}; {total}"

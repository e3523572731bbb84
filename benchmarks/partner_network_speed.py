"""What the partner network adds to the `cleft_fragments` work of one block: the block's table
(detect.cleft_table: cleft pieces, votes, interface sums) with and without the network's scores, on
a synthetic volume with the ground-truth cells as the segmentation; candidate patches per second.

    .venv/bin/python benchmarks/partner_network_speed.py --seed 240 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from connectome.synapses import model as M
from connectome.synapses.detect import cleft_table, predict_volume
from connectome.synapses.partner_network import DEFAULT_NETWORK
from connectome.synth import generate
from connectome.synth.options import TissueOptions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=240)
    p.add_argument("--shape", nargs=3, type=int, default=[64, 256, 256])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    vs = (8.0, 8.0, 8.0)
    v = generate(tuple(a.shape), vs, seed=a.seed, tissue=TissueOptions(synapses_per_um3=8.0))
    m = M.load("cleft-synthetic", "cpu")
    prob, vec = predict_volume(m, v.raw)
    times = {}
    for label, network in (("without", None), ("with", DEFAULT_NETWORK)):
        best = float("inf")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            table = cleft_table(prob, vec, v.labels, m.info, vs, raw=v.raw, network=network)
            best = min(best, time.perf_counter() - t0)
        times[label] = best
    scored = int((table["iface_stats"][:, -1] > 0).sum())
    extra = times["with"] - times["without"]
    print(json.dumps({"seed": a.seed, "shape": a.shape, "threads": a.threads, "table_s_without": round(times["without"], 2),
                      "table_s_with": round(times["with"], 2), "candidate_patches": scored,
                      "patches_per_s": round(scored / max(extra, 1e-9), 1),
                      "voxels_per_s_with": round(prob.size / times["with"])}))


if __name__ == "__main__":
    main()

"""Small synapse and segment tables, in the columns of synapses.csv and segments.csv, for the graph tests."""

from __future__ import annotations

import numpy as np


def synapse_rows() -> dict:
    pre = np.array([5, 5, 5, 7, 9, 0, 7], np.uint64)
    post = np.array([7, 7, 9, 9, 9, 7, 0], np.uint64)
    n = len(pre)
    return {"id": np.arange(1, n + 1), "z": np.arange(n), "y": np.zeros(n, int), "x": np.zeros(n, int), "pre": pre,
            "post": post, "score": np.full(n, 0.9), "partner_score": np.ones(n), "size_voxels": np.arange(10, 10 + n),
            "size_nm3": np.arange(10, 10 + n) * 512.0, "autapse": (pre == post) & (post != 0)}


def segment_rows() -> dict:
    return {"id": np.array([5, 7, 9, 11], np.uint64), "size_voxels": np.array([100.0, 200.0, 300.0, 50.0]),
            "class": np.array(["axon", "dendrite", "soma", "glia"], dtype=object), "class_score": np.ones(4),
            "z": np.ones(4), "y": np.full(4, 2.0), "x": np.full(4, 3.0), "out_synapses": np.zeros(4),
            "in_synapses": np.zeros(4), "radius_nm": np.full(4, 40.0), "sholl_points": np.array([3.0, 5.0, 9.0, 0.0]),
            "crossings": np.full(4, 2.0), "branch_share": np.array([0.1, 0.2, 0.3, 0.0]), "tip_share": np.zeros(4)}

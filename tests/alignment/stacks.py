"""Small stacks for the alignment tests: one synthetic EM section under independent noise per
section (so the clean stack is aligned by construction), and helpers to run the chain."""

from __future__ import annotations

import os

import numpy as np

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume

MATCH = {"patch": 64, "stride": 32, "search": 80, "levels": 3}


def clean_stack(sections: int, side: int, noise: float = 4.0, seed: int = 3) -> np.ndarray:
    from connectome.synth import generate

    base = generate((1, side, side), (40.0, 4.0, 4.0), seed=seed).raw.astype(np.float64)
    rng = np.random.default_rng(seed)
    stack = np.repeat(base, sections, axis=0) + rng.normal(0, noise, (sections, side, side))
    return np.clip(np.rint(stack), 0, 255).astype(np.uint8)


def write_stack(path: str, data: np.ndarray, chunks=(4, 64, 64)) -> str:
    vol = create_volume(path, data.shape, data.dtype, chunks, (40.0, 4.0, 4.0))
    vol.write(vol.box, data)
    return path


def align(raw: str, out: str, client, block=(16, 512, 512), chunks=(4, 64, 64), match=None, solve=None):
    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=block, chunk_shape=chunks),
                       cluster=ClusterConfig(),
                       stages=[StageConfig(stage="align_match", params=match or MATCH),
                               StageConfig(stage="align", params=solve or {})])
    plan = plan_run(config)
    reports = execute(plan, client, progress=False)
    with np.load(os.path.join(out, "alignment", "transforms.npz")) as f:
        transforms = {k: f[k] for k in f.files}
    return plan, reports, transforms

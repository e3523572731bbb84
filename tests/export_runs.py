"""Small segmented outputs for the export tests: a chain of stages on a synthetic volume, with meshes,
skeletons, segment properties and synapse/segment tables (the fixture is registered in tests/conftest.py)."""

from __future__ import annotations

import pytest

BLOCK = (32, 64, 64)  # 4 blocks: meshes and skeletons are joined across block faces


def run_stages(raw: str, out: str, stages: list[str], client, block=BLOCK) -> None:
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=block), cluster=ClusterConfig(),
                       stages=[StageConfig(stage=s) for s in stages])
    execute(plan_run(config), client, progress=False)

SHAPE = (32, 128, 128)
MORPHOLOGY = ["meshes", "mesh_manifests", "skeletons", "skeleton_merge"]



@pytest.fixture(scope="session")
def segmented_output(tmp_path_factory, client):
    """A synthetic volume segmented by the affinity chain, with meshes, skeletons, segment properties and
    the segmentation's pyramid."""
    from connectome.synth import generate

    out = tmp_path_factory.mktemp("view") / "out"
    generate(SHAPE, (8.0, 8.0, 8.0), seed=0).save(str(out / "synth"), chunk_shape=BLOCK)
    raw = str(out / "synth" / "raw")
    run_stages(raw, str(out), ["affinities", "fragments", "agglomerate", "relabel"], client)
    run_stages(raw, str(out), MORPHOLOGY + ["label_pyramid"], client)
    write_tables(out)
    return out


def write_tables(out) -> None:
    """A synapse table and a segment table in the formats of the synapse chain and the neurite_types
    stage (made after the meshes, as a re-run of those stages would): synapses at voxels of the
    largest segments, each segment's class by its id."""
    import numpy as np

    from connectome.io import open_volume
    from connectome.neurites.types import SEGMENT_COLUMNS
    from connectome.synapses.table import COLUMNS, write_synapses

    labels = open_volume(str(out / "segmentation")).read(open_volume(str(out / "segmentation")).box)
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    rng = np.random.default_rng(0)
    largest = ids[np.argsort(-sizes)][:4]
    points = np.concatenate([np.argwhere(labels == s)[rng.choice(int((labels == s).sum()), 3, replace=False)]
                             for s in largest])
    n = len(points)
    pre = labels[tuple(points.T)]
    rows = {"id": np.arange(1, n + 1), "z": points[:, 0], "y": points[:, 1], "x": points[:, 2], "pre": pre,
            "post": np.roll(pre, 3), "score": rng.uniform(0.5, 1, n), "partner_score": rng.uniform(0, 1, n),
            "size_voxels": np.full(n, 100), "size_nm3": np.full(n, 51200.0), "autapse": np.zeros(n, bool)}
    write_synapses(str(out / "synapses.csv"), {c: rows[c] for c in COLUMNS})
    classes = ("axon", "dendrite", "glia")
    with open(out / "segments.csv", "w") as f:
        f.write(",".join(SEGMENT_COLUMNS) + "\n")
        for i, s in zip(ids, sizes):
            # every fifth holds no Sholl lattice point: its branching is not measured (empty cells)
            sholl = f"4,2.000,{int(i) % 4 / 4:.3f},0.000" if i % 5 else "0,,,"
            f.write(f"{i},{s},{classes[int(i) % 3]},0.9,0,0,0,0,0,{10 + int(i) % 7}.0,{sholl}\n")

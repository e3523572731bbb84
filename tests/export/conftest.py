"""The `browser` marker, and one small segmented output with meshes, skeletons and properties."""

from __future__ import annotations

import pytest
from export_runs import BLOCK, run_stages

SHAPE = (32, 128, 128)
MORPHOLOGY = ["meshes", "mesh_manifests", "skeletons", "skeleton_merge"]


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: loads `connectome view` in headless Chromium")


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
    return out

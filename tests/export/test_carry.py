"""A segmentation ingested into a precomputed layer takes its meshes, skeletons and segment properties along."""

from __future__ import annotations

import json

import numpy as np

from connectome.cli.main import main


def test_ingest_to_precomputed_carries_meshes_skeletons_and_properties(segmented_output, tmp_path, capsys):
    """(audit45) Nothing linked a precomputed segmentation to its meshes: `CloudVolume(layer).mesh.get` failed
    ("missing corresponding mesh manifests") on a layer ingested from an output directory with meshes. Now the layer
    holds them (mesh/, skeletons/, segment_properties/) and its info names them; a volume the meshes were not made
    of (the fragments) carries nothing."""
    from cloudvolume import CloudVolume

    from connectome.export.layers import find_layers
    from connectome.morphology.mesh_format import read_fragments
    from connectome.morphology.skeleton_format import read_skeleton

    out = segmented_output
    layer = tmp_path / "seg"
    argv = ["ingest", str(out / "segmentation"), f"precomputed://file://{layer}", "--workers", "1", "--no-progress",
            "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["carried"] == ["mesh", "segment_properties", "skeletons"]
    info = json.loads((layer / "info").read_text())
    assert (info["mesh"], info["skeletons"], info["segment_properties"]) == ("mesh", "skeletons", "segment_properties")
    assert json.loads((layer / "mesh" / "info").read_text())["segment_properties"] == "../segment_properties"

    sizes = find_layers(str(out)).segment_sizes()
    largest = max(sizes, key=lambda i: sizes[i])
    cv = CloudVolume(f"file://{layer}", progress=False)
    mesh = cv.mesh.get([largest])[largest]
    ours = np.concatenate([v for v, _ in read_fragments(str(out / "meshes"), largest)])
    assert len(mesh.vertices) > 0 and np.allclose(mesh.vertices.min(0), ours.min(0), atol=1.0)
    assert np.allclose(mesh.vertices.max(0), ours.max(0), atol=1.0)  # both corners: the whole mesh, in place
    skeleton = cv.skeleton.get(largest)
    vertices, edges, _ = read_skeleton(str(out / "skeletons"), largest)
    assert len(skeleton.vertices) > 1 and skeleton.vertices.shape == vertices.shape
    np.testing.assert_allclose(skeleton.vertices, vertices, atol=1e-3)  # the same nodes, in the same nm
    assert len(skeleton.edges) == len(edges)
    assert main(argv) == 0  # again: nothing to write, the links stay
    assert json.loads(capsys.readouterr().out)["skipped"] > 0 and json.loads((layer / "info").read_text())["mesh"]

    other = tmp_path / "fragments"
    assert main(["ingest", str(out / "fragments"), f"precomputed://file://{other}", "--workers", "1",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["carried"] == []
    assert "mesh" not in json.loads((other / "info").read_text()) and not (other / "mesh").exists()

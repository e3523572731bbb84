"""Meshes and skeletons made in blocks and joined per object, against the same made in one block."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from connectome.export.sharding import read_value
from connectome.io import create_volume
from connectome.morphology.mesh_format import decode_manifest, read_fragments, read_mesh
from connectome.morphology.properties import read_sizes
from connectome.morphology.skeleton_format import read_skeleton

SHAPE = (32, 64, 64)
SMALL = (16, 32, 32)  # 8 blocks


def _labels() -> np.ndarray:
    """Three objects that cross block faces: a tube along x, a ball on a block corner, a slab along z."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    labels = np.zeros(SHAPE, np.uint64)
    labels[((y - 20) ** 2 + (z - 10) ** 2) <= 16] = 7  # tube through both x blocks
    labels[((z - 16) ** 2 + (y - 32) ** 2 + (x - 32) ** 2) <= 64] = 2**40 + 3  # ball on the centre corner
    labels[(x >= 50) & (x < 56) & (y >= 40) & (y < 60)] = 9  # slab through every z block
    return labels


def _run(out, block, stages, client, simplify=0, segmentation=None):
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    params = {"meshes": {"simplify": simplify}}
    config = RunConfig(input=segmentation or str(out / "segmentation"), output=str(out), blocks=BlocksConfig(shape=block),
                       cluster=ClusterConfig(), stages=[StageConfig(stage=s, params=params.get(s, {}),
                                                        inputs={"segmentation": segmentation} if segmentation else {})
                                            for s in stages])
    return execute(plan_run(config), client, progress=False)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, client):
    labels = _labels()
    made = {}
    for name, block in (("blocks", SMALL), ("one", SHAPE)):
        out = tmp_path_factory.mktemp(name)
        vol = create_volume(str(out / "segmentation"), SHAPE, np.uint64, SMALL, (8.0, 8.0, 8.0))
        vol.write(vol.box, labels)
        _run(out, block, ["meshes", "mesh_manifests", "skeletons", "skeleton_merge"], client)
        made[name] = out
    return labels, made


def _triangles(directory, label) -> set:
    vertices, triangles = read_mesh(str(directory), label)
    # unsimplified marching cubes puts vertices on a half-voxel grid (4 nm); the stored fragments are
    # quantized finer than an eighth of a voxel, so snapping to that grid gives the exact surface back
    corners = np.round(vertices[triangles] / 4).astype(np.int64)  # (m, 3 corners, xyz)
    # a triangle as the set of its corners, whatever the winding's start
    return {tuple(sorted(map(tuple, t))) for t in corners}


def test_unsimplified_block_meshes_equal_the_whole_volume_mesh(outputs):
    labels, made = outputs
    for label in (7, 2**40 + 3, 9):
        blocks, one = _triangles(made["blocks"] / "meshes", label), _triangles(made["one"] / "meshes", label)
        assert len(one) > 100
        assert blocks == one  # fragments of 2-8 blocks are, together, exactly the one-block surface
    info = json.loads((made["blocks"] / "meshes" / "info").read_text())
    assert info["@type"] == "neuroglancer_multilod_draco" and "sharding" in info
    manifest, _, _ = read_value(str(made["blocks"] / "meshes"), 2**40 + 3, info["sharding"])
    positions = decode_manifest(manifest)["positions"][0]
    # the ball's fragments of all eight blocks, one manifest, at the blocks' grid positions (x y z)
    assert sorted(map(tuple, positions.tolist())) == [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    assert len(os.listdir(made["blocks"] / "meshes")) < 8  # info and a few shard files, not a file per fragment


def test_mesh_is_closed_and_in_nanometres(outputs):
    labels, made = outputs
    vertices, triangles = read_mesh(str(made["blocks"] / "meshes"), 9)
    # the slab spans x 50..56, y 40..60, z 0..32 voxels of 8 nm; surfaces lie between voxel centres
    lo, hi = vertices.min(0), vertices.max(0)
    np.testing.assert_allclose(lo, [50 * 8, 40 * 8, 0], atol=8.01)  # (the volume's face: moved half a voxel in)
    np.testing.assert_allclose(hi, [56 * 8, 60 * 8, 32 * 8], atol=8.01)
    # closed at the volume's faces: every edge belongs to exactly two triangles once shared vertices are merged
    key = {tuple(v): i for i, v in enumerate(map(tuple, np.round(vertices, 3)))}
    ids = np.array([key[tuple(v)] for v in map(tuple, np.round(vertices, 3))])
    t = ids[triangles]
    edges = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()


def test_coarser_levels_of_detail_form_the_octree_above_the_block_fragments(outputs):
    from scipy.spatial import cKDTree

    labels, made = outputs
    directory = str(made["blocks"] / "meshes")
    info = json.loads((made["blocks"] / "meshes" / "info").read_text())
    for label in (7, 2**40 + 3, 9):
        manifest = decode_manifest(read_value(directory, label, info["sharding"])[0])
        scales, positions = manifest["lod_scales"], manifest["positions"]
        assert len(positions) == len(scales) == 3  # the stage's default: two levels above the blocks'
        assert (np.diff(scales) > 0).all() and scales[0] > 0  # Neuroglancer needs them non-decreasing
        assert not manifest["vertex_offsets"].any()
        finest, _ = read_mesh(directory, label)
        tree = cKDTree(finest)
        triangles = [len(read_mesh(directory, label, 0)[1])]
        for k in range(1, len(scales)):
            # every level-0 fragment has its ancestor at level k (Neuroglancer descends the octree from
            # the top), and level k holds nothing else
            cells = sorted(map(tuple, positions[k].tolist()))
            assert cells == sorted(set(map(tuple, (positions[0] >> k).tolist())))
            cell = manifest["chunk"] * 2**k
            for position, (vertices, faces) in zip(positions[k], read_fragments(directory, label, k)):
                if len(faces) == 0:
                    continue
                lower = manifest["origin"] + position * cell
                assert (vertices >= lower - 1e-3).all() and (vertices <= lower + cell + 1e-3).all()
                # a coarser surface stays within its error (plus a voxel) of the finest one
                assert tree.query(vertices)[0].max() <= scales[k] + 8
            triangles.append(sum(len(f) for _, f in read_fragments(directory, label, k)))
        assert triangles[0] > triangles[1] > triangles[2] > 0, triangles
    # the ball's eight block fragments share one cell at level 1: merged into one fragment there
    manifest = decode_manifest(read_value(directory, 2**40 + 3, info["sharding"])[0])
    assert len(manifest["positions"][0]) == 8 and manifest["positions"][1].tolist() == [[0, 0, 0]]


def test_skeletons_are_joined_across_blocks(outputs):
    labels, made = outputs
    for label in (7, 9):
        v, e, r = read_skeleton(str(made["blocks"] / "skeletons"), label)
        v1, e1, _ = read_skeleton(str(made["one"] / "skeletons"), label)
        assert len(v) > 5 and len(r) == len(v) and (r > 0).all()
        assert _components(len(v), e) == 1  # one skeleton, not one piece per block
        length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).sum()
        length1 = np.linalg.norm(v1[e1[:, 0]] - v1[e1[:, 1]], axis=1).sum()
        assert abs(length - length1) < 0.15 * length1
    v, e, _ = read_skeleton(str(made["blocks"] / "skeletons"), 7)
    assert v[:, 0].max() - v[:, 0].min() > 0.8 * SHAPE[2] * 8  # the tube's skeleton runs along x
    # (audit45) one file per object, most of them empty, before: now the info and its shard files
    for kind in ("blocks", "one"):
        folder = made[kind] / "skeletons"
        info = json.loads((folder / "info").read_text())
        shards = 2 ** info["sharding"]["shard_bits"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(["info", *(f"{i:x}.shard" for i in range(shards))])


def test_segment_sizes(outputs):
    labels, made = outputs
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    expected = {int(i): int(c) for i, c in zip(ids, counts)}
    assert read_sizes(str(made["blocks"] / "segment_properties")) == expected
    assert read_sizes(str(made["one"] / "segment_properties")) == expected


@pytest.mark.parametrize("kind", ["zarr", "precomputed"])
def test_meshes_and_skeletons_sit_at_the_volumes_world_offset(outputs, client, tmp_path, kind):
    """A segmentation that starts away from the world's origin (a section range's zarr, a precomputed voxel_offset):
    meshes and skeletons are where Neuroglancer draws its voxels, i.e. the offset-0 ones moved by offset x voxel size,
    and the offset is in the stages' fingerprints (a run placed before it was applied is reported as changed)."""
    from connectome.engine.markers import DoneMarkers

    labels, made = outputs
    offset = (20, 3, 5)  # z y x voxels
    shift = np.array(offset[::-1], float) * 8  # x y z nm
    address = str(tmp_path / "segmentation") if kind == "zarr" else f"precomputed://file://{tmp_path / 'segmentation'}"
    vol = create_volume(address, SHAPE, np.uint64, SMALL, (8.0, 8.0, 8.0), offset=offset)
    vol.write(vol.box, labels)
    _run(tmp_path, SMALL, ["meshes", "mesh_manifests", "skeletons", "skeleton_merge"], client, segmentation=address)
    for label in (7, 2**40 + 3, 9):
        moved, placed = read_mesh(str(tmp_path / "meshes"), label), read_mesh(str(made["blocks"] / "meshes"), label)
        np.testing.assert_array_equal(moved[1], placed[1])
        np.testing.assert_allclose(moved[0], placed[0] + shift, atol=0.05)
    for label in (7, 9):
        moved_v, moved_e, _ = read_skeleton(str(tmp_path / "skeletons"), label)
        v, e, _ = read_skeleton(str(made["blocks"] / "skeletons"), label)
        np.testing.assert_array_equal(moved_e, e)
        np.testing.assert_allclose(moved_v, v + shift, atol=1e-3)
    for stage in ("meshes", "skeletons"):
        assert DoneMarkers(str(tmp_path), stage).fingerprint()["world_offset"] == list(offset)
        assert "world_offset" not in DoneMarkers(str(made["blocks"]), stage).fingerprint()


def test_a_plan_that_makes_the_segmentation_and_its_meshes_plans_on_a_fresh_output(tmp_path):
    """Meshes and skeletons in the same run config as the stage that writes the segmentation (the demo, the README's
    viewer stages): the offset comes from the plan, not from a volume that does not exist yet."""
    from connectome.affinity.agglomerate import EDGES_FORMAT
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import check_plan_resumable, plan_run
    from connectome.io.tables import write_format

    fragments = create_volume(str(tmp_path / "fragments"), SHAPE, np.uint64, SMALL, (8.0, 8.0, 8.0), offset=(7, 0, 3))
    # the region graph an agglomerate run left (a plan whose relabel reads no edges tables is refused up front)
    write_format(str(tmp_path / "out" / "tables" / "edges"), "edges", EDGES_FORMAT, {"stage": "agglomerate"})
    stages = [StageConfig(stage="relabel", inputs={"fragments": fragments.address}),
              *(StageConfig(stage=s) for s in ("meshes", "mesh_manifests", "skeletons", "skeleton_merge"))]
    config = RunConfig(input=fragments.address, output=str(tmp_path / "out"), blocks=BlocksConfig(shape=SMALL),
                       cluster=ClusterConfig(), stages=stages)
    plan = plan_run(config)
    check_plan_resumable(plan, False)
    assert not (tmp_path / "out" / "segmentation").exists()
    by_name = {p.stage.name: p.stage for p in plan.stages}
    assert by_name["meshes"].fingerprint()["world_offset"] == [7, 0, 3]
    assert by_name["skeletons"].fingerprint()["world_offset"] == [7, 0, 3]


def test_resume_skips_finished_blocks(outputs, client):
    _, made = outputs
    meshes = made["blocks"] / "meshes"

    def files() -> dict:
        return {str(p.relative_to(meshes)): (p.stat().st_mtime_ns, p.read_bytes()) for p in meshes.rglob("*")
                if p.is_file()}

    before = files()
    reports = _run(made["blocks"], SMALL, ["meshes", "mesh_manifests"], client)
    assert all(r.ran == 0 and r.skipped == r.blocks > 0 for r in reports), [r.to_json() for r in reports]
    assert os.path.exists(meshes / "info") and len(before) > 1
    assert files() == before  # nothing rewritten, not even with the same bytes


def _components(n: int, edges: np.ndarray) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[0]

"""Morphology stages: `meshes` and `skeletons` (fragments per block), `mesh_manifests` and
`skeleton_merge` (one mesh / skeleton per object, joined across blocks, plus segment properties).

Files go to the run's output directory: `meshes/` (precomputed legacy meshes), `skeletons/`
(precomputed skeletons with radius) and `segment_properties/`; block tables and indexes to `tables/`.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
from pydantic import Field

from connectome.core.geometry import Block, Box, Context
from connectome.engine.global_step import GlobalStep
from connectome.engine.registry import register
from connectome.engine.stage import BlockStage, Input, StageParams, Table
from connectome.io import Volume
from connectome.io.tables import save_table
from connectome.morphology import mesh_format, skeleton_format
from connectome.morphology.fragment_index import build_index, load_index, owned, save_index
from connectome.morphology.meshing import mesh_block
from connectome.morphology.properties import segment_properties, write_segment_properties
from connectome.morphology.skeletonizing import join_fragments, skeletonize_block, unpack, with_empty

LABELS = Input("segmentation", dtypes=("uint32", "uint64"))
MESH_TABLE = Table("mesh_fragments", 1)
SKELETON_TABLE = Table("skeleton_fragments", 1)
MESHES, SKELETONS, PROPERTIES = "meshes", "skeletons", "segment_properties"


def output_dir(stage: BlockStage, table: str) -> str:
    """The run's output directory (tables live in `<output>/tables/<name>`)."""
    return os.path.dirname(os.path.dirname(os.path.normpath(stage.table_dirs[table])))


def _box_row(box: Box) -> np.ndarray:
    return np.array([*box.offset, *box.end], np.int64)


def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import fastremap

    ids, counts = fastremap.unique(labels, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.uint64), counts[keep].astype(np.int64)


class MeshParams(StageParams):
    simplify: int = Field(10, ge=0, description="triangle reduction factor of the simplification (0 or 1: none)")
    max_error_nm: float = Field(0.0, ge=0, description="largest vertex displacement of the simplification "
                                                        "(0: the voxel's smallest side)")


@register
class MeshStage(BlockStage[MeshParams]):
    """Surface mesh fragments of every object in each block, one file per object and block."""

    name = "meshes"
    Params = MeshParams
    inputs = (LABELS,)
    tables = (MESH_TABLE,)

    def context(self) -> Context:
        return Context(upper=(1, 1, 1))  # one voxel of overlap: neighbouring blocks' surfaces meet

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        seg = volumes["segmentation"]
        labels = seg.read(block.read_box)
        directory = os.path.join(output_dir(self, MESH_TABLE.name), MESHES)
        os.makedirs(directory, exist_ok=True)
        ids, triangles = [], 0
        for label, vertices, faces in mesh_block(labels, block.read_box, seg.box, seg.meta.voxel_size,
                                                 self.params.simplify, self.params.max_error_nm):
            mesh_format.write_atomic(os.path.join(directory, mesh_format.fragment_name(label, block.write_box)),
                                     mesh_format.encode_fragment(vertices, faces))
            ids.append(label)
            triangles += len(faces)
        meshed = np.array(sorted(ids), np.uint64)
        inside, voxels = _counts(labels[block.write_box.relative_to(block.read_box)])
        all_ids = np.union1d(meshed, inside)
        sizes = np.zeros(all_ids.size, np.int64)
        sizes[np.searchsorted(all_ids, inside)] = voxels
        save_table(self.table_dirs[MESH_TABLE.name], block.index, ids=all_ids, voxels=sizes,
                   meshed=np.isin(all_ids, meshed), write_box=_box_row(block.write_box))
        return {"objects": int(meshed.size), "triangles": triangles}


class IndexStep(GlobalStep):
    """Index the fragment tables (which blocks hold which object); for meshes also the segment sizes."""

    kind = MESHES

    def __init__(self, tables_dir: str, path: str, out_dir: str):
        self.tables_dir, self.path, self.out_dir = tables_dir, path, out_dir

    def fingerprint(self) -> dict:
        return {"step": self.name, "tables": self.tables_dir, "index": self.path}

    def run(self) -> dict:
        meshes = self.kind == MESHES
        index = build_index(self.tables_dir, sizes=meshes)
        save_index(self.path, index)
        if meshes:
            mesh_format.write_info(os.path.join(self.out_dir, MESHES))
            write_segment_properties(os.path.join(self.out_dir, PROPERTIES),
                                     segment_properties(index["ids"], index["voxels"]))
        else:
            skeleton_format.write_info(os.path.join(self.out_dir, SKELETONS))
        return {"objects": int(index["ids"].size), "fragments": int(index["blocks"].size)}


class MeshIndexStep(IndexStep):
    name = "mesh_index"


class SkeletonIndexStep(IndexStep):
    name = "skeleton_index"
    kind = SKELETONS


class NoParams(StageParams):
    pass


@register
class MeshManifestStage(BlockStage[NoParams]):
    """One manifest per object listing its fragments of every block (Neuroglancer loads them as one
    mesh), and the segment properties (size); objects are split among blocks by where they start."""

    name = "mesh_manifests"
    Params = NoParams
    inputs = (LABELS,)
    reads_tables = (MESH_TABLE,)

    def index_path(self) -> str:
        return os.path.join(os.path.dirname(self.table_dirs[MESH_TABLE.name]), "mesh_index.npz")

    def global_step(self) -> IndexStep:
        return MeshIndexStep(self.table_dirs[MESH_TABLE.name], self.index_path(), output_dir(self, MESH_TABLE.name))

    def open_volumes(self) -> dict[str, Volume]:
        return {}  # reads the index only

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        index = load_index(self.index_path())
        directory = os.path.join(output_dir(self, MESH_TABLE.name), MESHES)
        boxes = index["boxes"]
        objects = owned(index, block.write_box)
        wanted = np.array([label for label, _ in objects], np.uint64)
        meshed = _meshed_blocks(self.table_dirs[MESH_TABLE.name], objects, wanted)
        for label, blocks in objects:
            names = [mesh_format.fragment_name(label, Box.from_corners(boxes[b, :3].tolist(), boxes[b, 3:].tolist()))
                     for b in blocks if (label, int(b)) in meshed]
            mesh_format.write_manifest(directory, label, names)
        return {"objects": len(objects)}


def _meshed_blocks(tables_dir: str, objects: list[tuple[int, np.ndarray]], wanted: np.ndarray) -> set:
    """(id, block) pairs among `objects` whose block wrote a mesh fragment (not only voxels) of the id."""
    sources = sorted({int(b) for _, blocks in objects for b in blocks})
    out = set()
    for b in sources:
        with np.load(os.path.join(tables_dir, f"{b}.npz")) as t:
            ids, meshed = t["ids"], t["meshed"]
        for label in ids[meshed & np.isin(ids, wanted)]:
            out.add((int(label), b))
    return out


class SkeletonParams(StageParams):
    dust_voxels: int = Field(100, ge=0, description="skip objects with fewer voxels in a block")
    scale: float = Field(1.5, gt=0, description="TEASAR invalidation radius: scale x distance to the boundary")
    const_nm: float = Field(300.0, ge=0, description="TEASAR invalidation radius: plus this many nm")


@register
class SkeletonStage(BlockStage[SkeletonParams]):
    """Skeleton fragments (kimimaro) of every object in each block, with a vertex at the centre of
    each cross-section on the block's faces where the neighbouring block's fragment meets it."""

    name = "skeletons"
    Params = SkeletonParams
    inputs = (LABELS,)
    tables = (SKELETON_TABLE,)

    def context(self) -> Context:
        return Context(upper=(1, 1, 1))  # the shared face plane: both blocks place the same vertex there

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        seg = volumes["segmentation"]
        p = self.params
        labels = seg.read(block.read_box)
        packed = skeletonize_block(labels, block.read_box, seg.meta.voxel_size, p.dust_voxels, p.scale, p.const_nm)
        packed = with_empty(packed, _counts(labels[block.write_box.relative_to(block.read_box)])[0])
        save_table(self.table_dirs[SKELETON_TABLE.name], block.index, write_box=_box_row(block.write_box), **packed)
        return {"objects": int((packed["vertex_counts"] > 0).sum()), "vertices": int(packed["vertices"].shape[0])}


class SkeletonMergeParams(StageParams):
    dust_nm: float = Field(0.0, ge=0, description="drop joined skeleton components shorter than this")
    tick_nm: float = Field(0.0, ge=0, description="remove side branches shorter than this")


@register
class SkeletonMergeStage(BlockStage[SkeletonMergeParams]):
    """One skeleton per object from its fragments in every block; objects are split among blocks by
    where they start, so a task holds only the fragments of the objects it joins."""

    name = "skeleton_merge"
    Params = SkeletonMergeParams
    inputs = (LABELS,)
    reads_tables = (SKELETON_TABLE,)

    def index_path(self) -> str:
        return os.path.join(os.path.dirname(self.table_dirs[SKELETON_TABLE.name]), "skeleton_index.npz")

    def global_step(self) -> IndexStep:
        return SkeletonIndexStep(self.table_dirs[SKELETON_TABLE.name], self.index_path(),
                                 output_dir(self, SKELETON_TABLE.name))

    def open_volumes(self) -> dict[str, Volume]:
        return {}  # reads the tables only

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        index = load_index(self.index_path())
        objects = owned(index, block.write_box)
        wanted = np.array([label for label, _ in objects], np.uint64)
        fragments: dict[int, list] = defaultdict(list)
        tables_dir = self.table_dirs[SKELETON_TABLE.name]
        for b in sorted({int(b) for _, blocks in objects for b in blocks}):
            with np.load(os.path.join(tables_dir, f"{b}.npz")) as f:
                table = {k: f[k] for k in f.files}
            for label, fragment in unpack(table, wanted).items():
                fragments[label].append(fragment)
        directory = os.path.join(output_dir(self, SKELETON_TABLE.name), SKELETONS)
        vertices = 0
        for label in wanted:
            v, e, r = join_fragments(fragments[int(label)], self.params.dust_nm, self.params.tick_nm)
            skeleton_format.write_skeleton(directory, int(label), v, e, r)
            vertices += len(v)
        return {"objects": int(wanted.size), "vertices": vertices}

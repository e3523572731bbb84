"""Morphology stages: `meshes` and `skeletons` (fragments per block), `mesh_manifests` and
`skeleton_merge` (one mesh / skeleton per object, joined across blocks, plus segment properties).

Files go to the run's output directory: `meshes/` (Neuroglancer's multi-resolution Draco meshes in a
few shard files), `skeletons/` (precomputed skeletons with radius) and `segment_properties/` (size;
class and synapse counts where segments.csv / synapses.csv exist); block tables (with the meshes'
packed Draco fragments, `<block>.bin`) and indexes to `tables/`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import BinaryIO

import numpy as np
from pydantic import Field

from connectome.core.errors import UserError
from connectome.core.geometry import Block, Box, Context
from connectome.engine.global_step import GlobalStep
from connectome.engine.registry import register
from connectome.engine.stage import BlockStage, Input, StageParams, Table
from connectome.export import sharding
from connectome.io import Volume
from connectome.io.tables import save_table
from connectome.morphology import mesh_format, skeleton_format
from connectome.morphology.fragment_index import block_tables, build_index, load_index, owned_shards, save_index
from connectome.morphology.meshing import lod_error, mesh_block_levels
from connectome.morphology.properties import from_tables, write_segment_properties
from connectome.morphology.skeletonizing import join_fragments, skeletonize_block, unpack, with_empty

LABELS = Input("segmentation", dtypes=("uint32", "uint64"))
MESH_TABLE = Table("mesh_fragments", 1)
SKELETON_TABLE = Table("skeleton_fragments", 1)
MESHES, SKELETONS, PROPERTIES = "meshes", "skeletons", "segment_properties"


def output_dir(stage: BlockStage, table: str) -> str:
    """The run's output directory (tables live in `<output>/tables/<name>`)."""
    return os.path.dirname(os.path.dirname(os.path.normpath(stage.table_dirs[table])))


class WorldPlaced:
    """A stage whose output is in the world's nm: the segmentation's offset (`VolumeMeta.offset`, where its first
    voxel sits) goes into its vertices, and into its fingerprint where it is not 0, so that a run made before
    the offset was applied (its vertices placed as if the volume started at 0) is reported as changed."""

    input_addresses: dict[str, str]
    _world_offset: tuple[int, int, int] | None = None

    def check_inputs(self, inputs: dict) -> None:
        """Keep the segmentation's offset from the plan's metadata (the volume may be an output of the same plan,
        not written yet, when the fingerprint is first asked for)."""
        super().check_inputs(inputs)  # type: ignore[misc]
        z, y, x = (int(v) for v in inputs[LABELS.name].offset)
        self._world_offset = (z, y, x)

    def world_offset(self) -> tuple[int, int, int]:
        if self._world_offset is not None:
            return self._world_offset
        from connectome.io import open_volume

        z, y, x = (int(v) for v in open_volume(self.input_addresses[LABELS.name]).meta.offset)
        return z, y, x

    def fingerprint(self) -> dict:
        fp = super().fingerprint()  # type: ignore[misc]
        offset = self.world_offset()
        if any(offset):
            fp["world_offset"] = list(offset)
        return fp


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
    lods: int = Field(3, ge=1, le=8, description="levels of detail: the blocks' meshes, then each coarser level in "
                                                 "octree cells twice as large, 4x fewer triangles, twice the error")


def _grid_step(block: Block, volume: Box) -> np.ndarray:
    """The block grid's step (z, y, x voxels) from a block's place in it; on axes where it is the first
    block, its own shape (there it is a whole block, or the only one)."""
    shift = np.array(block.write_box.offset) - np.array(volume.offset)
    place = np.array(block.grid_position)
    return np.where(place > 0, shift // np.maximum(place, 1), np.array(block.write_box.shape))


@register
class MeshStage(WorldPlaced, BlockStage[MeshParams]):
    """Surface meshes of every object in each block, Draco-encoded in the block's chunk of the mesh grid
    (level of detail 0) and, simplified more, in the coarser octree cells that contain it (levels 1..),
    packed into one file per block (`tables/mesh_fragments/<block>.bin`)."""

    name = "meshes"
    Params = MeshParams
    inputs = (LABELS,)
    tables = (MESH_TABLE,)

    def context(self) -> Context:
        return Context(upper=(1, 1, 1))  # one voxel of overlap: neighbouring blocks' surfaces meet

    def process(self, block: Block, volumes: dict[str, Volume]) -> dict:
        seg = volumes["segmentation"]
        labels = seg.read(block.read_box)
        res = np.array(seg.meta.voxel_size, np.float64)[::-1]  # x y z
        shift = np.array(block.write_box.offset) - np.array(seg.box.offset)
        stride = _grid_step(block, seg.box)
        position = (shift // stride)[::-1]
        chunk = stride[::-1] * res
        world = seg.meta.offset
        origin = (np.array(world)[::-1] + 0.5) * res  # the voxel centre of the volume's first voxel, world nm
        bits = mesh_format.quantization_bits(chunk, res)
        p = self.params
        cells = [(origin + (position >> k) * chunk * 2**k, chunk * 2**k) for k in range(p.lods)]
        ids, parts, triangles = [], [], 0
        for label, levels in mesh_block_levels(labels, block.read_box, seg.box, seg.meta.voxel_size, p.simplify,
                                               p.max_error_nm, p.lods, world):
            ids.append(label)
            parts.append([mesh_format.encode_fragment(v, f, lower, cell, bits) if len(f) else b""
                          for (v, f), (lower, cell) in zip(levels, cells)])
            triangles += len(levels[0][1])
        tables_dir = self.table_dirs[MESH_TABLE.name]
        mesh_format.write_atomic(os.path.join(tables_dir, f"{block.index}.bin"),
                                 b"".join(b"".join(levels) for levels in parts))
        inside, voxels = _counts(labels[block.write_box.relative_to(block.read_box)])
        meshed = np.array(ids, np.uint64)
        all_ids = np.union1d(meshed, inside)
        sizes = np.zeros(all_ids.size, np.int64)
        sizes[np.searchsorted(all_ids, inside)] = voxels
        # per object and level of detail: its fragment's byte length and offset in the block's .bin
        lengths, offsets = (np.zeros((all_ids.size, p.lods), np.int64) for _ in range(2))
        at = np.searchsorted(all_ids, meshed)
        flat = np.array([[len(b) for b in levels] for levels in parts], np.int64).reshape(-1, p.lods)
        lengths[at] = flat
        offsets[at] = (np.cumsum(flat.ravel()) - flat.ravel()).reshape(flat.shape)
        scales = [lod_error(k, p.max_error_nm, res.tolist()) for k in range(p.lods)]
        save_table(tables_dir, block.index, ids=all_ids, voxels=sizes, meshed=lengths[:, 0] > 0, offsets=offsets,
                   lengths=lengths, position=position.astype(np.int64), chunk_nm=chunk, origin_nm=origin,
                   bits=np.int64(bits), lod_scales=np.array(scales, np.float64),
                   write_box=_box_row(block.write_box))
        return {"objects": int(meshed.size), "triangles": triangles}


class IndexStep(GlobalStep):
    """Index the fragment tables (which blocks hold which object); for meshes also the segment sizes,
    the sharding of the meshes (written to their `info`) and which block writes which shard."""

    kind = MESHES

    def __init__(self, tables_dir: str, path: str, out_dir: str):
        self.tables_dir, self.path, self.out_dir = tables_dir, path, out_dir

    def fingerprint(self) -> dict:
        return {"step": self.name, "tables": self.tables_dir, "index": self.path}

    def run(self) -> dict:
        meshes = self.kind == MESHES
        index = build_index(self.tables_dir, sizes=meshes)
        if meshes:
            spec = _mesh_sharding(self.tables_dir, index, os.path.join(self.out_dir, MESHES))
        else:  # (a joined skeleton is about as large as its fragments' tables)
            total = sum(os.path.getsize(path) for _, path in block_tables(self.tables_dir))
            spec = sharding.sharding_spec(int(index["ids"].size), total)
            skeleton_format.write_info(os.path.join(self.out_dir, SKELETONS), spec)
        index.update(_shard_plan(index, spec))
        save_index(self.path, index)
        if meshes:
            write_segment_properties(os.path.join(self.out_dir, PROPERTIES),
                                     from_tables(self.out_dir, index["ids"], index["voxels"]))
        return {"objects": int(index["ids"].size), "fragments": int(index["blocks"].size)}


def _shard_plan(index: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """Each object's shard, and per shard the corner of the block that writes it (its first object's owner; an
    empty shard's: the first block, which writes it empty, so that every shard file exists)."""
    shard, _ = sharding.locate(index["ids"], spec)
    n_shards = 2 ** spec["shard_bits"]
    present = np.flatnonzero(index["boxes"][:, 0] >= 0)
    owners = np.tile(index["boxes"][present[0], :3], (n_shards, 1))
    first = np.unique(shard, return_index=True)
    owners[first[0]] = index["owner"][first[1]]
    return {"shard": shard, "shard_owner": owners}


def _mesh_sharding(tables_dir: str, index: dict[str, np.ndarray], mesh_dir: str) -> dict:
    """Sharding sized to the fragments' bytes, written into the meshes' info."""
    total, grid = 0, None
    for _, path in block_tables(tables_dir):
        with np.load(path) as t:
            if "lengths" not in t.files or t["lengths"].ndim != 2:
                raise UserError(f"{path}: a mesh table of an earlier version (no levels of detail); remove "
                                "tables/mesh_fragments and .connectome/done/{meshes,mesh_index,mesh_manifests}, re-run")
            total += int(t["lengths"].sum())
            grid = grid or (int(t["bits"]),)
    spec = sharding.sharding_spec(int(index["ids"].size), total)
    mesh_format.write_info(mesh_dir, spec, grid[0] if grid else 10)
    return spec


class MeshIndexStep(IndexStep):
    name = "mesh_index"


class SkeletonIndexStep(IndexStep):
    name = "skeleton_index"
    kind = SKELETONS


class NoParams(StageParams):
    pass


@register
class MeshManifestStage(BlockStage[NoParams]):
    """One mesh per object from its fragments of every block: its manifest and fragments written into
    the shard files; shards are split among blocks by where their first object starts."""

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
        info = mesh_format.read_info(directory)
        spec = info["sharding"]
        shards = owned_shards(index, block.write_box)
        fragments = _FragmentReader(self.table_dirs[MESH_TABLE.name], info["vertex_quantization_bits"])
        try:
            for shard, rows in shards:
                entries = []
                for row in rows:
                    label = int(index["ids"][row])
                    found = fragments.of(label, index["blocks"][index["starts"][row]:index["starts"][row + 1]])
                    if found is not None:
                        entries.append((label, *found))
                mesh_format.write_atomic(os.path.join(directory, sharding.shard_name(shard, spec)),
                                         sharding.encode_shard(entries, spec))
        finally:
            fragments.close()
        return {"shards": len(shards), "objects": sum(len(rows) for _, rows in shards)}


class _FragmentReader:
    """An object's fragments from the blocks' packed files, as (manifest, fragment bytes in its order):
    level 0 one fragment per block; level k one per octree cell of 2**k blocks a side that holds a level-0
    fragment, the blocks' level-k meshes in it merged into one."""

    def __init__(self, tables_dir: str, bits: int):
        self.bits = bits
        self.tables_dir = tables_dir
        self.tables: dict[int, dict[str, np.ndarray]] = {}
        self.files: dict[int, BinaryIO] = {}

    def _table(self, b: int) -> dict[str, np.ndarray]:
        if b not in self.tables:
            with np.load(os.path.join(self.tables_dir, f"{b}.npz")) as t:
                keys = ("ids", "offsets", "lengths", "position", "chunk_nm", "origin_nm", "lod_scales")
                self.tables[b] = {k: t[k] for k in keys}
        return self.tables[b]

    def of(self, label: int, blocks: np.ndarray) -> tuple[bytes, bytes] | None:
        pieces, positions, table = [], [], None
        for b in blocks:
            table = self._table(int(b))
            at = int(np.searchsorted(table["ids"], np.uint64(label)))
            lengths = table["lengths"][at]
            if lengths[0] == 0:
                continue
            if int(b) not in self.files:
                self.files[int(b)] = open(os.path.join(self.tables_dir, f"{int(b)}.bin"), "rb")  # noqa: SIM115
            f = self.files[int(b)]
            f.seek(int(table["offsets"][at][0]))
            data = f.read(int(lengths.sum()))
            ends = np.cumsum(lengths)
            pieces.append([data[int(e - n):int(e)] for e, n in zip(ends, lengths)])
            positions.append(table["position"])
        if not pieces or table is None:
            return None
        lods = len(pieces[0])
        level_positions, level_data = [], []
        for k in range(lods):
            cells, which = np.unique(np.array(positions) >> k, axis=0, return_inverse=True)
            which = np.asarray(which).ravel()
            merged = [mesh_format.merge_fragments([pieces[i][k] for i in np.flatnonzero(which == c) if pieces[i][k]],
                                                  self.bits) for c in range(len(cells))]
            order = mesh_format.zorder(cells)
            level_positions.append(cells[order])
            level_data.append([merged[i] for i in order])
        manifest = mesh_format.encode_manifest(table["chunk_nm"], table["origin_nm"], table["lod_scales"],
                                               level_positions, [np.array([len(d) for d in level], np.int64)
                                                                 for level in level_data])
        return manifest, b"".join(b"".join(level) for level in level_data)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class SkeletonParams(StageParams):
    dust_voxels: int = Field(100, ge=0, description="skip objects with fewer voxels in a block")
    scale: float = Field(1.5, gt=0, description="TEASAR invalidation radius: scale x distance to the boundary")
    const_nm: float = Field(300.0, ge=0, description="TEASAR invalidation radius: plus this many nm")


@register
class SkeletonStage(WorldPlaced, BlockStage[SkeletonParams]):
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
        packed = skeletonize_block(labels, block.read_box, seg.meta.voxel_size, p.dust_voxels, p.scale, p.const_nm,
                                   seg.meta.offset)
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
        shards = owned_shards(index, block.write_box)
        rows = np.concatenate([r for _, r in shards]) if shards else np.zeros(0, np.int64)
        wanted = index["ids"][rows]
        fragments: dict[int, list] = defaultdict(list)
        tables_dir = self.table_dirs[SKELETON_TABLE.name]
        starts, blocks_of = index["starts"], index["blocks"]
        for b in sorted({int(b) for r in rows for b in blocks_of[starts[r]:starts[r + 1]]}):
            with np.load(os.path.join(tables_dir, f"{b}.npz")) as f:
                table = {k: f[k] for k in f.files}
            for label, fragment in unpack(table, wanted).items():
                fragments[label].append(fragment)
        directory = os.path.join(output_dir(self, SKELETON_TABLE.name), SKELETONS)
        spec = skeleton_format.read_info(directory)["sharding"]
        vertices = 0
        for shard, shard_rows in shards:
            entries = []
            for label in index["ids"][shard_rows]:
                v, e, r = join_fragments(fragments.pop(int(label), []), self.params.dust_nm, self.params.tick_nm)
                if len(v):  # (an object without a skeleton is left out: its key is not in the shard)
                    entries.append((int(label), skeleton_format.encode_skeleton(v, e, r), b""))
                vertices += len(v)
            mesh_format.write_atomic(os.path.join(directory, sharding.shard_name(shard, spec)),
                                         sharding.encode_shard(entries, spec))
        return {"objects": int(wanted.size), "vertices": vertices}

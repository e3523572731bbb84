"""Test-only stages (imported by worker processes by module name): slow, failing and no-op blocks."""

from __future__ import annotations

import os
import time

import numpy as np

from connectome.core.geometry import Block
from connectome.engine.global_step import GlobalStep
from connectome.engine.registry import register
from connectome.engine.stage import BlockStage, OutputSpec, StageParams, Table
from connectome.io.tables import save_table


class MarkParams(StageParams):
    sleep: float = 0.0
    fail_block: int = -1
    fail_flag: str = ""  # the block fails only while this file exists


class MarkStage(BlockStage):
    """Writes raw + block index + 1 into each write box; can sleep or fail in one block."""

    name = "mark"
    Params = MarkParams
    inputs = ("raw",)
    outputs = ("marked",)

    def output_specs(self, inputs):
        return {"marked": OutputSpec(dtype="uint16")}

    def process(self, block: Block, volumes):
        p = self.params
        if block.index == p.fail_block and (not p.fail_flag or os.path.exists(p.fail_flag)):
            raise ValueError(f"injected failure in block {block.index}")
        if p.sleep:
            time.sleep(p.sleep)
        raw = volumes["raw"].read(block.write_box).astype(np.uint16)
        volumes["marked"].write(block.write_box, raw + block.index + 1)
        return {"sum": int(raw.sum())}


class NoopStage(BlockStage):
    name = "noop"
    inputs = ()
    outputs = ()

    def open_volumes(self):
        return {}

    def process(self, block, volumes):
        return None


class WhereParams(StageParams):
    sleep: float = 0.0


class WhereStage(BlockStage):
    """Records, per block, the worker, SLURM job and partition, GPUs and resources it ran with."""

    name = "where"
    Params = WhereParams
    inputs = ()
    outputs = ()

    def open_volumes(self):
        return {}

    def process(self, block, volumes):
        from distributed import get_worker

        from connectome.cluster.model_cache import default_device

        worker = get_worker()
        time.sleep(self.params.sleep)
        return {"worker": str(worker.name), "job": os.environ.get("SLURM_JOB_ID"),
                "partition": os.environ.get("SLURM_JOB_PARTITION"), "gres_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "resources": dict(worker.state.total_resources), "device": default_device()}


class GpuWhereStage(WhereStage):
    """WhereStage as a GPU stage: its tasks ask for the GPU resource."""

    name = "where-gpu"
    resources = {"GPU": 1}


class AskingWhereStage(WhereStage):
    """WhereStage that first asks a worker of its pool something before its blocks (as precision `auto` does)."""

    name = "where-asking"
    answer = None

    def before_blocks(self, on_worker, finished) -> None:
        self.answer = on_worker(os.getpid)


class PrefixSumParams(StageParams):
    wait_for_neighbours: bool = True


class PrefixSumStage(BlockStage):
    """The summed-volume table of raw, S(z, y, x) = sum of raw over [0..z] x [0..y] x [0..x]: each block
    adds its own prefix sums to the sums its lower neighbours wrote on the faces just below it (a
    stage whose output depends on its earlier neighbours' output)."""

    name = "prefix-sum"
    Params = PrefixSumParams
    inputs = ("raw",)
    outputs = ("sums",)

    @property
    def reads_neighbours(self):  # type: ignore[override]
        return self.params.wait_for_neighbours

    def context(self):
        from connectome.core.geometry import Context

        return Context(lower=(1, 1, 1))

    def output_specs(self, inputs):
        return {"sums": OutputSpec(dtype="uint64")}

    def process(self, block: Block, volumes):
        import itertools

        w, r = block.write_box, block.read_box
        known = np.zeros(tuple(s + 1 for s in w.shape), np.int64)  # sums one voxel below each lower face
        inner = tuple(slice(1 - (wo - ro), None) for wo, ro in zip(w.offset, r.offset))
        known[inner] = volumes["sums"].read(r).astype(np.int64)
        raw = volumes["raw"].read(w).astype(np.int64)
        sums = raw.cumsum(0).cumsum(1).cumsum(2)
        for axes in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in (1, 2, 3)):
            face = tuple(slice(0, 1) if a in axes else slice(1, None) for a in range(3))
            sums += (-1) ** (len(axes) + 1) * known[face]
        volumes["sums"].write(w, sums.astype(np.uint64))
        return {}


class BlockSumStage(BlockStage):
    """Writes one table per block: the sum of raw over its write box."""

    name = "block-sum"
    inputs = ("raw",)
    tables = (Table("sums", 1),)

    def process(self, block: Block, volumes):
        save_table(self.table_dirs["sums"], block.index, total=np.int64(volumes["raw"].read(block.write_box).sum()))
        return {}


class TotalParams(StageParams):
    scale: int = 1


class TotalStep(GlobalStep):
    """Adds every block's table into one file, once."""

    name = "total"

    def __init__(self, sums_dir: str, scale: int):
        self.sums_dir, self.scale = sums_dir, scale

    @property
    def path(self) -> str:
        return os.path.join(self.sums_dir, os.pardir, "total.json")

    def fingerprint(self) -> dict:
        return {"step": self.name, "tables": self.sums_dir, "scale": self.scale}

    def run(self) -> dict:
        import glob
        import json

        total = sum(int(np.load(p)["total"]) for p in glob.glob(os.path.join(self.sums_dir, "*.npz")))
        with open(self.path, "w") as f:
            json.dump({"total": total * self.scale}, f)
        return {"total": total * self.scale}


class FillTotalStage(BlockStage):
    """Fills every block with the total that its global step computed."""

    name = "fill-total"
    Params = TotalParams
    inputs = ("raw",)
    outputs = ("total",)
    reads_tables = (Table("sums", 1),)

    def output_specs(self, inputs):
        return {"total": OutputSpec(dtype="uint64")}

    def global_step(self) -> TotalStep:
        return TotalStep(self.table_dirs["sums"], self.params.scale)

    def process(self, block: Block, volumes):
        import json

        with open(self.global_step().path) as f:
            total = json.load(f)["total"]
        volumes["total"].write(block.write_box, np.full(block.write_box.shape, total, np.uint64))
        return {}


class RenormalizeStage(BlockStage):
    """`normalize` once more, as a later stage that reads an earlier one's output with context."""

    name = "renormalize"
    reads_only_read_box = True
    inputs = ("raw",)
    outputs = ("renormalized",)

    def context(self):
        from connectome.core.geometry import Context

        return Context.of((0, 6, 6))

    def output_specs(self, inputs):
        return {"renormalized": OutputSpec(dtype="uint8")}

    def process(self, block: Block, volumes):
        r, w = block.read_box, block.write_box
        data = volumes["raw"].read(r).astype(np.float32)
        out = (data - data.mean()) / (data.std() + 1) * 40 + 128
        volumes["renormalized"].write(w, np.clip(out[w.relative_to(r)], 0, 255).astype(np.uint8))
        return {}


for _stage in (BlockSumStage, FillTotalStage, PrefixSumStage, RenormalizeStage):
    register(_stage)

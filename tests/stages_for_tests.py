"""Test-only stages (imported by worker processes by module name): slow, failing and no-op blocks."""

from __future__ import annotations

import os
import time

import numpy as np

from connectome.geometry import Block
from connectome.stages.base import BlockStage, OutputSpec, StageParams


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

        from workers.model_cache import default_device

        worker = get_worker()
        time.sleep(self.params.sleep)
        return {"worker": str(worker.name), "job": os.environ.get("SLURM_JOB_ID"),
                "partition": os.environ.get("SLURM_JOB_PARTITION"), "gres_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "resources": dict(worker.state.total_resources), "device": default_device()}


class GpuWhereStage(WhereStage):
    """WhereStage as a GPU stage: its tasks ask for the GPU resource."""

    name = "where-gpu"
    resources = {"GPU": 1}

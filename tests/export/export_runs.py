"""Run a chain of stages on a small volume, as the export tests need."""

from __future__ import annotations

BLOCK = (32, 64, 64)  # 4 blocks: meshes and skeletons are joined across block faces


def run_stages(raw: str, out: str, stages: list[str], client, block=BLOCK) -> None:
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=block), cluster=ClusterConfig(),
                       stages=[StageConfig(stage=s) for s in stages])
    execute(plan_run(config), client, progress=False)

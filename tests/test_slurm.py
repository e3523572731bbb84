"""Stages run end to end as real SLURM jobs (and PBS jobs through Slurm's torque wrappers)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from connectome.cli import main
from connectome.cluster import ClusterConfig, gpu_resources, open_client
from connectome.geometry import BlockGrid, Box
from connectome.runner import run_stage
from connectome.stages.base import BlockStage, StageParams
from run_case import TESTS_DIR, assert_same_tree, last_json, write_config, write_raw
from slurm_fixture import local_slurm  # noqa: F401  (session fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


class JobWatcher:
    """Polls squeue while a run is going: which jobs ran, with what name, state and GRES."""

    def __init__(self):
        self.seen: set[tuple[str, str, str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T|%b"], capture_output=True, text=True).stdout
            self.seen.update(tuple(line.split("|")) for line in out.split())
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def running_workers(self) -> set[str]:
        return {job for job, name, state, _ in self.seen if name == "connectome-worker" and state == "RUNNING"}


@pytest.fixture
def worker_env(monkeypatch, tmp_path):
    """Workers in jobs import the test modules (stages defined here) and write their job logs in tmp."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))
    monkeypatch.chdir(tmp_path)  # the torque wrappers drop job output files in the cwd
    return tmp_path


def _local_reference(tmp_path, raw):
    cfg = write_config(tmp_path / "local.yaml", raw, tmp_path / "out-local")
    assert main(["run", str(cfg), "--cluster", "local", "--workers", "2", "--no-progress", "--json"]) == 0
    return tmp_path / "out-local" / "normalized"


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_normalize_as_batch_jobs_equals_local(local_slurm, worker_env, capsys, kind):
    tmp_path = worker_env
    raw = write_raw(tmp_path / "raw.npz")
    reference = _local_reference(tmp_path, raw)
    logs = tmp_path / "job-logs"
    cfg = write_config(tmp_path / f"{kind}.yaml", raw, tmp_path / f"out-{kind}",
                       cluster={"interface": "lo", "maximum_jobs": 2, "log_directory": str(logs)})
    capsys.readouterr()
    with JobWatcher() as watcher:
        code = main(["run", str(cfg), "--cluster", kind, "--no-progress", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = last_json(out.out)["stages"][0]
    assert report["ran"] == report["blocks"] == 8
    jobs = watcher.running_workers()
    assert jobs, f"no connectome-worker job was seen running in squeue: {watcher.seen}"
    assert_same_tree(reference, tmp_path / f"out-{kind}" / "normalized")
    for job in jobs:  # the jobs were the adaptive cluster's: gone once the run closed it
        state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "JobState=RUNNING" not in state and "JobState=PENDING" not in state, state
    if kind == "slurm":  # sbatch honours -e/-o: one log per job, named by its SLURM job id
        logged = {p.name.split("-")[-1].split(".")[0] for p in logs.glob("connectome-worker-*.err")}
        assert jobs <= logged, (jobs, logged)
        text = "".join((logs / f"connectome-worker-{j}.err").read_text() for j in jobs)
        assert "Registered to" in text and "workers.preload" in text


class WhereStage(BlockStage):
    """Records, per block, the SLURM job, GPUs and worker resources it ran with (writes nothing)."""

    name = "where"
    Params = StageParams
    inputs = ()
    outputs = ()
    resources = {"GPU": 1}

    def process(self, block, volumes):
        from distributed import get_worker

        from workers.model_cache import default_device

        worker = get_worker()
        return {"job": os.environ.get("SLURM_JOB_ID"), "gres_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "resources": dict(worker.state.total_resources), "device": default_device()}


def test_gpu_stage_runs_on_gpu_jobs(local_slurm, worker_env):
    config = ClusterConfig(kind="slurm", gpus=1, interface="lo", maximum_jobs=2, dashboard_address=":0",
                           log_directory=str(worker_env / "job-logs"))
    assert gpu_resources(config) == {"GPU": 1}
    assert gpu_resources(config.model_copy(update={"gpus": 0})) == {}
    stage = WhereStage(StageParams(), {}, {})
    grid = BlockGrid.for_chunks(Box.from_shape((4, 64, 64)), (1, 64, 64), (1, 64, 64))
    with JobWatcher() as watcher, open_client(config, quiet=True) as client:
        resources = gpu_resources(client)
        assert resources == {"GPU": 1}
        report = run_stage(stage, grid, client, str(worker_env / "work"), progress=False,
                           collect_summaries=True, resources=resources)
        script = client.cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    summaries = list(report.summaries.values())
    assert len(summaries) == 4
    jobs = {s["job"] for s in summaries}
    assert None not in jobs and jobs <= watcher.running_workers()
    assert all(s["resources"].get("GPU") == 1 and s["gres_gpus"] for s in summaries), summaries
    assert all(s["device"] == "cpu" for s in summaries)  # set by the preloaded plugin; no CUDA here
    gres = {b for job, name, state, b in watcher.seen if job in jobs}
    assert any("gpu:1" in g for g in gres), gres


def test_segment_on_slurm_equals_local(local_slurm, worker_env, capsys):
    """`connectome segment --cluster slurm` (settings from the defaults only) matches the LocalCluster."""
    import torch

    from connectome.models import UNet, UNetConfig, save_model

    tmp_path = worker_env
    raw = write_raw(tmp_path / "raw.npz", shape=(16, 128, 128), seed=5)
    torch.manual_seed(0)
    config = UNetConfig(base_channels=2, max_channels=4, downsample=((1, 2, 2),), kernels=((1, 3, 3), (3, 3, 3)),
                        encoder_convs=(1, 1), decoder_convs=(1,))
    model = save_model(tmp_path / "tiny", UNet(config),
                       {"name": "tiny", "voxel_size": [40, 4, 4], "normalisation": {"mean": 128.0, "std": 40.0}})
    common = ["--model", str(model), "--voxel-size", "40", "4", "4", "--block-shape", "8", "64", "64",
              "--json", "--no-progress"]
    assert main(["segment", raw, str(tmp_path / "seg-local"), "--cluster", "local", *common]) == 0
    capsys.readouterr()
    with JobWatcher() as watcher:
        code = main(["segment", raw, str(tmp_path / "seg-slurm"), "--cluster", "slurm", *common])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert last_json(out.out)["segmentation"] == str(tmp_path / "seg-slurm" / "segmentation")
    assert watcher.running_workers(), watcher.seen
    for name in ("affinities", "segmentation"):
        assert_same_tree(tmp_path / "seg-local" / name, tmp_path / "seg-slurm" / name)

"""Stages run end to end as real SLURM jobs (and PBS jobs through Slurm's torque wrappers)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from connectome.cli.main import main
from connectome.cluster.client import (
    ClusterConfig,
    GpuJobsConfig,
    available_resources,
    gpu_resources,
    open_client,
    task_resources,
)
from connectome.cluster.session import scaler_of
from connectome.cluster.worker_env import MALLOC_ENV
from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.markers import DoneMarkers
from connectome.engine.runner import run_stage

from run_case import TESTS_DIR, assert_same_tree, last_json, write_config, write_raw
from stages_for_tests import AskingWhereStage, GpuWhereStage, WhereParams, WhereStage

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


class JobWatcher:
    """Polls squeue while a run is going: which jobs ran, with what name, state, GRES and partition."""

    def __init__(self):
        self.seen: set[tuple[str, str, str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T|%b|%P"], capture_output=True, text=True).stdout
            self.seen.update(tuple(line.split("|")) for line in out.split())
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def running_workers(self, name: str = "connectome-worker") -> set[str]:
        return {job for job, job_name, state, _, _ in self.seen if job_name == name and state == "RUNNING"}

    def partitions(self, jobs: set[str]) -> set[str]:
        return {partition for job, _, _, _, partition in self.seen if job in jobs}


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
        assert "Registered to" in text and "connectome.cluster.preload" in text


def test_gpu_stage_runs_on_gpu_jobs(local_slurm, worker_env):
    config = ClusterConfig(kind="slurm", gpus=1, interface="lo", maximum_jobs=2, dashboard_address=":0",
                           log_directory=str(worker_env / "job-logs"))
    assert gpu_resources(config) == {"GPU": 1}
    assert gpu_resources(config.model_copy(update={"gpus": 0})) == {}
    stage = GpuWhereStage(WhereParams(), {}, {})
    grid = BlockGrid.for_chunks(Box.from_shape((4, 64, 64)), (1, 64, 64), (1, 64, 64))
    with JobWatcher() as watcher, open_client(config, quiet=True) as client:
        resources = gpu_resources(client)
        assert resources == {"GPU": 1}
        report = run_stage(stage, grid, client, str(worker_env / "work"), progress=False,
                           collect_summaries=True, resources=resources)
        script = client.cluster.job_script()
        malloc = set(client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_")).values())
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    assert malloc == {MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]}, malloc
    summaries = list(report.summaries.values())
    assert len(summaries) == 4
    jobs = {s["job"] for s in summaries}
    assert None not in jobs and jobs <= watcher.running_workers("connectome-gpu-worker")
    assert all(s["resources"].get("GPU") == 1 and s["gres_gpus"] for s in summaries), summaries
    assert all(s["device"] == "cpu" for s in summaries)  # set by the preloaded plugin; no CUDA here
    gres = {b for job, name, state, b, _ in watcher.seen if job in jobs}
    assert any("gpu:1" in g for g in gres), gres


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_two_pools_cpu_stages_on_cpu_jobs_gpu_stages_on_gpu_jobs(local_slurm, worker_env, kind):
    """One scheduler, two pools: the GPU stage runs in GPU jobs of the gpu partition, the CPU stage
    in CPU jobs of the default partition, and the GPU jobs are given back once their stage is done."""
    config = ClusterConfig(kind=kind, interface="lo", maximum_jobs=2, dashboard_address=":0",
                           log_directory=str(worker_env / "job-logs"), idle_seconds=2,
                           gpu_jobs=GpuJobsConfig(queue="gpu", gpus=1, maximum_jobs=1))
    grid = BlockGrid.for_chunks(Box.from_shape((6, 64, 64)), (1, 64, 64), (1, 64, 64))
    summaries = {}
    with JobWatcher() as watcher, open_client(config, quiet=True) as client:
        available = available_resources(client)
        assert available == {"GPU": 1, "CPU": 1}
        for stage in (GpuWhereStage(WhereParams(), {}, {}), WhereStage(WhereParams(), {}, {})):
            report = run_stage(stage, grid, client, str(worker_env / "work"), progress=False, collect_summaries=True,
                               resources=task_resources(stage.resources, available))
            summaries[stage.name] = list(report.summaries.values())
        scaler = scaler_of(client)
        deadline = time.monotonic() + 30
        while any(name.startswith("gpu-") for name in client.cluster.worker_spec) and time.monotonic() < deadline:
            time.sleep(0.2)
        gpu_left = [name for name in client.cluster.worker_spec if name.startswith("gpu-")]
    gpu, cpu = summaries["where-gpu"], summaries["where"]
    assert len(gpu) == len(cpu) == 6
    assert all(s["partition"] == "gpu" and s["resources"] == {"GPU": 1} for s in gpu), gpu
    if kind == "slurm":  # Slurm's torque wrappers do not turn the PBS select's ngpus into a GRES
        assert all(s["gres_gpus"] for s in gpu), gpu
    assert all(s["partition"] == "debug" and not s["gres_gpus"] and "GPU" not in s["resources"]
               and s["resources"].get("CPU", 0) >= 1 for s in cpu), cpu
    gpu_jobs, cpu_jobs = {s["job"] for s in gpu}, {s["job"] for s in cpu}
    assert None not in gpu_jobs | cpu_jobs and not gpu_jobs & cpu_jobs
    assert gpu_jobs <= watcher.running_workers("connectome-gpu-worker")
    assert cpu_jobs <= watcher.running_workers("connectome-worker")
    assert watcher.partitions(gpu_jobs) == {"gpu"} and watcher.partitions(cpu_jobs) == {"debug"}
    assert not gpu_left, f"GPU jobs still held after their stage: {gpu_left}; {scaler.log}"
    assert ("gpu", "down") in {(pool, how) for pool, how, _ in scaler.log}


def test_segment_on_two_pools_equals_local(local_slurm, worker_env, capsys):
    """`connectome segment --cluster slurm --profile FILE` with CPU and GPU pools matches the LocalCluster."""
    import torch
    import yaml

    from connectome.models import UNet, UNetConfig, save_model

    tmp_path = worker_env
    raw = write_raw(tmp_path / "raw.npz", shape=(16, 128, 128), seed=5)
    torch.manual_seed(0)
    config = UNetConfig(base_channels=2, max_channels=4, downsample=((1, 2, 2),), kernels=((1, 3, 3), (3, 3, 3)),
                        encoder_convs=(1, 1), decoder_convs=(1,))
    model = save_model(tmp_path / "tiny", UNet(config),
                       {"name": "tiny", "voxel_size": [40, 4, 4], "normalisation": {"mean": 128.0, "std": 40.0}})
    profile = tmp_path / "pools.yaml"
    profile.write_text(yaml.safe_dump({"kind": "slurm", "interface": "lo", "maximum_jobs": 2, "idle_seconds": 2,
                                       "log_directory": str(tmp_path / "job-logs"),
                                       "gpu_jobs": {"queue": "gpu", "gpus": 1, "maximum_jobs": 1}}))
    common = ["--model", str(model), "--voxel-size", "40", "4", "4", "--block-shape", "8", "64", "64",
              "--json", "--no-progress"]
    assert main(["segment", raw, str(tmp_path / "seg-local"), "--cluster", "local", *common]) == 0
    capsys.readouterr()
    with JobWatcher() as watcher:
        code = main(["segment", raw, str(tmp_path / "seg-slurm"), "--cluster", "slurm", "--profile", str(profile),
                     *common])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert last_json(out.out)["segmentation"] == str(tmp_path / "seg-slurm" / "segmentation")
    gpu_jobs, cpu_jobs = watcher.running_workers("connectome-gpu-worker"), watcher.running_workers()
    assert gpu_jobs and cpu_jobs, watcher.seen  # affinities on GPU jobs; fragments .. relabel on CPU jobs
    assert watcher.partitions(gpu_jobs) == {"gpu"} and watcher.partitions(cpu_jobs) == {"debug"}
    for name in ("affinities", "segmentation"):
        assert_same_tree(tmp_path / "seg-local" / name, tmp_path / "seg-slurm" / name)


def test_unknown_partition_is_refused_before_any_job(local_slurm, worker_env, capsys):
    config = ClusterConfig(kind="slurm", gpu_jobs=GpuJobsConfig(queue="no-such-partition"))
    with pytest.raises(UserError, match="no-such-partition.*partitions: debug, gpu"):
        with open_client(config, quiet=True):
            pass


@pytest.mark.parametrize("pools", ["one", "two"])
def test_cpu_job_cancelled_mid_stage_is_replaced(local_slurm, worker_env, pools):
    """Pre-emption: a CPU worker job of two worker processes is scancelled mid-stage; its blocks are
    retried, and a new job replaces it; on a cluster of one pool (no `gpu_jobs`: a plain `slurm` profile) as on
    one of two (until 2026-12-05 the one-pool cluster never replaced it, and the run waited forever)."""
    config = ClusterConfig(kind="slurm", interface="lo", maximum_jobs=1, cores=2, processes_per_job=2,
                           dashboard_address=":0", log_directory=str(worker_env / "job-logs"),
                           gpu_jobs=GpuJobsConfig(queue="gpu") if pools == "two" else None)
    grid = BlockGrid.for_chunks(Box.from_shape((16, 64, 64)), (1, 64, 64), (1, 64, 64))
    stage = WhereStage(WhereParams(sleep=0.5), {}, {})
    work = worker_env / "work"
    cancelled = []

    def cancel_first_job():
        markers = DoneMarkers(str(work), stage.name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cancelled:
            if len(markers.done()) >= 3:  # some blocks done: the job is mid-stage
                out = subprocess.run(["squeue", "-h", "-n", "connectome-worker", "-t", "RUNNING", "-o", "%i"],
                                     capture_output=True, text=True).stdout.split()
                if out:
                    subprocess.run(["scancel", out[0]], check=True)
                    cancelled.append(out[0])
            time.sleep(0.1)

    with open_client(config, quiet=True) as client:
        killer = threading.Thread(target=cancel_first_job, daemon=True)
        killer.start()
        report = run_stage(stage, grid, client, str(work), progress=False, collect_summaries=True,
                           resources=task_resources(stage.resources, available_resources(client)))
        killer.join()
        log = scaler_of(client).log
    assert cancelled, "no running CPU job was seen to cancel"
    jobs = {s["job"] for s in report.summaries.values()}
    assert len(report.summaries) == 16 and cancelled[0] in jobs and len(jobs) >= 2, jobs
    assert all(s["partition"] == "debug" for s in report.summaries.values())
    assert ("cpu", "lost", "cpu-0") in log, log


def test_jobs_that_cannot_start_stop_the_run_with_one_line(local_slurm, worker_env):
    """sbatch refusing the GPU jobs, or GPU jobs that die before their workers connect, end the run
    with a clear error instead of waiting forever; also while the stage asks a worker something before its
    blocks (precision `auto` does), and on a cluster of one pool."""
    grid = BlockGrid.for_chunks(Box.from_shape((2, 16, 16)), (1, 16, 16), (1, 16, 16))
    stage = GpuWhereStage(WhereParams(), {}, {})
    common = dict(kind="slurm", interface="lo", dashboard_address=":0", log_directory=str(worker_env / "job-logs"))
    refused = ClusterConfig(**common, gpu_jobs=GpuJobsConfig(queue="gpu", memory="5000GiB"))
    dying = ClusterConfig(**common, gpu_jobs=GpuJobsConfig(queue="gpu", job_script_prologue=["exit 1"]))
    for config, why in ((refused, "sbatch"), (dying, "ended before its workers connected")):
        with open_client(config, quiet=True) as client:
            scaler_of(client).check_every = 1.0  # ask squeue every second, not every 15 s
            with pytest.raises(UserError, match=f"gpu worker jobs failed [3-9] times in a row: .*{why}") as info:
                run_stage(stage, grid, client, str(worker_env / f"work-{why[:3]}"), progress=False,
                          resources=task_resources(stage.resources, available_resources(client)))
        assert "\n" not in str(info.value)
    # one pool (no gpu_jobs), its jobs dying at start, a stage that asks a worker before its blocks
    one = ClusterConfig(**common, job_script_prologue=["exit 1"])
    asking = AskingWhereStage(WhereParams(), {}, {})
    with open_client(one, quiet=True) as client:
        scaler_of(client).check_every = 1.0
        with pytest.raises(UserError, match="cpu worker jobs failed [3-9] times in a row: .*ended before its workers"):
            run_stage(asking, grid, client, str(worker_env / "work-one"), progress=False)
    assert asking.answer is None

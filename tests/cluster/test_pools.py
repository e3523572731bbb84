"""Two pools of workers under one scheduler: settings, job scripts, task routing and scaling."""

from __future__ import annotations

import logging
import time

import pytest
from distributed import Client, LocalCluster

from connectome.cluster.client import (
    ClusterConfig,
    GpuJobsConfig,
    available_resources,
    gpu_pool_config,
    open_client,
    resolve_profile,
    task_resources,
)
from connectome.cluster.jobqueue import gpu_job_spec, job_options
from connectome.cluster.pools import Pool, PoolScaler, job_of, pool_demand, target_jobs
from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.runner import run_stage

from run_case import write_raw
from stages_for_tests import GpuWhereStage, WhereParams, WhereStage


def test_gpu_jobs_inherit_unset_job_settings():
    cpu = resolve_profile(ClusterConfig(profile="slurm-gpu", account="lab7", job_script_prologue=["module load x"]))
    gpu = gpu_pool_config(cpu)
    assert (gpu.queue, gpu.gpus, gpu.processes_per_job, gpu.memory, gpu.maximum_jobs) == ("gpu", 2, 2, "64GiB", 4)
    assert (gpu.account, gpu.walltime, gpu.job_script_prologue) == ("lab7", cpu.walltime, ["module load x"])
    assert gpu.gpu_jobs is None and cpu.gpus == 0
    own = gpu_pool_config(ClusterConfig(kind="slurm", job_extra_directives=["--qos=a"],
                                        gpu_jobs=GpuJobsConfig(job_extra_directives=["--qos=b"])))
    assert own.job_extra_directives == ["--qos=b"] and (own.gpus, own.maximum_jobs) == (1, 1)
    assert gpu_pool_config(ClusterConfig(kind="slurm", processes_per_job=4,
                                         gpu_jobs=GpuJobsConfig(gpus=2))).processes_per_job == 2  # one per GPU
    # a config's gpu_jobs section refines the profile's key by key
    merged = resolve_profile(ClusterConfig(profile="slurm-gpu", gpu_jobs=GpuJobsConfig(maximum_jobs=8)))
    assert (merged.gpu_jobs.queue, merged.gpu_jobs.gpus, merged.gpu_jobs.maximum_jobs) == ("gpu", 2, 8)


def test_gpus_in_the_cpu_section_of_two_pools_is_refused(tmp_path, capsys):
    from connectome.cli.main import main

    config = ClusterConfig(kind="local", gpus=1, gpu_jobs=GpuJobsConfig())
    with pytest.raises(UserError, match="gpus: 0"):
        with open_client(config, quiet=True):
            pass
    raw = write_raw(tmp_path / "raw.npz")
    assert main(["segment", raw, str(tmp_path / "out"), "--voxel-size", "40", "4", "4", "--allow-voxel-mismatch",
                 "--profile", "no-such-profile"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-profile" in err, err
    assert not (tmp_path / "out").exists()


def test_task_resources():
    two_pools = {"GPU": 1, "CPU": 1}
    assert task_resources({"GPU": 1}, two_pools) == {"GPU": 1}
    assert task_resources({}, two_pools) == {"CPU": 1}  # CPU stages keep off the GPU jobs
    assert task_resources({"GPU": 1}, {"GPU": 1}) == {"GPU": 1}
    assert task_resources({}, {"GPU": 1}) is None  # one pool of GPU jobs: CPU stages run there too
    assert task_resources({"GPU": 1}, {}) is None  # no GPU anywhere: run on what there is
    assert available_resources(resolve_profile(ClusterConfig(profile="slurm-gpu"))) == two_pools
    assert available_resources(ClusterConfig(kind="pbs", gpu_jobs=GpuJobsConfig())) == two_pools


def test_slurm_job_scripts_of_the_two_pools(tmp_path):
    from dask_jobqueue import SLURMCluster

    config = resolve_profile(ClusterConfig(profile="slurm-gpu", log_directory=str(tmp_path), dashboard_address=":0",
                                           job_script_prologue=["source /opt/venv/bin/activate"]))
    with SLURMCluster(**job_options(config)) as cluster:
        cpu = cluster.job_script()
        spec = gpu_job_spec(cluster, gpu_pool_config(config))
        gpu = spec["cls"](cluster.scheduler_address, name="gpu-0", **spec["options"]).job_script()
    assert "gres" not in cpu and "--resources CPU=2" in cpu and "-J connectome-worker" in cpu and "-p " not in cpu
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:2", "-J connectome-gpu-worker", "--resources GPU=1",
                 "--nworkers 2", "#SBATCH --mem=64G", "source /opt/venv/bin/activate"):
        assert line in gpu, (line, gpu)
    assert "CPU=" not in gpu and spec["group"] == ["-0", "-1"]


def test_pbs_job_scripts_of_the_two_pools(tmp_path):
    from dask_jobqueue.pbs import PBSJob

    config = resolve_profile(ClusterConfig(profile="pbs-gpu", log_directory=str(tmp_path)))
    scripts = {}
    for name, pool in (("cpu", config), ("gpu", gpu_pool_config(config))):
        options = job_options(pool)
        options.pop("scheduler_options")
        scripts[name] = PBSJob(scheduler="tcp://10.0.0.1:8786", name=name, **options).job_script()
    assert "select=1:ncpus=8:mem=32GB" in scripts["cpu"] and "ngpus" not in scripts["cpu"]
    assert "--resources CPU=2" in scripts["cpu"]
    assert "select=1:ncpus=8:ngpus=1:mem=48GB" in scripts["gpu"] and "#PBS -q gpuq" in scripts["gpu"]
    assert "--resources GPU=1" in scripts["gpu"]


def test_local_pools_keep_each_stage_on_its_own_workers(tmp_path):
    config = ClusterConfig(n_workers=2, dashboard_address=":0", gpu_jobs=GpuJobsConfig(maximum_jobs=1))
    grid = BlockGrid.for_chunks(Box.from_shape((6, 16, 16)), (1, 16, 16), (1, 16, 16))
    with open_client(config, quiet=True) as client:
        available = available_resources(client)
        assert available == {"GPU": 1, "CPU": 1}
        ran = {}
        for stage in (GpuWhereStage(WhereParams(), {}, {}), WhereStage(WhereParams(), {}, {})):
            report = run_stage(stage, grid, client, str(tmp_path / "work"), progress=False, collect_summaries=True,
                               resources=task_resources(stage.resources, available))
            ran[stage.name] = {s["worker"] for s in report.summaries.values()}
        with open_client(ClusterConfig(kind=client.scheduler.address), quiet=True) as remote:
            assert available_resources(remote) == {"GPU": 1, "CPU": 1}  # read from the workers
    assert ran["where-gpu"] == {"gpu-0"}
    assert ran["where"] and ran["where"] <= {"cpu-0", "cpu-1"}


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def test_scaler_grows_each_pool_with_its_own_tasks_and_gives_idle_jobs_back():
    def slow(x):
        time.sleep(0.5)
        return x

    with LocalCluster(n_workers=0, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        base = cluster.new_spec
        spec = {res: {**base, "options": {**base["options"], "resources": {res: 1}}} for res in ("CPU", "GPU")}
        scaler = PoolScaler(cluster, [Pool("cpu", spec["CPU"], "CPU", 1, 0, 1),
                                      Pool("gpu", spec["GPU"], "GPU", 1, 0, 2)], interval=0.1, idle_seconds=0.3)
        futures = client.map(slow, range(6), resources={"GPU": 1}, pure=False)
        assert client.gather(futures) == list(range(6))
        del futures  # like the runner, hold no results (their workers go; held ones would be recomputed)
        ups = [job for pool, how, job in scaler.log if how == "up"]
        assert ups and all(job.startswith("gpu-") for job in ups), scaler.log  # no CPU job for GPU tasks
        assert len([j for j in cluster.worker_spec if j.startswith("gpu-")]) <= 2
        _wait(lambda: not cluster.worker_spec, 15, "the idle GPU jobs to be given back")
        _wait(lambda: not cluster.scheduler.workers, 15, "the GPU workers to leave")
        assert client.submit(slow, 7, resources={"CPU": 1}, pure=False).result(timeout=30) == 7
        assert set(cluster.worker_spec) == {"cpu-0"}  # the CPU pool started, up to its maximum of 1
        scaler.stop()


def test_demand_counts_waiting_tasks_per_resource_and_running_ones_per_worker():
    from distributed.scheduler import Scheduler

    class Task:
        def __init__(self, restrictions):
            self.resource_restrictions = restrictions

    class Worker:
        def __init__(self, name, n):
            self.name, self.processing = name, set(range(n))

    scheduler = Scheduler.__new__(Scheduler)  # only the attributes pool_demand reads
    scheduler.workers = {"a": Worker("cpu-0-1", 3), "b": Worker("gpu-2", 1), "c": Worker("other", 5)}
    scheduler.unrunnable = {Task({"GPU": 1}): 0, Task({"GPU": 1}): 0, Task({"CPU": 1}): 0, Task(None): 0}
    scheduler.queued = [Task(None)]
    pools = [Pool("cpu", {}, "CPU", 4, 0, 3), Pool("gpu", {}, "GPU", 1, 1, 2)]
    demand = pool_demand(scheduler, pools)
    assert demand == {"cpu": 3 + 1 + 2, "gpu": 1 + 2}
    assert [target_jobs(p, demand[p.name]) for p in pools] == [2, 2]
    assert target_jobs(pools[1], 0) == 1 and target_jobs(pools[0], 100) == 3
    assert job_of("cpu-0-1", {"cpu-0"}) == "cpu-0" and job_of("gpu-2", {"gpu-2"}) == "gpu-2"
    assert job_of("gpu-2-0", {"gpu-20"}) is None

"""SLURM and PBS clusters through dask-jobqueue: worker jobs that scale with the pending blocks.

Every worker starts with `--preload connectome.cluster.preload` (model cache plugin, device choice). GPU jobs
ask the batch system for their GPUs (`--gres=gpu:N` on SLURM, `ngpus=N` in the PBS select) and
their workers advertise a `GPU` resource, which is what GPU stages' tasks ask for. With a
`gpu_jobs` section there are two pools (connectome.pools): CPU jobs, whose workers advertise
`CPU` slots that CPU stages' tasks ask for, and GPU jobs in their own partition or queue.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

from connectome.cluster import worker_env
from connectome.cluster.client import ClusterConfig, gpu_pool_config
from connectome.cluster.pools import Pool, PoolScaler
from connectome.cluster.session import attach_scaler
from connectome.cluster.worker_env import PRELOAD
from connectome.core.errors import UserError

SUBMIT_COMMAND = {"slurm": "sbatch", "pbs": "qsub"}
PROBE_COMMAND = {"slurm": ["sinfo", "-h", "-o", "%P %a"], "pbs": ["qstat", "-Q"]}


def check_batch_system(kind: str, timeout: float = 30.0) -> None:
    """Refuse to start when the batch system does not answer (else adaptive scaling would wait forever)."""
    probe = PROBE_COMMAND[kind]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"--cluster {kind}: `{probe[0]}` not found on this machine") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"--cluster {kind}: `{' '.join(probe)}` did not answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"--cluster {kind}: the batch system does not answer (`{' '.join(probe)}`: {last})")


def job_options(config: ClusterConfig, pool: str = "cpu") -> dict:
    """Keyword arguments for SLURMCluster / PBSCluster from a resolved ClusterConfig (`pool`: for messages)."""
    per_worker_gpus = config.gpus // config.processes_per_job if config.gpus else 0
    if config.gpus and per_worker_gpus < 1:
        raise UserError(f"cluster{' gpu_jobs' if pool == 'gpu' else ''}: gpus ({config.gpus}) must be at least "
                        f"processes_per_job ({config.processes_per_job}): each worker process needs its own GPU")
    worker_args = ["--preload", PRELOAD, *lifetime_args(config.walltime)]
    if per_worker_gpus:
        worker_args += ["--resources", f"GPU={per_worker_gpus}"]
    elif config.gpu_jobs is not None:  # the CPU pool of a two-pool cluster: one CPU slot per thread
        worker_args += ["--resources", f"CPU={threads_per_worker(config)}"]
    directives = list(config.job_extra_directives)
    options: dict = {}
    if config.kind == "slurm":
        if config.gpus:
            directives.append(f"--gres=gpu:{config.gpus}")
    elif config.kind == "pbs":
        spec = f"select=1:ncpus={config.cores}"
        if config.gpus:
            spec += f":ngpus={config.gpus}"
        options["resource_spec"] = f"{spec}:mem={_pbs_memory(config.memory)}"
    log_directory = config.log_directory or os.path.join(os.getcwd(), ".connectome-jobs")
    options.update(
        queue=config.queue,
        account=config.account,
        cores=config.cores,
        memory=config.memory,
        processes=config.processes_per_job,
        walltime=config.walltime,
        job_extra_directives=directives,
        job_script_prologue=[*worker_env.job_script_lines(), *config.job_script_prologue],
        interface=config.interface,
        local_directory=config.local_directory,
        log_directory=log_directory,
        python=config.python,
        worker_extra_args=worker_args,
        death_timeout=config.death_timeout,
        job_name="connectome-gpu-worker" if config.gpus else "connectome-worker",
        scheduler_options={"dashboard_address": config.dashboard_address,
                           **({"interface": config.interface} if config.interface else {})},
    )
    return {k: v for k, v in options.items() if v is not None}


def lifetime_args(walltime: str | None) -> list[str]:
    """Workers retire gracefully (finishing their blocks) 5 minutes before the job's walltime ends."""
    if not walltime:
        return []
    try:
        parts = [int(x) for x in walltime.replace("-", ":").split(":")]
    except ValueError:
        raise UserError(f"cluster walltime: expected HH:MM:SS, found {walltime!r}") from None
    seconds = sum(v * m for v, m in zip(reversed(parts), (1, 60, 3600, 86400)))
    if seconds <= 900:
        return []
    return ["--lifetime", f"{seconds - 300}s", "--lifetime-stagger", "60s"]


def threads_per_worker(config: ClusterConfig) -> int:
    """Threads of each worker process: the job's cores shared among its processes (as jobqueue does)."""
    return max(1, config.cores // config.processes_per_job)


def jobs_for_workers(workers: int, config: ClusterConfig) -> int:
    """Jobs that run `workers` worker processes, `processes_per_job` in each."""
    return max(1, math.ceil(workers / config.processes_per_job))


def maximum_jobs(config: ClusterConfig) -> int:
    """The config's maximum_jobs, or enough jobs for `--workers N` workers when that was given."""
    if "n_workers" in config.model_fields_set and "maximum_jobs" not in config.model_fields_set:
        return jobs_for_workers(config.n_workers, config)
    return config.maximum_jobs


def check_job_settings(config: ClusterConfig) -> None:
    """Refuse, in one line and before a run writes anything, job settings no job could be submitted with: memory,
    walltime, GPUs per worker process (`job_options`), and SLURM partitions that `sinfo` does not list."""
    from dask.utils import parse_bytes

    gpu_config = gpu_pool_config(config) if config.gpu_jobs is not None else None
    for pool, c in (("", config), (" gpu_jobs", gpu_config)):
        if c is None:
            continue
        try:
            parse_bytes(c.memory)
        except (ValueError, TypeError):
            raise UserError(f"cluster{pool} memory: expected a size such as 32GiB, found {c.memory!r}") from None
        job_options(c, pool="gpu" if pool else "cpu")
    if config.kind == "slurm":
        check_partitions([q for q in (config.queue, gpu_config and gpu_config.queue) if q])


def make_jobqueue_cluster(config: ClusterConfig):
    """A started SLURMCluster or PBSCluster whose PoolScaler adapts its job count to the pending tasks."""
    from dask_jobqueue import PBSCluster, SLURMCluster

    submit = SUBMIT_COMMAND[config.kind]
    if shutil.which(submit) is None:
        raise UserError(f"--cluster {config.kind}: `{submit}` not found on this machine; "
                        f"run where {config.kind.upper()} jobs can be submitted")
    check_batch_system(config.kind)
    cls = SLURMCluster if config.kind == "slurm" else PBSCluster
    gpu_config = gpu_pool_config(config) if config.gpu_jobs is not None else None
    if config.kind == "slurm":
        check_partitions([q for q in (config.queue, gpu_config and gpu_config.queue) if q])
    gpu_options = job_options(gpu_config, pool="gpu") if gpu_config else None  # checked before anything starts
    try:
        cluster = cls(**job_options(config))
    except ValueError as e:
        raise UserError(f"--cluster {config.kind}: {e}") from None
    top = maximum_jobs(config)
    # one pool (its jobs run every stage) or two: the PoolScaler either way, so that a job that dies is replaced,
    # jobs that cannot start end the run in one line, and a stage's backlog asks for all its jobs at once
    if gpu_config is None:
        slots = (config.gpus // config.processes_per_job if config.gpus else threads_per_worker(config)) \
            * config.processes_per_job
        kind = "gpu" if config.gpus else "cpu"  # (its jobs, workers and messages say which)
        pools = [Pool(kind, cluster.new_spec, kind.upper(), slots, min(config.minimum_jobs, top), top)]
    else:
        try:
            gpu_spec = gpu_job_spec(cluster, gpu_config, gpu_options)
        except ValueError as e:
            cluster.close()
            raise UserError(f"--cluster {config.kind}: {e}") from None
        cpu_slots = threads_per_worker(config) * config.processes_per_job
        pools = [Pool("cpu", cluster.new_spec, "CPU", cpu_slots, min(config.minimum_jobs, top), top),
                 Pool("gpu", gpu_spec, "GPU", gpu_config.gpus, gpu_config.minimum_jobs, gpu_config.maximum_jobs)]
    attach_scaler(cluster, PoolScaler(cluster, pools, idle_seconds=config.idle_seconds,
                                      alive_jobs=lambda: alive_job_ids(config.kind)))
    return cluster


def alive_job_ids(kind: str, timeout: float = 30.0) -> set[str]:
    """Ids of this user's jobs that the batch system still lists (queued or running)."""
    import getpass

    user = getpass.getuser()
    command = ["squeue", "-h", "-o", "%i", "-u", user] if kind == "slurm" else ["qstat", "-u", user]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    ids = set()
    for line in done.stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first[:1].isdigit():
            ids.add(first)
            ids.add(first.split(".")[0])  # PBS prints 1234.server; the job id may be either form
    return ids


def gpu_job_spec(cluster, gpu_config: ClusterConfig, options: dict | None = None) -> dict:
    """The worker spec of the GPU pool's jobs: the cluster's job settings with the GPU pool's on top."""
    options = dict(options or job_options(gpu_config, pool="gpu"))
    options.pop("scheduler_options")
    options = {**cluster._job_kwargs, **options}
    spec = {"cls": cluster.job_cls, "options": options}
    if gpu_config.processes_per_job > 1:
        spec["group"] = [f"-{i}" for i in range(gpu_config.processes_per_job)]
    try:  # a job object checks its options, as the cluster did for the CPU jobs
        cluster.job_cls(cluster.scheduler_address, name="check", **options)
    except TypeError as e:
        raise ValueError(f"gpu_jobs: {e}") from None
    return spec


def check_partitions(wanted: list[str], timeout: float = 30.0) -> None:
    """Refuse SLURM partitions that `sinfo --all` does not list (jobs there would never start)."""
    names = [q.strip() for queue in wanted for q in queue.split(",") if q.strip()]
    if not names:
        return
    try:
        done = subprocess.run(["sinfo", "--all", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return  # check_batch_system already said whether SLURM answers; sbatch will judge the partition
    if done.returncode != 0:
        return
    known = {line.strip().rstrip("*") for line in done.stdout.split()}
    for queue in names:
        if queue not in known:
            raise UserError(f"cluster queue {queue!r}: SLURM has no such partition; partitions: "
                            f"{', '.join(sorted(known)) or 'none'}")


def _pbs_memory(memory: str) -> str:
    """PBS memory (binary units, whole numbers, rounded up): 32GiB -> 32GB, 2GiB -> 2048MB."""
    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    return pbs_format_bytes_ceil(parse_bytes(memory))

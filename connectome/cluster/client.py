"""Where stages run: a LocalCluster, SLURM or PBS jobs (dask-jobqueue), or an existing scheduler.

Settings come from the YAML config's `cluster:` section, on top of an optional profile
(`profile: slurm` reads the shipped connectome/cluster/profiles/slurm.yaml; a path reads that file), on top of the
defaults below. `--cluster` on the command line only changes `kind`.

With a `gpu_jobs:` section there are two pools of workers under one scheduler (connectome.pools):
the section's own settings describe CPU jobs, which run the CPU stages, and `gpu_jobs` describes
GPU jobs, which run only the GPU stages.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectome.cluster import forkserver, worker_env
from connectome.cluster.session import attach_scaler, config_of, remember_config
from connectome.cluster.worker_env import PRELOAD
from connectome.cluster.worker_logs import PRELOAD as LOGS_PRELOAD

if TYPE_CHECKING:
    from distributed import Client
from connectome.core.errors import UserError

JOBQUEUE_KINDS = ("slurm", "pbs")


def is_remote(kind: str) -> bool:
    """`kind` is the address of a scheduler someone else started (tcp:// or tls://)."""
    return kind.startswith(("tcp://", "tls://"))


# a lab's own in the current directory's deploy/profiles/, then the shipped ones (package data; the repository's
# deploy/profiles links to them), so a profile name works from any directory and in an installed wheel
PROFILE_DIRS = (Path("deploy/profiles"), Path(__file__).resolve().parent / "profiles")


JOB_FIELDS = ("queue", "account", "cores", "memory", "processes_per_job", "walltime", "job_extra_directives",
              "job_script_prologue", "local_directory")


class GpuJobsConfig(BaseModel):
    """A second pool of worker jobs, for GPU stages only; unset job settings are the CPU jobs'."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(None, description="the GPU partition (SLURM) or queue (PBS)")
    account: str | None = None
    cores: int | None = Field(None, ge=1, description="cores per GPU job")
    memory: str | None = Field(None, description="memory per GPU job")
    processes_per_job: int | None = Field(None, ge=1, description="worker processes per GPU job (default: one per GPU)")
    walltime: str | None = None
    job_extra_directives: list[str] | None = Field(None, description="replace the CPU jobs' extra directives")
    job_script_prologue: list[str] | None = Field(None, description="replace the CPU jobs' prologue")
    local_directory: str | None = None
    gpus: int = Field(1, ge=1, description="GPUs per job")
    minimum_jobs: int = Field(0, ge=0)
    maximum_jobs: int = Field(1, ge=1)


class ClusterConfig(BaseModel):
    """Cluster settings from the YAML config or the command line."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("local", description="local, slurm, pbs, or a scheduler address tcp://HOST:PORT")
    profile: str | None = Field(None, description="a shipped profile name (connectome/cluster/profiles/) or a path "
                                                  "to a YAML file")
    # local
    n_workers: int = Field(2, ge=1, description="local worker processes (slurm/pbs: caps the workers when given)")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    dashboard_address: str = ":8787"
    processes: bool = True
    fork_workers: bool = Field(True, description="local workers fork from a server that imported torch and the "
                                                 "stages once (connectome.cluster.forkserver); false: they spawn")
    # slurm / pbs jobs (dask-jobqueue); one job runs `processes_per_job` workers
    queue: str | None = Field(None, description="partition (SLURM) or queue (PBS)")
    account: str | None = None
    cores: int = Field(1, ge=1, description="cores per job")
    memory: str = Field("2GiB", description="memory per job")
    processes_per_job: int = Field(1, ge=1, description="worker processes per job (cores are shared among them)")
    walltime: str | None = Field("01:00:00", description="per job, HH:MM:SS")
    gpus: int = Field(0, ge=0, description="GPUs per job (or per local worker); 0: CPU workers")
    job_extra_directives: list[str] = Field(default_factory=list, description="extra #SBATCH / #PBS lines")
    job_script_prologue: list[str] = Field(default_factory=list, description="shell lines before the worker starts")
    interface: str | None = Field(None, description="network interface of scheduler and workers, e.g. ib0 or lo")
    local_directory: str | None = Field(None, description="worker scratch directory (node-local disk)")
    log_directory: str | None = Field(None, description="where job stdout/stderr go")
    minimum_jobs: int = Field(0, ge=0)
    maximum_jobs: int = Field(4, ge=1)
    python: str | None = Field(None, description="worker interpreter (default: this one)")
    death_timeout: str = Field("60s", description="a worker exits when it cannot reach the scheduler this long")
    idle_seconds: float = Field(60.0, gt=0, description="an idle worker job is given back after this long")
    gpu_jobs: GpuJobsConfig | None = Field(
        None, description="a second pool of GPU worker jobs for GPU stages; the settings above are then the CPU jobs'")


def gpu_pool_config(config: ClusterConfig) -> ClusterConfig:
    """The settings of the GPU jobs of a two-pool cluster: `gpu_jobs` over the CPU jobs' settings."""
    gpu = config.gpu_jobs
    if gpu is None:
        raise ValueError("gpu_pool_config: the cluster config has no gpu_jobs section")
    own = {k: v for k, v in gpu.model_dump(exclude_unset=True).items() if k in JOB_FIELDS and v is not None}
    own.setdefault("processes_per_job", gpu.gpus)  # one worker per GPU, not the CPU jobs' process count
    return config.model_copy(update={**own, "gpus": gpu.gpus, "minimum_jobs": gpu.minimum_jobs,
                                     "maximum_jobs": gpu.maximum_jobs, "gpu_jobs": None})


def check_pools(config: ClusterConfig) -> None:
    """Refuse a two-pool cluster whose CPU section also asks for GPUs (every job would be a GPU job), and SLURM/PBS
    job settings no job could be submitted with (`jobqueue.check_job_settings`), before a run writes anything."""
    if config.gpu_jobs is not None and config.gpus:
        raise UserError(f"cluster: gpus is {config.gpus} but gpu_jobs is set too; with gpu_jobs the main section "
                        "describes CPU jobs: set gpus: 0 there and the GPUs per job under gpu_jobs")
    if config.kind in ("slurm", "pbs"):
        from connectome.cluster.jobqueue import check_job_settings

        check_job_settings(config)


def load_profile(name_or_path: str) -> dict:
    """The settings of a profile: a name (`PROFILE_DIRS`: the current directory's deploy/profiles/, then the
    shipped ones) or a path to a YAML file."""
    candidates = [Path(name_or_path)] if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path else []
    candidates += [d / f"{name_or_path}.yaml" for d in PROFILE_DIRS]
    for path in candidates:
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise UserError(f"cluster profile {path}: not valid YAML ({getattr(e, 'problem', e)})") from None
            if not isinstance(data, dict):
                raise UserError(f"cluster profile {path}: expected a mapping of settings")
            data = data.get("cluster", data)
            if "profile" in data:
                raise UserError(f"cluster profile {path}: a profile cannot name another profile")
            return data
    known = sorted({p.stem for d in PROFILE_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise UserError(f"cluster profile {name_or_path!r} not found; known profiles: {', '.join(known) or 'none'}")


def resolve_profile(config: ClusterConfig) -> ClusterConfig:
    """Apply the profile named in `config`: explicitly given settings win over the profile's."""
    if not config.profile:
        return config
    data = load_profile(config.profile)
    explicit = config.model_dump(exclude_unset=True)
    if isinstance(data.get("gpu_jobs"), dict) and explicit.get("gpu_jobs"):  # merged key by key
        explicit["gpu_jobs"] = {**data["gpu_jobs"], **explicit["gpu_jobs"]}
    try:
        merged = ClusterConfig.model_validate({**data, **explicit})
    except ValidationError as e:
        from connectome.engine.config import format_validation_error

        raise UserError(format_validation_error(f"cluster profile {config.profile}", e)) from None
    # fields set by the profile count as given (e.g. n_workers caps the job count)
    return merged.model_copy(update={k: getattr(merged, k) for k in {*data, *explicit}})


def parse_cluster_option(value: str | None, base: ClusterConfig | None = None) -> ClusterConfig:
    """Apply `--cluster local|slurm|pbs|tcp://...` on top of the config's cluster section."""
    base = base or ClusterConfig()
    if value is None:
        return base
    if value in ("local", *JOBQUEUE_KINDS) or is_remote(value):
        return base.model_copy(update={"kind": value})
    raise UserError(f"--cluster: expected local, slurm, pbs or tcp://HOST:PORT, found {value!r}")


def available_resources(client_or_config) -> dict[str, float]:
    """The worker resources this cluster offers: {"GPU": 1} when GPU tasks can run, plus {"CPU": 1}
    when CPU stages have workers of their own (two pools). A task asking for a resource that no
    worker has would never run, so stages ask only for what this returns.

    A ClusterConfig answers from its settings, so it works before adaptive jobs have started; a
    Client answers from the settings of the cluster it started, else from its workers' resources.
    """
    if isinstance(client_or_config, ClusterConfig):
        config = client_or_config
        if is_remote(config.kind):
            return {}  # unknown until connected: ask the client
        config = resolve_profile(config)
        if config.gpu_jobs is not None:
            return {"GPU": 1, "CPU": 1}
        return {"GPU": 1} if config.gpus > 0 else {}
    client = client_or_config
    client_config = config_of(client)
    if client_config is not None and not is_remote(client_config.kind):
        return available_resources(client_config)
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    offered = [w.get("resources", {}) for w in info.get("workers", {}).values()]
    return {name: 1 for name in ("GPU", "CPU") if any(r.get(name, 0) >= 1 for r in offered)}


def gpu_resources(client_or_config) -> dict[str, float]:
    """{"GPU": 1} when GPU tasks can run on this cluster, else {}."""
    return {"GPU": 1} if available_resources(client_or_config).get("GPU") else {}


def task_resources(wants: dict[str, float] | None, available: dict[str, float]) -> dict[str, float] | None:
    """What a stage's tasks ask for: its own wants when the cluster offers them; CPU stages on a
    two-pool cluster ask for a CPU slot (keeping them off GPU jobs); else nothing."""
    if wants:
        return dict(wants) if all(available.get(k, 0) >= v for k, v in wants.items()) else None
    return {"CPU": 1} if available.get("CPU") else None


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


class LazyClient:
    """Stands for the Client of `open_client(..., lazy=True)`: the cluster starts on first use, so a
    run whose blocks are all done finishes without starting one."""

    def __init__(self, start):
        self._start = start
        self._client = None

    @property
    def started(self) -> bool:
        return self._client is not None

    def connect(self) -> None:
        """Start the cluster now (a run that has work reaches it before it writes anything)."""
        if self._client is None:
            self._client = self._start()

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_start", "_client"):
            raise AttributeError(name)
        if self._client is None:
            self._client = self._start()
        return getattr(self._client, name)


def connect(client) -> None:
    """Start the cluster of a LazyClient now (refused in one line where none answers); a Client is connected."""
    if isinstance(client, LazyClient):
        client.connect()


@contextlib.contextmanager
def open_client(config: ClusterConfig | None = None, quiet: bool = False, lazy: bool = False) -> Iterator[Client]:
    """A connected distributed Client for `config`; the cluster it started is closed on exit.

    `lazy`: yield a LazyClient that starts the cluster only when something asks it for work.
    """
    config = resolve_profile(config or ClusterConfig())
    opened: list = []

    def start():
        client, cluster = _connect(config)
        opened.append((client, cluster))
        remember_config(client, config)
        _announce(client, quiet, "" if is_remote(config.kind) else config.dashboard_address)
        return client

    if not is_remote(config.kind):
        check_pools(config)  # refused before anything starts, lazy or not
    if lazy:
        proxy = LazyClient(start)
        remember_config(proxy, config)
        handle = proxy
    else:
        handle = start()
    try:
        yield handle  # type: ignore[misc]
    finally:
        for client, cluster in opened:
            client.close()
            if cluster is not None:
                cluster.close()


def _connect(config: ClusterConfig):
    """(client, the cluster it started or None) for resolved settings."""
    from distributed import Client

    kind = config.kind
    cluster = None
    if is_remote(kind):
        try:
            client = Client(kind, timeout="10s")
        except OSError as e:
            raise UserError(f"--cluster {kind}: no Dask scheduler answers there ({e})") from None
    else:
        check_pools(config)
        with warnings.catch_warnings():  # a dashboard port in use (another run): another port, said by `_announce`
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            if kind == "local":
                cluster = make_local_cluster(config)
            elif kind in JOBQUEUE_KINDS:
                from connectome.cluster.jobqueue import make_jobqueue_cluster

                cluster = make_jobqueue_cluster(config)
            else:
                raise UserError(f"cluster kind: expected local, slurm, pbs or tcp://HOST:PORT, found {kind!r}")
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
    return client, cluster


def forks_workers(config: ClusterConfig) -> bool:
    """Whether `config`'s local workers are processes forked from the preloaded server."""
    return config.processes and config.fork_workers


def start_worker_server(config: ClusterConfig) -> None:
    """Where `config`'s workers are local processes that fork (`fork_workers`), start the server they fork from
    (`connectome.cluster.forkserver`) with the settings they start with; once per process, the rest at no cost."""
    if config.kind == "local" and forks_workers(config):
        worker_env.use_for_local_workers()
        forkserver.start_server()


def make_local_cluster(config: ClusterConfig):
    """A LocalCluster of `n_workers` processes; with `gpu_jobs`, plus `gpu_jobs.maximum_jobs` GPU
    worker processes (each with `gpu_jobs.gpus` GPUs) that only GPU stages use."""
    from distributed import LocalCluster

    worker_env.use_for_local_workers()  # (before the forkserver starts: it takes the workers' settings)
    gpu_jobs = config.gpu_jobs
    pooled = gpu_jobs is not None
    extra: dict = {"resources": {"GPU": config.gpus}} if config.gpus else {}
    if config.processes:  # worker processes write to the run's log file (never a thread of this process)
        extra["preload"] = [LOGS_PRELOAD]
    with forkserver.forking_workers() if forks_workers(config) else contextlib.nullcontext() as env:
        if env is not None:  # forked from a server that imported torch and the stages once
            extra["env"] = env
        cluster = LocalCluster(
            n_workers=0 if pooled else config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=config.memory_limit,
            dashboard_address=config.dashboard_address,
            silence_logs=logging.ERROR,  # (a run's log file takes them from INFO on: cluster.worker_logs)
            **extra,
        )
    if gpu_jobs is not None:  # pooled
        from connectome.cluster.pools import Pool, PoolScaler

        base = cluster.new_spec
        cpu = {**base, "options": {**base["options"], "resources": {"CPU": config.threads_per_worker}}}
        gpu = {**base, "options": {**base["options"], "resources": {"GPU": gpu_jobs.gpus},
                                   "preload": [PRELOAD, LOGS_PRELOAD]}}
        n_gpu = gpu_jobs.maximum_jobs
        attach_scaler(cluster, PoolScaler(cluster, [
            Pool("cpu", cpu, "CPU", config.threads_per_worker, config.n_workers, config.n_workers),
            Pool("gpu", gpu, "GPU", gpu_jobs.gpus, n_gpu, n_gpu),
        ]))
    return cluster


def _announce(client, quiet: bool, wanted: str = "") -> None:
    """The dashboard's link on stderr; `wanted` (`:PORT` of a local cluster) named where that port was taken."""
    if not quiet:
        link = client.dashboard_link
        moved = f" (port {wanted.lstrip(':')} was in use)" if link and wanted.startswith(":") and \
            not link.split("/status")[0].endswith(wanted) else ""
        print(f"dask dashboard: {link}{moved}" if link else "dask dashboard: unavailable", file=sys.stderr)


def memory_advice(client, memory_limit: int | None = None) -> str:
    """The likely cause of workers that died running a task, with what to change, for a cluster whose workers
    have a memory limit: "a worker is killed when it passes 95% of its memory limit (420 MiB per worker): raise the
    cluster's memory_limit or use a smaller block shape"; "" where no worker has one. `memory_limit`: the limit of
    the worker that died last, in bytes, where known (Dask's KilledWorker names it); else the smallest limit among
    the workers there are now."""
    import dask
    from dask.utils import format_bytes

    if not memory_limit:
        try:
            info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
            limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
        except Exception:  # (a closed client): no advice rather than another failure
            limits = []
        memory_limit = min((limit for limit in limits if limit), default=0)
    if not memory_limit:
        return ""
    config = config_of(client)
    if config is None or is_remote(config.kind):
        remedy = "start the workers with a larger memory limit"
    elif config.kind in JOBQUEUE_KINDS:
        remedy = "raise the cluster's memory (per job, shared by its processes_per_job workers)"
    else:
        remedy = "raise the cluster's memory_limit"
    size = format_bytes(memory_limit).replace(".00 ", " ")
    terminate = dask.config.get("distributed.worker.memory.terminate", 0.95)
    cause = (f"a worker is killed when it passes {terminate:.0%} of its memory limit ({size} per worker)" if terminate
             else f"the workers likely ran out of memory ({size} per worker)")
    return f"{cause}: {remedy} or use a smaller block shape"

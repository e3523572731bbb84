"""Cluster settings, profiles, job scripts, GPU resources, the worker plugin and the Docker images."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dask_jobqueue.pbs import PBSJob
from dask_jobqueue.slurm import SLURMJob

from connectome.cluster.client import ClusterConfig, gpu_resources, open_client, parse_cluster_option, resolve_profile
from connectome.cluster.jobqueue import job_options, maximum_jobs
from connectome.cluster.worker_env import MALLOC_ENV
from connectome.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "deploy" / "profiles").glob("*.yaml"))


def job_script(config: ClusterConfig, log_directory: Path) -> str:
    config = resolve_profile(config).model_copy(update={"log_directory": str(log_directory)})
    options = job_options(config)
    options.pop("scheduler_options")
    job = (SLURMJob if config.kind == "slurm" else PBSJob)(scheduler="tcp://10.0.0.1:8786", name="w", **options)
    return job.job_script()


def test_parse_cluster_option_keeps_the_config_section():
    base = ClusterConfig(queue="long", cores=4)
    for value in ("local", "slurm", "pbs", "tcp://10.1.2.3:8786"):
        parsed = parse_cluster_option(value, base)
        assert parsed.kind == value and parsed.queue == "long" and parsed.cores == 4
    assert parse_cluster_option(None, base) == base
    with pytest.raises(UserError, match="sge"):
        parse_cluster_option("sge", base)


def test_required_profiles_exist_and_validate():
    names = {p.stem for p in PROFILES}
    assert {"local", "slurm", "pbs", "slurm-gpu"} <= names
    for path in PROFILES:
        config = resolve_profile(ClusterConfig(profile=path.stem))
        assert config.kind == path.stem.split("-")[0]
        by_path = resolve_profile(ClusterConfig(profile=str(path)))
        assert by_path.model_dump(exclude={"profile"}) == config.model_dump(exclude={"profile"})


def test_profile_names_work_from_any_directory_and_ship_in_the_package(tmp_path, monkeypatch):
    """A profile name read from another directory than the repository's (a lab's project folder, a batch job's,
    an installed wheel's user): the shipped profiles are package data; a lab's own deploy/profiles/NAME.yaml in
    the current directory comes first. (Until 2026-12-05 only the repository root found them.)"""
    import importlib.resources
    import tomllib

    monkeypatch.chdir(tmp_path)
    assert resolve_profile(ClusterConfig(profile="slurm")).model_dump() == \
        resolve_profile(ClusterConfig(profile=str(REPO / "deploy" / "profiles" / "slurm.yaml"))).model_dump() | \
        {"profile": "slurm"}
    shipped = importlib.resources.files("connectome.cluster") / "profiles"
    assert {p.name for p in PROFILES} <= {p.name for p in shipped.iterdir()}
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "profiles/*.yaml" in package_data["connectome.cluster"]
    (tmp_path / "deploy" / "profiles").mkdir(parents=True)
    (tmp_path / "deploy" / "profiles" / "slurm.yaml").write_text("kind: slurm\nqueue: ours\n")
    assert resolve_profile(ClusterConfig(profile="slurm")).queue == "ours"


def test_explicit_settings_win_over_the_profile():
    config = resolve_profile(ClusterConfig(profile="slurm", maximum_jobs=1, queue="a100"))
    assert (config.maximum_jobs, config.queue, config.cores) == (1, "a100", 8)
    with pytest.raises(UserError, match="known profiles: .*slurm-gpu"):
        resolve_profile(ClusterConfig(profile="nonesuch"))


def test_bad_profile_value_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: slurm\ncores: -3\n")
    with pytest.raises(UserError, match="cores"):
        resolve_profile(ClusterConfig(profile=str(bad)))


def test_slurm_cpu_job_script(tmp_path):
    script = job_script(ClusterConfig(kind="slurm", queue="short", account="lab42", cores=4, memory="8GiB",
                                      processes_per_job=2, walltime="00:30:00", interface="ib0",
                                      job_extra_directives=["--qos=low"], job_script_prologue=["module load x"]), tmp_path)
    for line in ("#SBATCH -p short", "#SBATCH -A lab42", "#SBATCH -n 1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH -t 00:30:00", "#SBATCH --qos=low", "module load x"):
        assert line in script, (line, script)
    assert script.index('export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"') < script.index("module load x")
    assert "gres" not in script and "--resources" not in script
    command = script.strip().splitlines()[-1]
    assert "--preload connectome.cluster.preload" in command and "--nworkers 2" in command and "--interface ib0" in command


def test_gpu_jobs_ask_for_gpus_and_advertise_them(tmp_path):
    slurm = job_script(ClusterConfig(kind="slurm", queue="gpu", gpus=2, processes_per_job=2), tmp_path)
    assert "#SBATCH --gres=gpu:2" in slurm and "#SBATCH -p gpu" in slurm and "-J connectome-gpu-worker" in slurm
    assert "--resources GPU=1" in slurm and "--nworkers 2" in slurm  # one GPU per worker process
    pbs = job_script(ClusterConfig(kind="pbs", cores=8, memory="16GiB", gpus=4), tmp_path)
    assert re.search(r"#PBS -l select=1:ncpus=8:ngpus=4:mem=16GB", pbs), pbs
    assert "--resources GPU=4" in pbs
    with pytest.raises(UserError, match="own GPU"):
        job_options(ClusterConfig(kind="slurm", gpus=1, processes_per_job=2))


def test_workers_option_caps_the_job_count():
    config = ClusterConfig(kind="slurm", processes_per_job=2)
    assert maximum_jobs(config) == config.maximum_jobs
    assert maximum_jobs(config.model_copy(update={"n_workers": 5})) == 3
    assert maximum_jobs(ClusterConfig(kind="slurm", n_workers=5, maximum_jobs=7)) == 7


def test_gpu_resources_follow_the_cluster():
    assert gpu_resources(ClusterConfig()) == {}
    assert gpu_resources(ClusterConfig(kind="slurm")) == {}
    assert gpu_resources(ClusterConfig(profile="slurm-gpu")) == {"GPU": 1}
    assert gpu_resources(ClusterConfig(kind="pbs", gpus=1)) == {"GPU": 1}
    with open_client(ClusterConfig(n_workers=1, dashboard_address=":0"), quiet=True) as client:
        assert gpu_resources(client) == {}
    with open_client(ClusterConfig(n_workers=1, gpus=1, dashboard_address=":0"), quiet=True) as client:
        assert gpu_resources(client) == {"GPU": 1}
        # a task asking for the resource runs there; through a bare scheduler address too
        assert client.submit(os.getpid, resources={"GPU": 1}, pure=False).result(timeout=30) > 0
        address = client.scheduler.address
        with open_client(ClusterConfig(kind=address), quiet=True) as remote:
            assert gpu_resources(remote) == {"GPU": 1}


def test_local_workers_start_with_glibc_steady_malloc_settings(monkeypatch):
    """Not dask's MALLOC_TRIM_THRESHOLD_=65536, which made block-sized arrays fault in afresh (2.3x slower)."""
    for name in MALLOC_ENV:  # an earlier nanny in this process may have exported dask's values
        monkeypatch.delenv(name, raising=False)
    with open_client(ClusterConfig(n_workers=1, dashboard_address=":0"), quiet=True) as client:
        seen = client.run(lambda: {name: os.environ.get(name) for name in MALLOC_ENV})
    assert list(seen.values()) == [MALLOC_ENV]


def test_pin_gpu_gives_each_worker_process_its_own(monkeypatch):
    from connectome.cluster.device import pin_gpu

    for name, expected in (("job-0", "4"), ("job-1", "6"), ("job-2", "4"), ("single", "4")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
        assert pin_gpu(name) == expected and os.environ["CUDA_VISIBLE_DEVICES"] == expected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert pin_gpu("job-1", gpus_per_worker=2) == "2,3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pin_gpu("job-0") is None


def _tiny_model_path(tmp_path: Path) -> Path:
    """A two-level U-Net with a few channels, saved as the models package saves weights."""
    from connectome.models import UNet, UNetConfig, save_model

    config = UNetConfig(base_channels=2, max_channels=4, downsample=((2, 2, 2),), kernels=((3, 3, 3),) * 2,
                        encoder_convs=(1, 1), decoder_convs=(1,))
    meta = {"name": "tiny", "voxel_size": [8, 8, 8], "normalisation": {"mean": 128.0, "std": 40.0}}
    return save_model(tmp_path / "tiny", UNet(config), meta)


def test_preloaded_workers_register_the_model_plugin(tmp_path, monkeypatch):
    """Workers started with --preload connectome.cluster.preload choose a device and load named models once."""
    from distributed import Client, LocalCluster

    from connectome.cluster.plugin import PLUGIN_NAME, worker_models
    from connectome.models import load_model  # noqa: F401  (the workers load through it)

    models = [str(_tiny_model_path(tmp_path))]
    monkeypatch.setenv("CONNECTOME_WORKER_MODELS", models[0])
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", preload=["connectome.cluster.preload"]) as cluster, \
            Client(cluster) as client:
        held = client.run(worker_models)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all(PLUGIN_NAME in names for names in plugins.values()), plugins
        assert all(h["device"] == "cpu" for h in held.values()), held
        assert all(h["models"] == models and h["loads"] == 1 for h in held.values()), held

        def use_twice(path):
            from connectome.cluster.model_cache import get_model, load_count
            model = get_model(path)
            return model is get_model(path, "cpu"), str(model.device), load_count()

        same, device, loads = client.submit(use_twice, models[0], pure=False).result(timeout=60)
        assert same and device == "cpu" and loads == 1  # reused on its device, not reloaded


DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cuda"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_package_and_starts_real_modules(path):
    text = path.read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.startswith("#")]
    base = next(l.split()[1] for l in lines if l.startswith("FROM"))
    torch_install = next(l for l in lines if "pip install" in l and "torch" in l)
    if path.suffix == ".cuda":
        assert base.startswith("nvidia/cuda:") and "/whl/cu" in torch_install
    else:
        assert base.startswith("python:") and "/whl/cpu" in torch_install
    assert any(re.search(r"pip install (\S+ )*\.( |$)", l) for l in lines)
    for l in lines:
        if l.startswith("COPY"):
            for source in l.split()[1:-1]:
                assert (REPO / source).exists(), f"{path.name}: COPY source {source} does not exist"
    entry = next(l for l in lines if l.startswith("ENTRYPOINT"))
    if "connectome" in entry.split('"')[1::2][:1]:
        assert importlib.util.find_spec("connectome.cli") is not None
    for module in re.findall(r'"--preload", "([\w.]+)"', entry):
        assert importlib.util.find_spec(module) is not None, module
    if shutil.which("hadolint"):
        lint = subprocess.run(["hadolint", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_images_give_their_workers_connectomes_malloc_settings():
    """docker/dask.yaml, copied into both images as Dask's /etc/dask config, makes a nanny start its workers with
    the malloc settings of connectome's own workers (worker_env.MALLOC_ENV), with their names' case kept."""
    import dask

    from connectome.cluster.worker_env import MALLOC_ENV

    config = dask.config.collect(paths=[str(REPO / "docker" / "dask.yaml")], env={})
    assert config["distributed"]["nanny"]["pre-spawn-environ"] == MALLOC_ENV
    for path in DOCKERFILES:
        assert "COPY docker/dask.yaml /etc/dask/connectome.yaml" in path.read_text(), path.name


def test_command_line_cluster_settings():
    import argparse

    from connectome.cli.run_options import add_run_options, cluster_settings

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    from_config = ClusterConfig(kind="slurm", queue="short")
    args = parser.parse_args(["--profile", "slurm-gpu", "--cluster", "pbs", "--workers", "3"])
    config = resolve_profile(cluster_settings(args, from_config))
    assert (config.kind, config.queue, config.n_workers) == ("pbs", "short", 3)  # the config's queue wins
    assert config.maximum_jobs == 1  # --workers 3 with 4 processes per job caps the CPU jobs at 1
    assert config.gpu_jobs is not None and config.gpu_jobs.queue == "gpu"  # the rest is the profile's
    assert cluster_settings(parser.parse_args([]), from_config) == from_config
    assert "n_workers" not in cluster_settings(parser.parse_args([])).model_fields_set


def test_a_dashboard_port_in_use_is_said_in_one_line(capfd):
    """Another run holds the dashboard port: the cluster takes another one and says so in its one dashboard line,
    without distributed's four-line warning."""
    import socket

    taken = socket.socket()
    taken.bind(("", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with open_client(ClusterConfig(n_workers=1, processes=False, dashboard_address=f":{port}")) as client:
            link = client.dashboard_link
    finally:
        taken.close()
    err = capfd.readouterr().err
    assert f"(port {port} was in use)" in err and "UserWarning" not in err and "already in use" not in err, err
    assert link and f":{port}/" not in link
    assert [line for line in err.splitlines() if "dashboard" in line] == [f"dask dashboard: {link} (port {port} was "
                                                                          "in use)"]


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
@pytest.mark.parametrize("bad, named", [("memory: lots", "'lots'"), ("walltime: 4h", "'4h'"),
                                        ("gpu_jobs: {memory: 3 apples}", "'3 apples'"),
                                        ("gpus: 1\nprocesses_per_job: 2", "gpus (1)")])
def test_job_settings_no_job_could_have_are_refused_before_anything_is_written(tmp_path, capsys, kind, bad, named):
    """Memory, walltime and GPUs per worker are checked before the run writes anything (until 2026-12-05 its
    run.json and empty arrays were written first), in one line naming the value."""
    import numpy as np

    from connectome.cli.main import main
    from connectome.io import create_volume

    raw = create_volume(str(tmp_path / "raw"), (8, 32, 32), np.uint8, (8, 32, 32), (8.0, 8.0, 8.0))
    raw.write(raw.box, np.full((8, 32, 32), 100, np.uint8))
    profile = tmp_path / "lab.yaml"
    profile.write_text(f"kind: {kind}\n{bad}\n")
    code = main(["segment", raw.address, str(tmp_path / "out"), "--cluster", kind, "--profile", str(profile),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and named in err, err
    assert not (tmp_path / "out").exists()


def test_a_profile_value_of_the_wrong_type_is_named(tmp_path):
    """`cores: eight` in a profile: the one line names the key and the value found (it named the key only)."""
    profile = tmp_path / "lab.yaml"
    profile.write_text("kind: slurm\ncores: eight\n")
    with pytest.raises(UserError, match=r"lab.yaml: cores: .*integer.*\(found 'eight'\)"):
        resolve_profile(ClusterConfig(profile=str(profile)))

"""Local workers forked from the preloaded server (`cluster.forkserver`) start as spawned ones would, but imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from connectome.cluster import forkserver
from connectome.cluster.client import ClusterConfig, open_client

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="no forkserver on this platform")


def _worker_facts():
    import os
    import sys

    import torch

    return {"threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"), "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "hash": hash("connectome"), "late": os.environ.get("CONNECTOME_TEST_LATE"), "stages":
            "connectome.affinity.stages" in sys.modules, "parent": os.getppid()}


def _probe_at_start(dask_worker):
    """Whether the worker had torch imported before its first task (a spawned one has not)."""
    return "torch" in sys.modules


def _facts(config: ClusterConfig) -> tuple[dict, dict]:
    with open_client(config, quiet=True) as client:
        at_start = client.run(_probe_at_start)
        facts = client.run(_worker_facts)
    return at_start, facts


FRESH = """
import json
from connectome.cluster.client import ClusterConfig
from test_forkserver import _facts
if __name__ == "__main__":
    print(json.dumps(_facts(ClusterConfig(n_workers=2, dashboard_address=":0"))))
"""


def test_forked_workers_are_preloaded_and_set_up_as_spawned_ones(monkeypatch):
    config = ClusterConfig(n_workers=2, dashboard_address=":0")
    spawned_start, spawned = _facts(config.model_copy(update={"fork_workers": False}))
    monkeypatch.setenv("CONNECTOME_TEST_LATE", "yes")  # set after the server may have started
    forked_start, forked = _facts(config)
    # in a fresh process, whose environment lacks what a nanny sets before spawning, the server starts with it
    env = {k: v for k, v in os.environ.items() if k not in forkserver.pre_spawn_environment()}
    fresh = subprocess.run([sys.executable, "-c", FRESH], env=env, cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    fresh_start, fresh_facts = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert not any(spawned_start.values()) and all(forked_start.values()) and all(fresh_start.values())
    strip = ("late", "parent", "stages")
    same = [{k: v for k, v in f.items() if k not in strip} for f in spawned.values()]
    for run in (forked, fresh_facts):  # threads, malloc and hash seed as a spawned worker's
        assert [{k: v for k, v in f.items() if k not in strip} for f in run.values()] == same, (run, spawned)
    first = next(iter(forked.values()))
    assert first["threads"] == 1 and first["omp"] == "1" and first["mmap"] == "33554432"
    assert all(f["late"] == "yes" and f["stages"] for f in forked.values())
    assert all(f["parent"] == os.getpid() for f in spawned.values())
    assert all(f["parent"] != os.getpid() for f in forked.values())  # forked by the server, not by this process
    # a LocalCluster of the user's own (after ours) spawns, as Dask's default
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"


EARLY = """
import multiprocessing.forkserver as server
import sys
from connectome.cli.main import build_parser
from connectome.cli.run_options import start_local_workers_early
args = build_parser().parse_args(["segment", "raw", "out", *sys.argv[1:]])
start_local_workers_early(args)
print(server._forkserver._forkserver_pid is not None, "torch" in sys.modules)
"""


@pytest.mark.parametrize("options,started", [([], True), (["--cluster", "slurm"], False),
                                             (["--cluster", "tcp://127.0.0.1:1"], False),
                                             (["--profile", "nonexistent"], False)])
def test_a_command_starts_the_server_first_only_for_forked_local_workers(options, started):
    """`segment` starts the server before it imports the stages (their imports then overlap), where it will use it."""
    run = subprocess.run([sys.executable, "-c", EARLY, *options], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(started), "False"], run.stdout


EARLY_RUN = """
import multiprocessing.forkserver as server
import sys
from connectome.cli.main import build_parser
from connectome.cli.run_options import start_local_workers_early
from connectome.engine.config import load_config
args = build_parser().parse_args(["run", sys.argv[1]])
start_local_workers_early(args, load_config(sys.argv[1]).cluster)
print(server._forkserver._forkserver_pid is not None)
"""


@pytest.mark.parametrize("cluster,started", [({}, True), ({"kind": "slurm"}, False), ({"fork_workers": False}, False)])
def test_run_starts_the_server_first_where_its_config_runs_forked_local_workers(tmp_path, cluster, started):
    import yaml

    config = {"input": str(tmp_path / "raw"), "output": str(tmp_path / "out"), "stages": [{"stage": "copy"}],
              **({"cluster": cluster} if cluster else {})}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-c", EARLY_RUN, str(tmp_path / "run.yaml")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(started)], run.stdout

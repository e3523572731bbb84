"""Faults with real processes: a worker killed, the client killed, a block that always fails,
an unwritable and a full output location."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connectome.cli.main import main
from connectome.cluster.client import ClusterConfig, open_client
from connectome.cluster.worker_logs import worker_logs
from connectome.core.geometry import Box
from connectome.engine.config import load_config
from connectome.engine.markers import DoneMarkers
from connectome.engine.plan import execute, plan_run
from connectome.engine.registry import REGISTRY, register
from connectome.image.stages import NormalizeStage
from connectome.io import open_volume

from run_case import TESTS_DIR, assert_same_tree, last_json, tree_bytes, write_config, write_raw

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]


class SlowNormalize(NormalizeStage):
    """normalize, with a pause per block so that a fault can land mid-stage."""

    name = "slow_normalize"

    def process(self, block, volumes):
        time.sleep(0.12)
        return super().process(block, volumes)


class Explode(NormalizeStage):
    """normalize, except that block 3 always raises; every attempt at it leaves a file."""

    name = "explode"

    def process(self, block, volumes):
        if block.index == 3:
            attempts = Path(self.output_addresses["normalized"]).parent / "attempts"
            attempts.mkdir(exist_ok=True)
            (attempts / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            raise ValueError("synthetic failure in block 3")
        return super().process(block, volumes)


for _cls in (SlowNormalize, Explode):
    if _cls.name not in REGISTRY:
        register(_cls)


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Worker processes unpickle the stages above by module name: let them import tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))


def _run(cfg: Path, capsys, *extra: str) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = main(["run", str(cfg), "--no-progress", "--json", *extra])
    out = capsys.readouterr()
    return code, (last_json(out.out) if code == 0 else None), out.err


def _clean_reference(tmp_path: Path, raw: str, capsys, block, sigma=4.0) -> Path:
    cfg = write_config(tmp_path / "clean.yaml", raw, tmp_path / "clean", block=block,
                       stages=[{"stage": "normalize", "params": {"sigma": sigma}}])
    code, _, err = _run(cfg, capsys)
    assert code == 0, err
    return tmp_path / "clean" / "normalized"


def test_worker_killed_mid_stage(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw.npz", shape=(16, 128, 128))
    block = (2, 64, 64)  # 32 blocks
    reference = _clean_reference(tmp_path, raw, capsys, block)
    cfg = write_config(tmp_path / "slow.yaml", raw, tmp_path / "out", block=block,
                       stages=[{"stage": "slow_normalize", "params": {"sigma": 4.0}}])
    plan = plan_run(load_config(str(cfg)))
    markers = DoneMarkers(str(tmp_path / "out"), "slow_normalize")
    killed: dict = {}
    with worker_logs(str(tmp_path / "out")), \
            open_client(ClusterConfig(n_workers=2, dashboard_address=":0"), quiet=True) as client:
        pids = client.run(os.getpid)

        def kill_one_worker():
            while len(markers.done()) < 4:
                time.sleep(0.01)
            killed["pid"] = next(iter(pids.values()))
            killed["done_at_kill"] = len(markers.done())
            os.kill(killed["pid"], signal.SIGKILL)

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        reports = execute(plan, client, progress=False)
        killer.join(timeout=5)
        pids_after = set(client.run(os.getpid).values())
    assert killed and killed["done_at_kill"] < 32, killed
    assert killed["pid"] not in pids_after
    assert reports[0].ran == 32 and len(markers.done()) == 32
    assert_same_tree(reference, tmp_path / "out" / "normalized")
    log = (tmp_path / "out" / ".connectome" / "logs" / "dask.log").read_text()  # (the nanny's INFO line was dropped)
    assert f"Worker process {killed['pid']} was killed by signal 9" in log, log


def test_client_killed_then_resumed(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw.npz", shape=(32, 256, 256))
    block = (4, 64, 64)  # 128 blocks
    stages = [{"stage": "normalize", "params": {"sigma": 12.0}}]
    cfg = write_config(tmp_path / "run.yaml", raw, tmp_path / "out", block=block, stages=stages)
    markers = DoneMarkers(str(tmp_path / "out"), "normalize")
    command = [sys.executable, "-m", "connectome.cli", "run", str(cfg), "--no-progress", "--json"]
    # its own session: killing the group takes the client and its local workers, as a lost node would
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(markers.done()) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    leftover = _wait_group_gone(proc.pid, timeout=10)
    assert not leftover, f"processes of the killed run survive: {leftover}"
    done_after_kill = len(markers.done())
    assert 10 <= done_after_kill < 128

    code, report, err = _run(cfg, capsys)
    assert code == 0, err
    stage = report["stages"][0]
    assert stage["skipped"] == done_after_kill and stage["ran"] == 128 - done_after_kill
    assert_same_tree(_clean_reference(tmp_path, raw, capsys, block, sigma=12.0), tmp_path / "out" / "normalized")


def _wait_group_gone(pgid: int, timeout: float) -> list[str]:
    """Wait until no process of group `pgid` is left (killed ones linger briefly until reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_block_that_always_fails(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw.npz", shape=(8, 128, 128))
    cfg = write_config(tmp_path / "run.yaml", raw, tmp_path / "out", block=(2, 64, 64), retries=1,
                       stages=[{"stage": "explode", "params": {"sigma": 4.0}}])
    code, _, err = _run(cfg, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    last = lines[-1]  # the one-line summary comes last, alone; the traceback is in a file it names
    assert "'explode'" in last and "block 3" in last and "synthetic failure in block 3" in last, last
    assert "Traceback" not in err and len(lines) == 1, err
    log = tmp_path / "out" / ".connectome" / "logs" / "failure.log"
    assert str(log.parent) in last and "synthetic failure in block 3" in log.read_text()
    attempts = list((tmp_path / "out" / "attempts").iterdir())
    assert len(attempts) == 2  # retries: 1 -> two attempts, then the run stops
    assert 3 not in DoneMarkers(str(tmp_path / "out"), "explode").done()


def test_status_of_a_failed_run_lists_the_stages_it_did_not_reach(tmp_path, capsys):
    import stages_for_tests  # noqa: F401  (registers block-sum and fill-total, whose global step is `total`)

    raw = write_raw(tmp_path / "raw.npz", shape=(8, 128, 128))
    cfg = write_config(tmp_path / "run.yaml", raw, tmp_path / "out", block=(2, 64, 64), retries=0,
                       stages=[{"stage": "explode", "params": {"sigma": 4.0}}, {"stage": "block-sum"},
                               {"stage": "fill-total"}])
    code, _, err = _run(cfg, capsys)
    assert code == 1, err
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    rows = last_json(capsys.readouterr().out)["stages"]
    assert rows[0]["stage"] == "explode" and rows[0]["total"] == 16 and rows[0]["done"] < 16
    # the stages and the global step the run did not reach are listed all the same, in the order they run
    assert rows[1:] == [{"stage": name, "done": 0, "total": None, "lost": 0}
                        for name in ("block-sum", "total", "fill-total")]
    assert main(["status", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["fill-total", "not", "started"]


def test_unwritable_output(tmp_path, tmpfs, capsys):
    mount_point, remount = tmpfs
    remount("size=8m")
    raw = write_raw(tmp_path / "raw.npz", shape=(8, 128, 128))
    cfg = write_config(tmp_path / "run.yaml", raw, mount_point / "out", block=(4, 64, 64))
    code, _, err = _run(cfg, capsys)
    assert code == 0, err
    before = tree_bytes(mount_point / "out")
    remount("ro")  # root ignores permission bits; a read-only file system stops root too
    fresh = write_config(tmp_path / "fresh.yaml", raw, mount_point / "elsewhere", block=(4, 64, 64))
    for config in (cfg, fresh):
        code, _, err = _run(config, capsys)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "read-only" in err.lower() and str(mount_point) in err, err
    assert tree_bytes(mount_point / "out") == before


def test_full_output(tmp_path, tmpfs, capsys):
    mount_point, remount = tmpfs  # 1 MiB: the normalized volume (about 1 MB, incompressible) cannot fit
    raw = write_raw(tmp_path / "raw.npz", shape=(16, 256, 256), seed=3)
    block = (4, 64, 64)
    reference = _clean_reference(tmp_path, raw, capsys, block)
    cfg = write_config(tmp_path / "run.yaml", raw, mount_point / "out", block=block, retries=1)
    code, _, err = _run(cfg, capsys)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert "'normalize'" in last and "No space left on device" in last, last
    assert f"writing {mount_point / 'out' / 'normalized'}" in last, last  # the volume it could not write
    markers = DoneMarkers(str(mount_point / "out"), "normalize")
    done = markers.done()
    assert 0 < len(done) < 64, len(done)
    written = open_volume(str(mount_point / "out" / "normalized"))
    clean = open_volume(str(reference))
    plan = plan_run(load_config(str(cfg)))
    for i in done:  # what was finished before the disk filled is intact
        box: Box = plan.stages[0].grid.block(i).write_box
        assert (written.read(box) == clean.read(box)).all(), f"block {i} corrupted"
    remount("size=16m")
    code, report, err = _run(cfg, capsys)
    assert code == 0, err
    assert report["stages"][0]["skipped"] == len(done)
    assert_same_tree(reference, mount_point / "out" / "normalized")

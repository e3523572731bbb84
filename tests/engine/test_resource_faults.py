"""Runs that meet the limits of their machine: a disk that fills as a block fails, workers with a small memory
limit, a block that passes it, and the temporary files that writes stopped by a full disk or a kill leave."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import distributed  # noqa: F401  (its config defaults are loaded before a test sets one of them)
import numpy as np
import pytest

from connectome.cli.main import main
from connectome.cluster.client import ClusterConfig, open_client
from connectome.cluster.jobqueue import job_options
from connectome.engine.litter import remove_litter
from connectome.engine.lock import output_lock
from connectome.engine.markers import DoneMarkers
from connectome.engine.registry import REGISTRY, register
from connectome.image.stages import NormalizeStage

import stages_for_tests  # noqa: F401  (registers block-sum)
from run_case import TESTS_DIR, last_json, write_config, write_raw
from stages_for_tests import FillTotalStage, TotalStep
from tmpfs_fixture import fill

pytestmark = pytest.mark.timeout(240)


class FailsOnCue(NormalizeStage):
    """normalize, except that block 3 fails while a file `fail` lies beside the output directory, and first fills
    the disk while a file `fill` lies there too."""

    name = "fails-on-cue"

    def process(self, block, volumes):
        here = Path(self.output_addresses["normalized"]).parent.parent
        if block.index == 3 and (here / "fail").exists():
            if (here / "fill").exists():  # with a traceback longer than the last log (20 kB): the space that
                fill(here / "filler")  # truncating that one frees cannot hold it
                try:
                    raise RuntimeError("the cause, at length: " + "x" * 20_000)
                except RuntimeError as e:
                    raise ValueError("synthetic failure in block 3") from e
            raise ValueError("synthetic failure in block 3")
        return super().process(block, volumes)


class MemoryHog(NormalizeStage):
    """normalize, after taking memory 32 MiB at a time up to 2 GiB, which it holds a while."""

    name = "memory-hog"

    def process(self, block, volumes):
        held = []
        for _ in range(64):
            held.append(np.ones(32 << 20, np.uint8))
            time.sleep(0.02)
        time.sleep(30)
        return super().process(block, volumes)


class HoggingTotal(TotalStep):
    """The test global step `total`, after taking memory as MemoryHog does."""

    def run(self) -> dict:
        held = [np.ones(32 << 20, np.uint8) for _ in range(64)]
        time.sleep(30)
        return {"held": len(held)}


class FillHoggingTotal(FillTotalStage):
    """fill-total, whose global step passes its worker's memory limit."""

    name = "fill-hogging-total"

    def global_step(self) -> HoggingTotal:
        return HoggingTotal(self.table_dirs["sums"], self.params.scale)


def _hog() -> int:
    """Take memory as MemoryHog does (on a worker)."""
    held = [np.ones(32 << 20, np.uint8) for _ in range(64)]
    time.sleep(30)
    return len(held)


class HoggingSetUp(NormalizeStage):
    """normalize, whose set-up on a worker (before_blocks, as `--precision auto`'s probe) passes its memory limit."""

    name = "hogging-set-up"

    def before_blocks(self, on_worker, finished) -> None:
        on_worker(_hog)


_KEPT: list = []  # what MemoryKeeper's worker holds


class MemoryKeeper(NormalizeStage):
    """normalize, after making its worker hold memory up to 87% of its memory limit (as a cache that stays would):
    past Dask's pause threshold (80%), short of its terminate threshold (95%)."""

    name = "memory-keeper"

    def process(self, block, volumes):
        import psutil
        from distributed import get_worker

        want = int(0.87 * get_worker().memory_manager.memory_limit) - psutil.Process().memory_info().rss
        if want > 0:
            _KEPT.append(np.ones(want, np.uint8))
        time.sleep(0.2)  # (Dask looks at a worker's memory every 100 ms)
        return super().process(block, volumes)


for _cls in (FailsOnCue, MemoryHog, MemoryKeeper, FillHoggingTotal, HoggingSetUp):
    if _cls.name not in REGISTRY:
        register(_cls)


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Worker processes unpickle the stages above by module name: let them import tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))


def _run(cfg: Path, capsys) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = main(["run", str(cfg), "--no-progress", "--json"])
    out = capsys.readouterr()
    return code, (last_json(out.out) if code == 0 else None), out.err


def test_a_full_disk_as_a_block_fails_says_one_line_and_keeps_the_last_log(tmp_path, tmpfs, capsys):
    """The failure log was opened with "w" on a full disk: the previous one truncated to nothing, and the traceback
    printed on the terminal instead (16-65 lines). Now the line says that it could not be saved, and why."""
    mount_point, remount = tmpfs
    remount("size=4m")
    raw = write_raw(tmp_path / "raw.npz", shape=(8, 128, 128))
    out = mount_point / "out"
    cfg = write_config(tmp_path / "run.yaml", raw, out, block=(2, 64, 64), retries=0,
                       stages=[{"stage": "fails-on-cue", "params": {"sigma": 4.0}}])
    (mount_point / "fail").touch()
    code, _, err = _run(cfg, capsys)
    assert code == 1, err
    log = out / ".connectome" / "logs" / "failure.log"
    first = log.read_bytes()
    assert b"synthetic failure in block 3" in first

    (mount_point / "fill").touch()  # the disk fills as block 3 fails again
    code, _, err = _run(cfg, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "'fails-on-cue'" in lines[0], err
    assert f"the traceback could not be saved in {log.parent}: No space left on device" in lines[0], err
    assert log.read_bytes() == first  # the last log is whole
    assert sorted(p.name for p in log.parent.iterdir() if p.name.startswith("failure")) == ["failure.log"]

    for name in ("fail", "fill", "filler"):  # room again, and no more failure: the re-run resumes and finishes
        (mount_point / name).unlink()
    done = len(DoneMarkers(str(out), "fails-on-cue").done())
    code, report, err = _run(cfg, capsys)
    assert code == 0, err
    assert report is not None and report["stages"][0]["skipped"] == done and report["stages"][0]["ran"] == 16 - done


def test_local_workers_neither_pause_nor_spill(tmp_path):
    """A worker over 80% of its memory limit paused, and a run whose workers all had paused waited forever."""
    with open_client(ClusterConfig(n_workers=1, memory_limit="1GiB", dashboard_address=":0"), quiet=True) as client:
        seen = client.run(lambda dask_worker: (
            dask_worker.memory_manager.memory_pause_fraction, dask_worker.memory_manager.memory_spill_fraction,
            dask.config.get("distributed.worker.memory.pause"), dask_worker.memory_manager.memory_limit))
        terminate = {nanny.memory_manager.memory_terminate_fraction for nanny in client.cluster.workers.values()}
    assert list(seen.values()) == [(False, False, False, 1 << 30)], seen
    assert terminate == {0.95}  # a worker over its limit is still restarted and its task retried


def test_a_worker_over_the_pause_threshold_still_runs_blocks(tmp_path):
    """The audit's hang, made certain: the one worker holds 87% of its memory limit after its first block. Dask
    paused it, and the run waited forever, without a word; now the run finishes."""
    raw = write_raw(tmp_path / "raw.npz", shape=(8, 128, 128))
    cfg = write_config(tmp_path / "run.yaml", raw, tmp_path / "out", block=(2, 64, 64),
                       cluster={"n_workers": 1, "memory_limit": "1GiB"},
                       stages=[{"stage": "memory-keeper", "params": {"sigma": 4.0}}])
    run = (f"import sys; sys.path[:0] = [{TESTS_DIR!r}, {str(Path(__file__).parent)!r}]; import test_resource_faults; "
           f"from connectome.cli.main import main; sys.exit(main(['run', {str(cfg)!r}, '--no-progress', '--json']))")
    # its own session: a run that hangs is ended with its workers
    proc = subprocess.Popen([sys.executable, "-c", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        done = len(DoneMarkers(str(tmp_path / "out"), "memory-keeper").done())
        pytest.fail(f"the run waited 90 s with {done} of 16 blocks done: its worker paused")
    assert proc.returncode == 0, err
    assert last_json(out)["stages"][0]["ran"] == 16


def test_job_workers_neither_pause_nor_spill(tmp_path):
    """The SLURM/PBS job script's lines give a worker's Dask the same settings, unless the job's environment says
    otherwise."""
    lines = job_options(ClusterConfig(kind="slurm"))["job_script_prologue"]
    probe = ("import dask, distributed; print(dask.config.get('distributed.worker.memory.pause'), "
             "dask.config.get('distributed.worker.memory.spill'), dask.config.get('distributed.worker.memory.terminate'))")
    script = "\n".join([*lines, f'exec "{sys.executable}" -c "{probe}"'])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    assert subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False", "0.95"]
    env["DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE"] = "0.9"  # a lab's own choice stays
    assert subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          check=True).stdout.split()[0] == "0.9"


@pytest.mark.slurm
def test_slurm_job_workers_neither_pause_nor_spill(local_slurm, tmp_path, monkeypatch):
    """The same, seen from a worker of a real SLURM job."""
    monkeypatch.chdir(tmp_path)
    config = ClusterConfig(kind="slurm", interface="lo", minimum_jobs=1, maximum_jobs=1, dashboard_address=":0",
                           memory="1GiB", log_directory=str(tmp_path / "job-logs"))
    with open_client(config, quiet=True) as client:
        client.wait_for_workers(1, timeout=120)
        seen = client.run(lambda dask_worker: (
            dask_worker.memory_manager.memory_pause_fraction, dask_worker.memory_manager.memory_spill_fraction,
            dask.config.get("distributed.worker.memory.terminate")))
    assert list(seen.values()) == [(False, False, 0.95)], seen


def test_a_block_past_the_memory_limit_says_why_its_workers_died(tmp_path, capsys):
    """Workers killed for memory were reported as "workers died repeatedly ... Attempted to run task ... on 4
    different workers", without the cause; the line names the memory limit and what to change now."""
    raw = write_raw(tmp_path / "raw.npz", shape=(4, 64, 64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", raw, out, block=(2, 64, 64), retries=0,
                       cluster={"n_workers": 1, "memory_limit": "1GiB"},
                       stages=[{"stage": "memory-hog", "params": {"sigma": 4.0}}])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first worker killed fails the task
        code, _, err = _run(cfg, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "'memory-hog'" in lines[0] and "workers died repeatedly while running blocks [" in lines[0], err
    assert ("a worker is killed when it passes 95% of its memory limit (1 GiB per worker): raise the cluster's "
            "memory_limit or use a smaller block shape") in lines[0], err
    assert "Attempted to run task" not in lines[0]  # Dask's own message is in the log
    assert "Attempted to run task" in (out / ".connectome" / "logs" / "failure.log").read_text()


def test_a_global_step_past_the_memory_limit_says_why_its_workers_died(tmp_path, capsys):
    """As for a block: a global step's workers killed for memory named no cause (Dask's message only)."""
    raw = write_raw(tmp_path / "raw.npz", shape=(4, 64, 64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", raw, out, block=(2, 64, 64), retries=0,
                       cluster={"n_workers": 1, "memory_limit": "1GiB"},
                       stages=[{"stage": "block-sum"}, {"stage": "fill-hogging-total"}])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        code, _, err = _run(cfg, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "workers died repeatedly while running the global step 'total'" in lines[0], err
    assert "memory limit (1 GiB per worker)" in lines[0], err


def test_a_stage_set_up_past_the_memory_limit_says_why_its_workers_died(tmp_path, capsys):
    """(audit45) The set-up task a stage runs on a worker before its blocks (`--precision auto`'s probe) gave Dask's
    KilledWorker traceback, exit 1, where a block gives one line with the cause."""
    raw = write_raw(tmp_path / "raw.npz", shape=(4, 64, 64))
    cfg = write_config(tmp_path / "run.yaml", raw, tmp_path / "out", block=(2, 64, 64), retries=0,
                       cluster={"n_workers": 1, "memory_limit": "1GiB"},
                       stages=[{"stage": "hogging-set-up", "params": {"sigma": 4.0}}])
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        code, _, err = _run(cfg, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "stage 'hogging-set-up' failed" in lines[0] and "workers died repeatedly while running its set-up" in err
    assert "memory limit (1 GiB per worker)" in lines[0], err


def test_a_lock_not_written_for_a_full_disk_leaves_nothing(tmpfs):
    """The lock written aside (`lock.HOST.PID`) stayed behind, empty, when the disk was full."""
    mount_point, _ = tmpfs
    work = mount_point / "out"
    (work / ".connectome").mkdir(parents=True)
    fill(mount_point / "filler")
    with pytest.raises(OSError, match="No space left"), output_lock(str(work)):
        pass
    assert list((work / ".connectome").iterdir()) == []


def test_litter_of_killed_lock_and_log_writes_goes(tmp_path):
    """A run removes the lock copies and failure logs that writers now gone left half written, and only those."""
    out = tmp_path / "out"
    meta = out / ".connectome"
    (meta / "done").mkdir(parents=True)
    (meta / "logs").mkdir()
    dead, alive, host = _dead_pid(), os.getppid(), socket.gethostname()
    gone = [meta / f"lock.{host}.{dead}", meta / "logs" / f"failure.log.{dead}.tmp"]
    stay = [meta / f"lock.{host}.{alive}",  # a run taking the lock now
            meta / f"lock.elsewhere.example.{dead}",  # another host's: cannot be checked from here
            meta / "logs" / f"failure.log.{alive}.tmp", meta / "logs" / "failure.log", meta / "lock"]
    for path in gone + stay:
        path.write_text("")
    assert sorted(remove_litter(str(out))) == sorted(map(str, gone))
    assert all(p.exists() for p in stay) and not any(p.exists() for p in gone)

"""Faults found by injecting them on a real run (issue 15): a double submit, a lost output chunk, a
missing input chunk, a refused run, a changed chunk shape, table litter, a failing and an
interrupted run, and bad configs; each is refused or repaired with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from connectome.cli.main import main
from connectome.engine.lock import lock_path
from connectome.engine.registry import discover
from connectome.io import create_volume, open_volume
from connectome.io.tables import remove_litter, save_table

from run_case import last_json

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 128, 128)
CHUNK = (8, 64, 64)


def _raw(tmp_path: Path, shape=SHAPE) -> str:
    vol = create_volume(str(tmp_path / "in" / "raw"), shape, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    rng = np.random.default_rng(0)
    vol.write(vol.box, rng.integers(0, 255, shape, dtype=np.uint8))
    return vol.address


def _config(tmp_path: Path, name="run.yaml", out="out", sigma=4.0, chunk=CHUNK, **extra) -> str:
    cfg = {"input": str(tmp_path / "in" / "raw"), "output": str(tmp_path / out),
           "blocks": {"shape": list(CHUNK), "chunk_shape": list(chunk)},
           "cluster": {"n_workers": 1, "dashboard_address": ":0"},
           "stages": [{"stage": "normalize", "params": {"sigma": sigma}}], **extra}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _run(capsys, *argv) -> tuple[int, dict | None, list[str]]:
    capsys.readouterr()
    code = main(["run", *argv, "--no-progress", "--json"])
    out = capsys.readouterr()
    return code, (last_json(out.out) if code == 0 else None), out.err.strip().splitlines()


def _cli(*argv, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "connectome.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _chunks(path: str) -> dict[str, bytes]:
    root = Path(path) / "0"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("c/**/*")) if p.is_file()}


def test_second_run_on_one_output_is_refused_while_the_first_runs(tmp_path, capsys):
    _raw(tmp_path, (32, 256, 256))
    first = _config(tmp_path, "first.yaml", sigma=4.0)
    second = _config(tmp_path, "second.yaml", sigma=9.0)
    discover()  # this process imports every stage now, so the second run reaches the lock at once
    proc = subprocess.Popen([sys.executable, "-m", "connectome.cli", "run", first, "--no-progress", "--json",
                             "--overwrite"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = Path(lock_path(str(tmp_path / "out")))
        deadline = time.monotonic() + 60
        while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        code, _, err = _run(capsys, second, "--overwrite")
        assert code == 2 and len(err) == 1, err
        assert "another run (pid" in err[0] and str(tmp_path / "out") in err[0], err[0]
        out, errors = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errors
    assert not lock.exists()  # released on exit
    assert json.loads((tmp_path / "out" / "run.json").read_text())["stages"][0]["params"]["sigma"] == 4.0
    code, report, err = _run(capsys, second, "--overwrite")  # now it may run, and runs every block
    assert code == 0, err
    assert report["stages"][0]["ran"] == report["stages"][0]["blocks"]


def test_stale_lock_is_taken_over_and_a_foreign_one_refused(tmp_path, capsys):
    _raw(tmp_path)
    cfg = _config(tmp_path)
    lock = Path(lock_path(str(tmp_path / "out")))
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 1.0, "since": "then"}))
    code, report, err = _run(capsys, cfg)
    assert code == 0, err
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "elsewhere-node-7", "pid": 4242, "started": 1.0, "since": "today"}))
    code, _, err = _run(capsys, cfg)
    assert code == 2 and len(err) == 1 and "on host elsewhere-node-7" in err[0] and str(lock) in err[0], err


def _normalized(tmp_path: Path, capsys) -> tuple[str, str, dict[str, bytes]]:
    """(config, the normalized volume, its chunks) of a finished run of the normalize stage."""
    _raw(tmp_path)
    cfg = _config(tmp_path)
    code, _, err = _run(capsys, cfg)
    assert code == 0, err
    out = str(tmp_path / "out" / "normalized")
    return cfg, out, _chunks(out)


def test_lost_output_chunk_is_reported_and_recomputed(tmp_path, capsys):
    cfg, out, reference = _normalized(tmp_path, capsys)
    os.remove(Path(out) / "0" / "c" / "1" / "0" / "1")  # block 5's only chunk
    garbage = Path(out) / "0" / "c" / "0" / "1" / "1"  # block 3's: same size, other bytes
    garbage.write_bytes(os.urandom(garbage.stat().st_size))
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    row = last_json(capsys.readouterr().out)["stages"][0]
    assert (row["done"], row["lost"]) == (8, 2) and row["first_lost"]["block"] == 3, row
    code, report, err = _run(capsys, cfg)
    assert code == 0, err
    assert (report["stages"][0]["ran"], report["stages"][0]["skipped"]) == (2, 6)
    assert any("2 finished block(s) lost their output" in line for line in err), err
    assert _chunks(out) == reference


def test_damaged_output_metadata_is_said_and_rewritten_with_overwrite(tmp_path, capsys):
    """A stage's output whose zarr.json is damaged: `status` called the stage complete, and even `--overwrite`
    was refused (the volume could not be opened to compare its layout). Now status says so, a re-run refuses it
    in one line naming it, and `--overwrite` writes it again."""
    cfg, out, reference = _normalized(tmp_path, capsys)
    (Path(out) / "0" / "zarr.json").write_text("{")
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    row = last_json(capsys.readouterr().out)["stages"][0]
    assert row["unreadable"]["output"] == "normalized" and "not a readable zarr array" in row["unreadable"]["error"]
    code, _, err = _run(capsys, cfg)
    assert code == 2 and len(err) == 1 and "exists with metadata that cannot be read" in err[0], err
    code, report, err = _run(capsys, cfg, "--overwrite")
    assert code == 0, err
    assert report["stages"][0]["ran"] == 8 and _chunks(out) == reference


def test_a_run_removes_what_killed_writes_left_beside_its_outputs(tmp_path, capsys):
    """A kill between writing a file aside and renaming it into place left `segments.csv.tmp14047` or
    `alignment/transforms.npz.18976.tmp.npz` for good (audit43b); the next run removes such files (names with a
    process id, outside volumes and tables), and nothing else."""
    _raw(tmp_path)
    cfg = _config(tmp_path)
    code, _, err = _run(capsys, cfg)
    assert code == 0, err
    out = tmp_path / "out"
    gone = 2**22 + 12345  # above Linux's default pid_max: no such process
    litter = [out / f"segments.csv.tmp{gone}", out / "alignment" / f"transforms.npz.{gone}.tmp.npz",
              out / f".run.json.{gone}.tmp", out / f"graph.graphml.tmp{gone}", out / "meshes" / f"0.shard.{gone}.tmp",
              out / f"graph_degrees.png.tmp{gone}.png", out / "tables" / f"lut-0123abcd.npz.tmp{gone}.npz"]
    # a user's own files with such names, files inside volumes, and a live process's write stay (review43: a
    # `backup.old1/` folder beside an ingested volume was removed)
    kept = [out / "notes.tmp", out / "alignment" / "my.tmp.txt", out / "normalized" / "0" / "c" / "x.tmp5",
            out / "meshes" / "0.shard", out / "backup.old1" / "notes.txt", out / "draft.old2",
            out / "scans" / "slice.tmp2.tif", out / f"synapses.csv.tmp{os.getpid()}"]
    for path in litter + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (out / f"synapse_annotations.tmp{gone}" / "by_id").mkdir(parents=True)  # a layer being written, whole
    (out / f"synapse_annotations.tmp{gone}" / "info").write_text("{}")
    code, report, err = _run(capsys, cfg)
    assert code == 0 and report["stages"][0]["ran"] == 0, err
    assert not any(p.exists() for p in litter) and not (out / f"synapse_annotations.tmp{gone}").exists()
    assert all(p.read_text() == "x" for p in kept)


def test_missing_input_chunk_is_reported_and_refused_when_strict(tmp_path, capsys):
    raw = _raw(tmp_path)
    os.remove(Path(raw) / "0" / "c" / "1" / "1" / "0")
    cfg = _config(tmp_path)
    code, _, err = _run(capsys, cfg, "--strict-input")
    assert code == 2 and len(err) == 1, err
    assert "1 of 8 input chunk files are missing" in err[0] and "c/1/1/0" in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written
    code, _, err = _run(capsys, cfg)
    assert code == 0 and any("warning" in line and "c/1/1/0" in line for line in err), err


def test_refused_run_keeps_run_json_and_overwrite_changes_chunk_shape(tmp_path, capsys):
    _raw(tmp_path)
    cfg = _config(tmp_path)
    assert _run(capsys, cfg)[0] == 0
    recorded = (tmp_path / "out" / "run.json").read_bytes()
    smaller = _config(tmp_path, "smaller.yaml", chunk=(8, 32, 32))
    code, _, err = _run(capsys, smaller)
    assert code == 2 and len(err) == 1 and "chunk shape [8, 64, 64] (now [8, 32, 32])" in err[0], err
    assert (tmp_path / "out" / "run.json").read_bytes() == recorded
    code, report, err = _run(capsys, smaller, "--overwrite")
    assert code == 0, err
    assert report["stages"][0]["ran"] == 8
    assert open_volume(str(tmp_path / "out" / "normalized")).meta.chunk_shape == (8, 32, 32)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["blocks"]["chunk_shape"] == [8, 32, 32]


def test_table_litter_is_removed(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    save_table(str(tables), 3, x=np.arange(4))
    (tables / ".7.1234.tmp.npz").write_bytes(b"half a file")
    assert remove_litter(str(tables)) == 1
    assert sorted(p.name for p in tables.iterdir()) == ["3.npz"]


def test_stage_run_removes_litter_of_its_tables(tmp_path, client):
    from connectome.core.geometry import BlockGrid, Box
    from connectome.engine.runner import run_stage

    from stages_for_tests import BlockSumStage

    raw = _raw(tmp_path)
    tables = tmp_path / "tables" / "sums"
    tables.mkdir(parents=True)
    (tables / ".3.999.tmp.npz").write_bytes(b"left by a write that filled the disk")
    stage = BlockSumStage(BlockSumStage.Params(), {"raw": raw}, {}, {"sums": str(tables)})
    grid = BlockGrid.for_chunks(Box.from_shape(SHAPE), CHUNK, CHUNK)
    report = run_stage(stage, grid, client, str(tmp_path / "work"), progress=False)
    assert report.ran == 8
    assert {p.name for p in tables.iterdir()} == {"format.json", *(f"{i}.npz" for i in range(8))}


def test_full_disk_leaves_no_table_litter(tmpfs):
    full, remount = tmpfs
    remount("size=256k")
    save_table(str(full), 1, x=np.zeros(4))
    with pytest.raises(OSError, match="No space left"):
        save_table(str(full), 2, x=np.random.default_rng(0).random(100_000))  # 800 kB
    assert sorted(p.name for p in full.iterdir()) == ["1.npz"]  # no temporary file left


def test_failing_block_summary_is_last_alone_and_names_the_file(tmp_path):
    raw = _raw(tmp_path)
    bad = Path(raw) / "0" / "c" / "1" / "0" / "1"
    bad.write_bytes(b"this is not zstd")
    result = _cli("run", _config(tmp_path, retries=0), "--no-progress", "--workers", "1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(lines) <= 2, result.stderr
    last = lines[-1]
    assert "'normalize' failed in block" in last and str(bad) in last and "cannot decode" in last, last
    logs = tmp_path / "out" / ".connectome" / "logs"
    assert "Traceback" in (logs / "failure.log").read_text()
    assert str(logs) in last


@pytest.mark.parametrize("sig, code, said, background", [
    (signal.SIGINT, 130, "interrupted", False),  # Ctrl-C in a terminal
    (signal.SIGTERM, 143, "stopped by SIGTERM", False),  # a batch time limit
    (signal.SIGTERM, 143, "stopped by SIGTERM", True),  # `connectome ... &` in a script: SIGINT ignored
])
def test_ctrl_c_prints_one_line(tmp_path, sig, code, said, background):
    _raw(tmp_path, (64, 256, 256))
    cfg = _config(tmp_path, sigma=12.0)

    def as_background_job():  # what a non-interactive shell does to `command &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "connectome.cli", "run", cfg, "--no-progress", "--workers", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_background_job if background else None)
    markers = tmp_path / "out" / ".connectome" / "done" / "normalize"
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and not any(markers.glob("p-*")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, sig)  # what a terminal (or SLURM) sends to the whole group
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == code, err
    assert "Traceback" not in err and lines[-1].endswith(f"{said}; re-run the same command to resume"), err
    assert len([line for line in lines if not line.startswith("dask dashboard")]) == 1, err
    assert not Path(lock_path(str(tmp_path / "out"))).exists()


def test_ctrl_c_silences_the_cluster_logs_before_it_unwinds():
    """The event-loop thread logs cancelled calls while the main thread unwinds (a tornado
    traceback seen on CI); the logs must already be quiet when the interrupt is raised."""
    code = ("import logging, os, signal\n"
            "import distributed  # its logging config sets levels of its own (tornado.application: error)\n"
            "from connectome.cli.main import _quiet_on_interrupt\n"
            "names = ('tornado.application', 'distributed.utils', 'distributed.client')\n"
            "before = [logging.getLogger(n).isEnabledFor(logging.ERROR) for n in names]\n"
            "_quiet_on_interrupt()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    while True: pass\n"
            "except KeyboardInterrupt:\n"
            "    print(before, [logging.getLogger(n).isEnabledFor(logging.ERROR) for n in names])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[True, True, True] [False, False, False]", result.stdout


def test_rerun_with_nothing_to_do_starts_no_cluster(tmp_path):
    _raw(tmp_path)
    cfg = _config(tmp_path)
    first = _cli("run", cfg, "--no-progress")
    assert first.returncode == 0 and "dask dashboard" in first.stderr, first.stderr
    again = _cli("run", cfg, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "dask dashboard" not in again.stderr  # no cluster was started
    assert "normalize: 0 blocks run, 8 already done" in again.stdout


def test_help_imports_no_heavy_module():
    code = ("import sys; from connectome.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'dask', 'distributed', 'zarr', 'scipy', 'numpy', 'pydantic', "
            "'cloudvolume', 'skimage') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def _bad(tmp_path: Path, case: str) -> str:
    """A config (path) that is bad in the way `case` names."""
    _raw(tmp_path)
    if case == "output is a file":
        (tmp_path / "out").write_text("x")
        return _config(tmp_path)
    if case == "output under a file":
        (tmp_path / "file").write_text("x")
        return _config(tmp_path, out="file/out")
    if case == "binary config":
        path = tmp_path / "bin.yaml"
        path.write_bytes(bytes(range(256)) * 4)
        return str(path)
    if case == "uint7 input":
        meta = Path(tmp_path / "in" / "raw" / "0" / "zarr.json")
        j = json.loads(meta.read_text())
        j["data_type"] = "uint7"
        meta.write_text(json.dumps(j))
        return _config(tmp_path)
    if case == "empty fingerprint":
        fp = tmp_path / "out" / ".connectome" / "done" / "normalize" / "fingerprint.json"
        fp.parent.mkdir(parents=True)
        fp.write_text("")
        return _config(tmp_path)
    if case == "negative voxel size":
        return _config(tmp_path, voxel_size=[-10, 10, 10])
    if case == "zero voxel size":
        return _config(tmp_path, voxel_size=[0, 10, 10])
    if case == "boolean in block shape":
        path = Path(_config(tmp_path))
        path.write_text(path.read_text().replace("- 8\n", "- true\n", 1))
        return str(path)
    if case == "duplicated key":
        path = Path(_config(tmp_path))
        path.write_text(path.read_text() + f"output: {tmp_path / 'other'}\n")
        return str(path)
    if case == "misspelt dataset":  # a later stage reads a name no earlier stage writes
        return _config(tmp_path, stages=[{"stage": "normalize", "params": {"sigma": 4.0}},
                                         {"stage": "normalize", "inputs": {"raw": "normalised"},
                                          "outputs": {"normalized": "twice"}}])
    if case == "unknown device":  # refused with the parameters (it was resolved on a worker, after writing)
        return _config(tmp_path, stages=[{"stage": "ffn", "params": {"model": "ffn-synthetic", "device": "gpu"}}])
    raise AssertionError(case)


@pytest.mark.parametrize("case,expected", [
    ("output is a file", "is a file; expected a folder"),
    ("output under a file", "which is a file"),
    ("binary config", "not a text file"),
    ("uint7 input", "No Zarr data type found that matches 'uint7'"),
    ("empty fingerprint", "fingerprint.json: empty"),
    ("negative voxel size", "voxel_size: Value error, expected positive sizes in nm, found [-10.0, 10.0, 10.0]"),
    ("zero voxel size", "expected positive sizes in nm, found [0.0, 10.0, 10.0]"),
    ("boolean in block shape", "blocks.chunk_shape.0: Input should be a valid integer"),
    ("duplicated key", "duplicate key 'output'"),
    ("misspelt dataset", "stages.1 (normalize): input raw: 'normalised' is neither a volume on disk"),
    ("unknown device", "stages.0.params (ffn): device"),
])
def test_bad_config_is_one_line(tmp_path, capsys, case, expected):
    cfg = _bad(tmp_path, case)
    code, _, err = _run(capsys, cfg)
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]
    if case == "misspelt dataset":
        assert "earlier stages write ['normalized']" in err[0]
    if case in ("misspelt dataset", "unknown device"):
        assert not (tmp_path / "out").exists()


def test_a_stage_that_would_write_over_another_stages_finished_output_is_refused(tmp_path, capsys):
    """Another stage (here `section_normalize`) writing the dataset `normalize` finished in this output directory
    (as `segment --method affinities` after `--method ffn` writes `segmentation`): one line, nothing changed,
    unless --overwrite."""
    _raw(tmp_path)
    first = _config(tmp_path)
    code, _, err = _run(capsys, first)
    assert code == 0, err
    before = _chunks(str(tmp_path / "out" / "normalized"))
    other = _config(tmp_path, name="other.yaml", stages=[
        {"stage": "section_normalize", "params": {"tile": 8}, "outputs": {"normalized_sections": "normalized"}}])
    code, _, err = _run(capsys, other)
    assert code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'out' / 'normalized'}: written by stage 'normalize' of an earlier run" in err[0]
    assert "'section_normalize' would write over it" in err[0] and "--overwrite" in err[0]
    assert _chunks(str(tmp_path / "out" / "normalized")) == before
    code, _, err = _run(capsys, other, "--overwrite")
    assert code == 0, err
    assert _chunks(str(tmp_path / "out" / "normalized")) != before
    # the replaced stage's finished blocks are forgotten: the run resumes plainly, and `normalize` would start afresh
    code, summary, err = _run(capsys, other)
    assert code == 0 and summary["stages"][0]["ran"] == 0, err
    assert not (tmp_path / "out" / ".connectome" / "done" / "normalize").exists()

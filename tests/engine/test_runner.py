import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from connectome.core.errors import StageFailed, UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.markers import DoneMarkers
from connectome.engine.runner import run_stage
from connectome.io import create_volume

from stages_for_tests import MarkParams, MarkStage, NoopStage

SHAPE = (16, 64, 64)
BLOCK = (8, 16, 16)  # 32 blocks


def _setup(tmp_path: Path, name: str, **params):
    raw_address = str(tmp_path / "raw")
    if not os.path.exists(raw_address):
        raw = create_volume(raw_address, SHAPE, np.uint8, (8, 16, 16), (1, 1, 1))
        raw.write(raw.box, np.random.default_rng(1).integers(0, 255, SHAPE, dtype=np.uint8))
    work = tmp_path / name
    out = create_volume(str(work / "marked"), SHAPE, np.uint16, (8, 16, 16), (1, 1, 1))
    stage = MarkStage(MarkParams(**params), {"raw": raw_address}, {"marked": out.address})
    grid = BlockGrid.for_chunks(Box.from_shape(SHAPE), BLOCK, (8, 16, 16))
    return stage, grid, str(work), out


def _chunk_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c/**/*")) if p.is_file()}


def test_clean_run_covers_every_block_and_keeps_summaries(tmp_path, client):
    stage, grid, work, out = _setup(tmp_path, "clean")
    report = run_stage(stage, grid, client, work, progress=False, collect_summaries=True)
    assert (report.blocks, report.ran, report.skipped) == (32, 32, 0)
    raw = np.random.default_rng(1).integers(0, 255, SHAPE, dtype=np.uint8)
    marked = out.read(out.box)
    for b in grid:
        assert (marked[b.write_box.to_slices()] == raw[b.write_box.to_slices()].astype(np.uint16) + b.index + 1).all()
        assert report.summaries[b.index]["sum"] == int(raw[b.write_box.to_slices()].astype(np.int64).sum())
    again = run_stage(stage, grid, client, work, progress=False)
    assert (again.ran, again.skipped, again.tasks) == (0, 32, 0)


def test_failure_names_block_then_resume_runs_only_missing_blocks(tmp_path, client):
    flag = tmp_path / "fail-now"
    flag.touch()
    stage, grid, work, out = _setup(tmp_path, "resumed", fail_block=13, fail_flag=str(flag))
    with pytest.raises(StageFailed) as err:
        run_stage(stage, grid, client, work, progress=False, retries=1)
    assert err.value.block_index == 13 and err.value.stage == "mark"
    assert "injected failure in block 13" in err.value.traceback_text
    assert "block 13" in str(err.value)
    _wait_idle(client)  # tasks already running when the stage stopped finish (and keep their markers)
    done = DoneMarkers(work, "mark").done()
    assert 13 not in done and len(done) < 32
    flag.unlink()
    report = run_stage(stage, grid, client, work, progress=False)
    assert report.ran == 32 - len(done) and report.skipped == len(done)
    clean_stage, _, clean_work, _ = _setup(tmp_path, "clean2", fail_block=13, fail_flag=str(flag))
    run_stage(clean_stage, grid, client, clean_work, progress=False)
    assert _chunk_bytes(Path(work) / "marked") == _chunk_bytes(Path(clean_work) / "marked")
    assert len(_chunk_bytes(Path(work) / "marked")) == 32


def _wait_idle(client, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while any(client.processing().values()) and time.time() < deadline:
        time.sleep(0.05)


def test_changed_parameters_are_refused_unless_overwrite(tmp_path, client):
    stage, grid, work, out = _setup(tmp_path, "fp")
    run_stage(stage, grid, client, work, progress=False)
    changed = MarkStage(MarkParams(sleep=0.001), stage.input_addresses, stage.output_addresses)
    with pytest.raises(UserError, match="other settings: params"):
        run_stage(changed, grid, client, work, progress=False)
    other_layout = BlockGrid.for_chunks(Box.from_shape(SHAPE), (16, 16, 16), (8, 16, 16))
    with pytest.raises(UserError, match="other settings: blocks, layout"):
        run_stage(stage, other_layout, client, work, progress=False)
    report = run_stage(changed, grid, client, work, progress=False, overwrite=True)
    assert report.ran == 32


def test_worker_killed_mid_stage_is_survived(tmp_path, client):
    stage, grid, work, out = _setup(tmp_path, "killed", sleep=0.15)
    clean_stage, _, clean_work, clean_out = _setup(tmp_path, "killed-clean")
    run_stage(clean_stage, grid, client, clean_work, progress=False)
    result = {}

    def go():
        try:
            result["report"] = run_stage(stage, grid, client, work, progress=False, retries=0)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    markers = DoneMarkers(work, "mark")
    deadline = time.time() + 60
    while len(markers.done()) < 4 and time.time() < deadline:
        time.sleep(0.05)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    assert "error" not in result, result.get("error")
    assert result["report"].ran + result["report"].skipped == 32
    assert len(markers.done()) == 32
    np.testing.assert_array_equal(out.read(out.box) - 0, clean_out.read(clean_out.box))
    client.wait_for_workers(2, timeout=60)


def test_many_empty_blocks_are_batched(tmp_path, client):
    grid = BlockGrid(Box.from_shape((100, 100, 100)), (10, 10, 10))  # 1000 blocks
    report = run_stage(NoopStage(NoopStage.Params(), {}, {}), grid, client, str(tmp_path), progress=False)
    assert report.ran == 1000
    assert report.tasks < 100  # one task per batch of blocks, not per block
    assert len(DoneMarkers(str(tmp_path), "noop").done()) == 1000

"""The alignment chain blockwise equals one block; a killed `connectome align` resumes; bad input is
refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from stacks import align, clean_stack, write_stack

from connectome.alignment.synthetic import Distortion, distort
from connectome.io import open_volume

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack():
    return distort(clean_stack(6, 256), 48, Distortion(max_shift=20, max_rotation=1.5), seed=5).raw  # 6 x 160 x 160


def test_blockwise_equals_one_block(stack, tmp_path, client):
    raw = write_stack(str(tmp_path / "raw"), stack, chunks=(2, 32, 32))
    results = {}
    for label, block in (("blocks", (2, 64, 64)), ("one", (6, 160, 160))):
        plan, _, t = align(raw, str(tmp_path / label), client, block=block, chunks=(2, 32, 32))
        assert len(plan.stages[0].grid) == (27 if label == "blocks" else 1)
        vol = open_volume(str(tmp_path / label / "aligned"))
        results[label] = (vol.read(vol.box), t)
    (a, ta), (b, tb) = results["blocks"], results["one"]
    np.testing.assert_array_equal(a, b)
    for key in ("fields", "transforms", "section_flags", "regions"):
        np.testing.assert_array_equal(ta[key], tb[key])
    assert np.abs(ta["fields"]).max() > 5  # a real alignment, not an identity


def _connectome(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "connectome.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def test_resume_after_killed_run(tmp_path):
    small = distort(clean_stack(4, 224), 48, Distortion(max_shift=15, max_rotation=1), seed=6).raw  # 4 x 128 x 128
    raw = write_stack(str(tmp_path / "raw"), small, chunks=(1, 32, 32))
    args = [raw, "", "--block-shape", "1", "64", "64", "--chunk-shape", "1", "32", "32", "--stride", "32",
            "--search", "40", "--workers", "1", "--json", "--no-progress"]
    out = str(tmp_path / "killed")
    args[1] = out
    proc = _connectome("align", *args)
    tables = os.path.join(out, "tables", "matches")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(tables) and len([f for f in os.listdir(tables) if f.endswith(".npz")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len([f for f in os.listdir(tables) if f.endswith(".npz")])
    rerun = _connectome("align", *args)
    stdout, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    match = next(s for s in summary["stages"] if s["stage"] == "align_match")
    assert match["skipped"] >= done_before - 1 > 0  # finished blocks were kept (one may have been mid-write)
    assert summary["aligned"] == os.path.join(out, "aligned")
    args[1] = str(tmp_path / "fresh")
    fresh = _connectome("align", *args)
    fresh.communicate(timeout=240)
    assert fresh.returncode == 0
    a, b = open_volume(os.path.join(out, "aligned")), open_volume(str(tmp_path / "fresh" / "aligned"))
    np.testing.assert_array_equal(a.read(a.box), b.read(b.box))


@pytest.mark.parametrize("case", ["one_section", "tiny_sections", "bad_param", "missing"])
def test_bad_input_refused_with_one_line(case, tmp_path):
    from connectome.cli.main import main

    data = {"one_section": np.zeros((1, 128, 128), np.uint8), "tiny_sections": np.zeros((4, 40, 40), np.uint8)}
    path = str(tmp_path / "in.npz")
    if case in data:
        np.savez(path, raw=data[case])
    else:
        np.savez(path, raw=np.zeros((4, 128, 128), np.uint8))
    address = f"{path}#raw" if case != "missing" else str(tmp_path / "nothing.npz#raw")
    extra = ["--stride", "0"] if case == "bad_param" else []
    proc = subprocess.run([sys.executable, "-m", "connectome.cli.main", "align", address, str(tmp_path / "out"),
                           "--voxel-size", "40", "4", "4", *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = {"one_section": "at least 2", "tiny_sections": "smaller than params.patch",
                "bad_param": "stride", "missing": "nothing.npz"}[case]
    assert expected in lines[0]
    del main

"""A reader that leaves early (`connectome ... | head`) ends the command quietly: no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_output_to_a_closed_pipe_is_no_traceback(tmp_path):
    labels = np.arange(64, dtype=np.uint32).reshape(4, 4, 4) // 8 + 1
    np.savez(tmp_path / "v.npz", seg=labels, gt=labels)
    command = [sys.executable, "-m", "connectome.cli", "evaluate", "--seg", f"{tmp_path}/v.npz#seg",
               "--gt", f"{tmp_path}/v.npz#gt", "--voxel-size", "8", "8", "8", "--json"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the command writes its one line
    _, err = child.communicate(timeout=300)
    assert child.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    # with a reader, the same command prints its result
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == 0 and b'"voi"' in done.stdout

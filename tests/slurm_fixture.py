"""A session-scoped real single-node SLURM (deploy/local-slurm), started once and stopped at the end.

Missing SLURM skips the tests locally but fails them when the CI variable is set, so CI cannot
pass by skipping. Import the fixture into a test module: `from slurm_fixture import local_slurm`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "local-slurm"
NEEDED = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "qsub")


def _controller_listening() -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", 6817)) == 0


def require_slurm() -> None:
    missing = [exe for exe in NEEDED if shutil.which(exe) is None]
    if missing:
        message = f"SLURM not installed ({', '.join(missing)} missing); run: bash deploy/local-slurm/install.sh"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: SLURM tests must not be skipped)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def local_slurm():
    """Yields the node name; cancels leftover jobs and stops the daemons it started at the end."""
    require_slurm()
    was_running = _controller_listening()
    started = subprocess.run(["bash", str(DEPLOY / "start.sh")], capture_output=True, text=True, timeout=90)
    if started.returncode != 0:
        pytest.fail(f"local SLURM did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield socket.gethostname().split(".")[0]
    finally:
        if was_running:
            subprocess.run(["scancel", "-u", "root"], capture_output=True, timeout=30)
        else:
            subprocess.run(["bash", str(DEPLOY / "stop.sh")], capture_output=True, timeout=60)

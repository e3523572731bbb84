"""Shared fixtures: paths to the real data and one LocalCluster with worker processes per session."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# Worker processes import test-only stages from this directory by module name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))

from export_runs import segmented_output  # noqa: E402, F401  (session fixture for tests/export)
from slurm_fixture import local_slurm  # noqa: E402, F401  (session fixture for the SLURM tests)
from tmpfs_fixture import tmpfs  # noqa: E402, F401  (a tmpfs to fill or remount read-only)

_missing_data: list[str] = []


def data_file(relative: str) -> Path:
    """A file of the real EM data in ../shared/data; its absence fails under CI and is reported at the end."""
    path = DATA / relative
    if not path.exists():
        message = f"real EM data not found at {path} (expected ../shared/data beside the repository)"
        if os.environ.get("CI"):
            pytest.fail(message)
        _missing_data.append(relative)
        pytest.skip(message)
    return path


def pytest_terminal_summary(terminalreporter):
    """Say loudly, at the end of the run, which real-data tests did not run."""
    if _missing_data:
        terminalreporter.write_sep("!", f"REAL EM DATA MISSING: {len(_missing_data)} real-data tests skipped", red=True)
        terminalreporter.write_line(f"expected {DATA}; missing: {', '.join(sorted(set(_missing_data)))}", red=True)


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()

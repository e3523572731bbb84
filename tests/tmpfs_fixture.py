"""A small tmpfs that a test can fill or remount read-only (root only; the fixture is registered in
tests/conftest.py): root ignores permission bits, a read-only or full file system stops root too. Where the
mount is refused the test is skipped, or failed under CI (`cannot_mount`)."""

from __future__ import annotations

import os
import subprocess

import pytest


def cannot_mount(message: str) -> None:
    """Skip a test that needs a mount this machine refuses (not root, no CAP_SYS_ADMIN), but fail it under CI:
    there the tests of full and read-only file systems must run, as `slurm_fixture.require_slurm` does."""
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the mount tests must not be skipped; run them as root)")
    pytest.skip(message)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (1 MiB; remount with `size=...` for more); yields (path, remount)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if ok.returncode != 0:
        cannot_mount(f"cannot mount a tmpfs here: {ok.stderr.decode().strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)

    try:
        yield mount_point, remount
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path) -> None:
    """Write `path` until the file system holding it is full (to its last page)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)

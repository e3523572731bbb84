"""One run per output: a lock file in `<work_dir>/.connectome/lock`, taken before anything is
written and released on exit.

The file names the host, the process id and its start time. A second run on the same output is
refused with one line naming the holder; a lock whose process is gone (same host, no such pid, or
a pid reused by another process) is stale and taken over. A lock held on another host cannot be
checked from here: the message says which host and how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from connectome.core.errors import UserError

LOCK = "lock"


def lock_path(work_dir: str) -> str:
    return os.path.join(work_dir, ".connectome", LOCK)


def _started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half written (its writer died between create and write) or damaged: stale
    return value if isinstance(value, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the run named in a lock file still runs (a lock from another host counts as alive)."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    started = _started(int(holder.get("pid", -1)))
    return started is not None and abs(started - float(holder.get("started", 0))) < 1.0


@contextlib.contextmanager
def output_lock(work_dir: str, command: str | None = None) -> Iterator[str]:
    """Hold the lock of `work_dir` for the duration; refuse (UserError) while another run holds it."""
    path = lock_path(work_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command or " ".join(sys.argv)}
    mine = f"{path}.{me['host']}.{me['pid']}"
    try:  # the copy aside goes whatever happens (a full disk, a refusal); what a killed run leaves is litter
        with open(mine, "w") as f:  # the lock appears whole: written aside, then linked into place
            json.dump(me, f)
        for _ in range(3):
            try:
                os.link(mine, path)
            except FileExistsError:
                holder = _holder(path)
                if holder is None:
                    continue  # released meanwhile
                if _alive(holder):
                    where = "" if holder.get("host") == me["host"] else f" on host {holder.get('host')}"
                    raise UserError(
                        f"{work_dir}: another run (pid {holder.get('pid')}{where}, since {holder.get('since')}) is "
                        f"writing this output; wait for it to finish, or delete {path} if that run is gone"
                    ) from None
                with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                    os.unlink(path)
                continue
            break
        else:
            raise UserError(f"{work_dir}: could not take the lock {path} (other runs keep taking it)")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(mine)
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def running(work_dir: str) -> dict | None:
    """The run that holds the lock of `work_dir` now (host, pid, since), None when none does."""
    holder = _holder(lock_path(work_dir))
    return holder if holder and _alive(holder) else None

"""The stages (and global steps) the last started run of an output planned, in the order it runs them, with their
block counts: written to `.connectome/plan.json` once the run has work and holds the lock, so `connectome status
OUT_DIR` lists the stages a killed run had not reached yet as well as those it had."""

from __future__ import annotations

import contextlib
import json
import os

NAME = "plan.json"


def path_of(work_dir: str) -> str:
    return os.path.join(work_dir, ".connectome", NAME)


def write_stage_list(work_dir: str, stages: list[tuple[str, int]]) -> None:
    """Record (name, blocks) of each stage or global step, in run order (written aside, then renamed)."""
    path = path_of(work_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump({"stages": [{"stage": name, "blocks": blocks} for name, blocks in stages]}, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_stage_list(work_dir: str) -> list[tuple[str, int]] | None:
    """(name, blocks) of the last started run's stages; None where no run recorded them or the record is damaged
    (status then lists the stages that started, as before)."""
    try:
        with open(path_of(work_dir)) as f:
            record = json.load(f)
        return [(str(s["stage"]), int(s["blocks"])) for s in record["stages"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None

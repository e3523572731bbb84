"""Temporary files that a killed run left beside its outputs (`segments.csv.tmp123`, `transforms.npz.123.tmp.npz`,
`synapse_annotations.tmp123/`, `.run.json.123.tmp`): every writer of a small output file writes it aside under a
name with its process id, then renames it into place, so a kill between the two leaves one. The run that holds the
output's lock removes them before it writes anything (`remove_litter`).

Volumes are not walked (a zarr array or a precomputed image holds millions of chunk files and handles partial
chunks itself), nor are `tables/` (each table folder removes its own litter when its stage runs) and `.connectome/`
(the done-markers do likewise)."""

from __future__ import annotations

import json
import os
import re
import shutil

# `<name>.tmp<pid>[.<ext>]`, `<name>.<pid>.tmp[.<ext>]` and `<name>.old<pid>`: only names with a process id, so a
# user's own `notes.tmp` stays
LITTER = re.compile(r"(\.tmp\d+(\.[A-Za-z0-9]+)?|\.\d+\.tmp(\.[A-Za-z0-9]+)?|\.old\d+)$")
SKIPPED = ("tables", ".connectome")
DEPTH = 2  # the output's own files and those of its small folders (alignment/, meshes/, skeletons/, ...)


def _is_volume(path: str) -> bool:
    """A zarr group or array (an output's volume), or a precomputed image or segmentation (an `info` with scales)."""
    if os.path.exists(os.path.join(path, "zarr.json")) or os.path.exists(os.path.join(path, ".zarray")):
        return True
    info = os.path.join(path, "info")
    if not os.path.isfile(info):
        return False
    try:
        with open(info) as f:
            return "scales" in json.load(f)
    except (OSError, ValueError):
        return True  # unreadable: leave it alone


def remove_litter(out_dir: str) -> list[str]:
    """Remove the temporary files and folders of killed writes under `out_dir` (see the module docstring); returns
    their paths. Only the run that holds the output's lock may call it."""
    removed: list[str] = []

    def walk(folder: str, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if LITTER.search(entry.name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        continue
                removed.append(entry.path)
            elif (depth < DEPTH and entry.is_dir(follow_symlinks=False) and entry.name not in SKIPPED
                  and not _is_volume(entry.path)):
                walk(entry.path, depth + 1)

    if os.path.isdir(out_dir):  # (itself an OME-Zarr group of the volumes in it: walked all the same)
        walk(out_dir, 1)
    return removed

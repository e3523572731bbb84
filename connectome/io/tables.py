"""Per-block tables: a directory of one npz file per block, written atomically, with a `format.json`
that names the table, its format version and the stage run that writes it."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from connectome.core.errors import UserError

FORMAT_FILE = "format.json"
TMP_SUFFIX = ".tmp.npz"


def save_table(directory: str, index: int, **arrays) -> None:
    """Write one block's table atomically (a reader never sees half a file)."""
    path = os.path.join(directory, f"{index}.npz")
    tmp = os.path.join(directory, f".{index}.{os.getpid()}{TMP_SUFFIX}")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a killed write: leave no half file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_litter(directory: str) -> int:
    """Delete the temporary files of table writes that never finished (killed workers); call it only
    while no block of the stage runs (the run holds the output lock). Returns how many were removed."""
    removed = 0
    try:
        entries = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    with entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith((TMP_SUFFIX, ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def write_format(directory: str, name: str, version: int, producer: dict) -> None:
    """Record which table this directory holds, in which format, and the producing run (`producer`)."""
    os.makedirs(directory, exist_ok=True)
    record = {"table": name, "version": version, "producer": producer}
    try:
        unchanged = read_format(directory) == json.loads(json.dumps(record))
    except ValueError:  # a damaged record: written anew
        unchanged = False
    if unchanged:
        return  # unchanged: rewriting it would change the folder's time, which a merge tree keys its results on
    tmp = os.path.join(directory, f".{FORMAT_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, FORMAT_FILE))


def read_format(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, FORMAT_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def check_format(directory: str, name: str, version: int) -> dict:
    """The directory's format record; one line naming the problem when it is missing or of another version."""
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no {name} tables; run the stage that writes them first")
    found = read_format(directory)
    if found is None:
        raise UserError(f"{directory}: no {FORMAT_FILE}; re-run the stage that writes the {name} tables")
    if found.get("table") != name or found.get("version") != version:
        raise UserError(f"{directory}: holds {found.get('table')} tables of format {found.get('version')}, "
                        f"expected {name} format {version}; re-run the stage that writes them")
    return found



def write_csv(path: str, header, rows) -> str:
    """Write a CSV table atomically: `header`, then each row of `rows` (an iterable of lists of cells)."""
    import csv

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)
    return path

"""The synapse table (CSV): one row per synapse, location in voxels (z, y, x), partners, scores, size."""

from __future__ import annotations

import csv
import os

import numpy as np

from connectome.core.errors import UserError
from connectome.io.tables import write_csv

COLUMNS = ("id", "z", "y", "x", "pre", "post", "score", "partner_score", "size_voxels", "size_nm3", "autapse")
_TYPES = {"id": np.int64, "z": np.int64, "y": np.int64, "x": np.int64, "pre": np.uint64, "post": np.uint64,
          "score": np.float64, "partner_score": np.float64, "size_voxels": np.int64, "size_nm3": np.float64,
          "autapse": bool}
SYNAPSES_FILE = "synapses.csv"


def write_synapses(path: str, rows: dict[str, np.ndarray]) -> str:
    """Write the table atomically (columns in COLUMNS order)."""
    return write_csv(path, COLUMNS, ([_fmt(rows[c][i]) for c in COLUMNS] for i in range(len(rows["id"]))))


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(int(v))


def read_synapses(path: str) -> dict[str, np.ndarray]:
    """The table as columns (numpy arrays); one line naming the problem when it is not a synapse table."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no synapse table; run `connectome synapses` or `connectome reconstruct` first")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    missing = [c for c in ("z", "y", "x", "pre", "post", "score") if header is None or c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"expected a synapse table with {list(COLUMNS)}")
    assert header is not None
    out = {}
    for j, name in enumerate(header):
        kind = _TYPES.get(name, np.float64)
        values = [r[j] for r in rows]
        if kind is bool:
            out[name] = np.array([v in ("1", "True", "true") for v in values], bool)
        elif kind is np.uint64:
            out[name] = np.array([int(v) for v in values], np.uint64)
        else:
            out[name] = np.array(values, dtype=np.float64).astype(kind)
    return out

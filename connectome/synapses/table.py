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
SEGMENTATION_FILE = "synapses.json"  # beside the table: the segmentation whose ids its partners are


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


def write_segmentation_record(out_dir: str, segmentation: str) -> None:
    """Record beside the table the address of the segmentation whose ids its `pre` and `post` are: relative to
    `out_dir` where it lies inside it (the chain's own `segmentation`), so a moved or copied output directory
    still names its own."""
    import json

    from connectome.core.address import lies_within

    if "://" not in segmentation:
        segmentation = os.path.abspath(segmentation)
        if lies_within(segmentation, out_dir):
            segmentation = os.path.relpath(segmentation, os.path.abspath(out_dir))
    path = os.path.join(out_dir, SEGMENTATION_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"segmentation": segmentation}, f)
    os.replace(tmp, path)


def synapse_segmentation(out_dir: str) -> str | None:
    """The address of the segmentation the table's partners are ids of (a recorded relative one within `out_dir`);
    None for a table from before it was recorded (2026-12-05), whose partners are ids of `<out_dir>/segmentation`
    when the chain made that."""
    import json

    try:
        with open(os.path.join(out_dir, SEGMENTATION_FILE)) as f:
            value = json.load(f).get("segmentation")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(value, str):
        return None
    return value if "://" in value or os.path.isabs(value) else os.path.join(os.path.abspath(out_dir), value)


def same_volume(a: str, b: str) -> bool:
    """Whether two addresses name the same volume: the same file or folder (through links too), key and sections."""
    from connectome.core.address import location, parse_address

    pa, pb = parse_address(a), parse_address(b)
    return (pa.kind, pa.key, pa.sections, location(pa.path)) == (pb.kind, pb.key, pb.sections, location(pb.path))


def partners_are_ids_of(out_dir: str, segmentation: str) -> bool:
    """Whether the table's partners are ids of the volume at `segmentation` (also when nothing is recorded)."""
    recorded = synapse_segmentation(out_dir)
    return recorded is None or same_volume(recorded, segmentation)


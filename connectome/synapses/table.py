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


def read_csv_table(path: str, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV table; blank lines are skipped. One line naming the file and the
    line where it is not a CSV table (UserError): text that is not UTF-8, a broken quote, rows of another length."""
    rows: list[tuple[int, list[str]]] = []
    line = 1  # where the record being read starts (a quoted cell may span lines)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            line = reader.line_num + 1
            for row in reader:
                if row:
                    rows.append((line, row))
                line = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: expected a {what} (UTF-8 CSV text), found bytes that are not text ({e.reason} "
                        f"at byte {e.start})") from None
    except csv.Error as e:
        raise UserError(f"{path}: line {line}: expected a {what} (CSV), found {e}") from None
    header = header or []
    for line, row in rows:
        if len(row) != len(header):
            shown = ",".join(row)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise UserError(f"{path}: line {line}: expected {len(header)} columns ({', '.join(header)}), found "
                            f"{len(row)}: {shown!r}")
    return header, rows


def parse_cells(path: str, rows: list[tuple[int, list[str]]], j: int, name: str, kind) -> np.ndarray:
    """Column `j` (`name`) of `rows` as `kind`: np.uint64 (a segment id: an integer >= 0), np.int64 (an integer;
    an integral float such as 7.0 too), np.float64, bool (1/0, true/false, empty: false) or object (text as it
    is). One line naming the file, the line, the column and the value that is not one (UserError)."""
    if kind is object:
        return np.array([row[j] for _, row in rows], dtype=object)
    fast = _parse_fast([row[j] for _, row in rows], kind)  # a good column at numpy speed; else, cell by cell
    if fast is not None:
        return fast
    out = np.zeros(len(rows), dtype=kind)
    for i, (line, row) in enumerate(rows):
        text = row[j].strip()
        value: float  # (an int or a bool too)
        try:
            if kind is np.uint64:
                value = int(text)
                if not 0 <= value < 2**64:
                    raise ValueError
            elif kind is np.int64:
                number = float(text)
                if not number.is_integer():
                    raise ValueError
                value = int(number)
            elif kind is bool:
                lowered = text.lower()
                if lowered not in ("", "0", "1", "true", "false"):
                    raise ValueError
                value = lowered in ("1", "true")
            else:
                value = float(text)
            out[i] = value
        except (ValueError, OverflowError):
            expected = {np.uint64: "a segment id (an integer >= 0)", np.int64: "an integer",
                        bool: "1 or 0"}.get(kind, "a number")
            raise UserError(f"{path}: line {line}, column {name!r}: expected {expected}, found {row[j]!r}") from None
    return out


def _parse_fast(values: list[str], kind) -> np.ndarray | None:
    """`values` as `kind` (as `parse_cells` reads them) where every one is good, else None."""
    try:
        if kind is np.uint64:
            ints = [int(v) for v in values]
            return np.array(ints, np.uint64) if all(0 <= v < 2**64 for v in ints) else None
        if kind is bool:
            lowered = np.char.lower(np.char.strip(np.array(values, dtype=str)))
            if not np.isin(lowered, ["", "0", "1", "true", "false"]).all():
                return None
            return np.isin(lowered, ["1", "true"])
        numbers = np.array(values, dtype=np.float64)
        if kind is np.int64:
            if not (np.isfinite(numbers).all() and (numbers == np.round(numbers)).all()
                    and (np.abs(numbers) < 2.0**63).all()):
                return None
            return numbers.astype(np.int64)
        return numbers.astype(kind)
    except (ValueError, OverflowError, TypeError):
        return None


def read_synapses(path: str) -> dict[str, np.ndarray]:
    """The table as columns (numpy arrays); one line naming the problem when it is not a synapse table (the file,
    and the line and column of a value that is not one)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no synapse table; run `connectome synapses` or `connectome reconstruct` first")
    header, rows = read_csv_table(path, "synapse table")
    missing = [c for c in ("z", "y", "x", "pre", "post", "score") if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"expected a synapse table with {list(COLUMNS)}")
    return {name: parse_cells(path, rows, j, name, _TYPES.get(name, np.float64)) for j, name in enumerate(header)}


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


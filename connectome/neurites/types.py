"""The global step of the neurite_types stage: every block's feature sums combined per segment,
described, classified, and written as the segment table (`OUT/segments.csv`) with a class lookup."""

from __future__ import annotations

import glob
import os

import numpy as np

from connectome.engine.global_step import GlobalStep
from connectome.io.lookup import lut_path, save_lut
from connectome.io.tables import write_csv
from connectome.neurites import sholl
from connectome.neurites.classifier import CLASSES, load
from connectome.neurites.features import SUMS, centroids, combine, describe

SEGMENTS_FILE = "segments.csv"
SUMMARY_COLUMNS = ("radius_nm", "branch_share")  # the morphology graph nodes and segment properties carry
SEGMENT_COLUMNS = ("id", "size_voxels", "class", "class_score", "z", "y", "x", "out_synapses", "in_synapses",
                   *sholl.MORPHOLOGY_COLUMNS)


def class_code(name: str) -> int:
    """uint8 code of a class in the neurite_classes volume: 1 + its index in CLASSES, 0 for none."""
    return CLASSES.index(name) + 1 if name in CLASSES else 0


def synapse_counts(ids: np.ndarray, synapses_csv: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Synapses per segment as presynaptic (out) and postsynaptic (in) partner."""
    out = np.zeros(len(ids))
    inn = np.zeros(len(ids))
    if synapses_csv and os.path.isfile(synapses_csv):
        from connectome.synapses.table import read_synapses

        t = read_synapses(synapses_csv)
        for col, acc in (("pre", out), ("post", inn)):
            v = t[col][t[col] != 0]
            u, c = np.unique(v, return_counts=True)
            at = np.searchsorted(ids, u)
            ok = (at < len(ids)) & (ids[np.minimum(at, len(ids) - 1)] == u)
            acc[at[ok]] = c[ok]
    return out, inn


def load_sums(directory: str) -> dict:
    """The blocks' sums combined; "patch_network": the patch network every block used ("" for none)."""
    tables, networks = [], set()
    for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
        with np.load(path) as t:
            tables.append({k: t[k] for k in ("ids", *SUMS)})
            networks.add(str(t["patch_network"]))
    if len(networks) > 1:
        raise ValueError(f"{directory}: blocks used different patch networks {sorted(networks)}")
    return {**combine(tables), "patch_network": networks.pop() if networks else ""}


def _share(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.3f}"  # empty: not measured (a segment without Sholl lattice points)


def write_segments(path: str, rows: dict) -> str:
    return write_csv(path, SEGMENT_COLUMNS, (
        [rows["id"][i], int(rows["size_voxels"][i]), rows["class"][i], f"{rows['class_score'][i]:.4f}",
         *(f"{rows[k][i]:.2f}" for k in ("z", "y", "x")), int(rows["out_synapses"][i]), int(rows["in_synapses"][i]),
         f"{rows['radius_nm'][i]:.1f}", int(rows["sholl_points"][i]),
         *(_share(rows[k][i]) for k in ("crossings", "branch_share", "tip_share"))]
        for i in range(len(rows["id"]))))


REQUIRED_SEGMENT_COLUMNS = SEGMENT_COLUMNS[:9]  # id .. in_synapses; tables before 2026-12-04 lack the morphology


def read_segments(path: str) -> dict[str, np.ndarray]:
    """The segment table as columns; one line naming the file when it is not one (its columns, and the line and
    column of a value that is not one)."""
    from connectome.core.errors import UserError
    from connectome.synapses.table import parse_cells, read_csv_table

    if not os.path.isfile(path):
        raise UserError(f"{path}: no segment table; run `connectome reconstruct` first")
    header, rows = read_csv_table(path, "segment table")
    missing = [c for c in REQUIRED_SEGMENT_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: expected a segment table with columns {', '.join(SEGMENT_COLUMNS)}, found "
                        f"{', '.join(header) if header else 'none'} (missing {', '.join(missing)}); re-run "
                        "`connectome synapses` (or `reconstruct`) to write it")
    at = {name: j for j, name in enumerate(header)}
    out: dict[str, np.ndarray] = {"id": parse_cells(path, rows, at["id"], "id", np.uint64),
                                  "class": parse_cells(path, rows, at["class"], "class", object)}
    for k in ("size_voxels", "class_score", "z", "y", "x", "out_synapses", "in_synapses"):
        out[k] = parse_cells(path, rows, at[k], k, np.float64)
    for k in sholl.MORPHOLOGY_COLUMNS:  # tables written before 2026-12-04 lack them; empty: not measured (NaN)
        if k in at:
            j = at[k]
            filled = [(line, row if row[j].strip() else [*row[:j], "nan", *row[j + 1:]]) for line, row in rows]
            out[k] = parse_cells(path, filled, j, k, np.float64)
    return out


def classify(sums: dict, voxel_size, classifier: str, synapses_csv: str | None) -> dict:
    """The segment table's columns from combined sums."""
    ids = sums["ids"].astype(np.uint64)
    out_syn, in_syn = synapse_counts(ids, synapses_csv)
    clf = load(classifier)
    if clf.uses_patches:
        from connectome.core.errors import UserError

        if not sums.get("patch_network"):
            raise UserError(f"neurite type classifier {clf.name} needs the patch network's features, but the "
                            "segment_features stage ran without one (its patch_network parameter is null)")
        wanted = clf.provenance.get("patch_network")
        if wanted and sums["patch_network"] != wanted:
            raise UserError(f"neurite type classifier {clf.name} was trained on the features of patch network "
                            f"{wanted!r}, but segment_features used {sums['patch_network']!r}")
    k, p = clf.predict(clf.select(describe(sums, voxel_size, out_syn, in_syn)))
    names = np.array([clf.classes[i] for i in k], dtype=object)
    c = centroids(sums) if len(ids) else np.zeros((0, 3))
    own = sums["voxels"] > 0  # ids seen only across a face of a block have no voxels: no class
    names[~own] = "unknown"
    return {"id": ids, "size_voxels": sums["voxels"], "class": names, "class_score": np.where(own, p, 0.0),
            "z": c[:, 0], "y": c[:, 1], "x": c[:, 2], "out_synapses": out_syn, "in_synapses": in_syn,
            "radius_nm": sums["radius"] / np.maximum(sums["voxels"], 1.0), **sholl.morphology(sums)}


class TypesStep(GlobalStep):
    """Feature tables -> the segment table (id, size, class, centroid) and a segment -> class lookup."""

    name = "neurite_classify"

    def __init__(self, tables_dir: str, out_dir: str, classifier: str, voxel_size):
        self.tables_dir = tables_dir
        self.out_dir = out_dir
        self.classifier = classifier
        self.voxel_size = tuple(float(v) for v in voxel_size)

    @property
    def params(self) -> dict:
        return {"classifier": self.classifier, "voxel_size": list(self.voxel_size)}

    @property
    def lut(self) -> str:
        return lut_path(self.tables_dir, self.params, prefix="class-lut")

    @property
    def table(self) -> str:
        return os.path.join(self.out_dir, SEGMENTS_FILE)

    def fingerprint(self) -> dict:
        return {"step": self.name, "params": self.params, "tables": self.tables_dir, "table": self.table}

    def run(self) -> dict:
        from connectome.synapses.table import SYNAPSES_FILE

        rows = classify(load_sums(self.tables_dir), self.voxel_size, self.classifier,
                        os.path.join(self.out_dir, SYNAPSES_FILE))
        codes = np.array([class_code(c) for c in rows["class"]], np.uint64)
        save_lut(self.lut, rows["id"], codes)
        write_segments(self.table, rows)
        names, counts = np.unique(rows["class"].astype(str), return_counts=True)
        return {"segments": int(len(rows["id"])), "classes": {str(a): int(b) for a, b in zip(names, counts)}}

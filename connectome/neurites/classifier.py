"""The neurite type classifier: a small multilayer perceptron over standardised segment descriptors,
stored as JSON (`weights/{name}.json`) and run with numpy."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectome.core.errors import UserError
from connectome.synth import codes as K

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLASSES = (K.AXON, K.DENDRITE, K.SPINE, K.SOMA, K.GLIA)
UNKNOWN = "unknown"  # a segment with no voxels of its own in the volume


@dataclass(frozen=True)
class TypeClassifier:
    name: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    provenance: dict

    def select(self, x: np.ndarray) -> np.ndarray:
        """The classifier's columns of a full descriptor table (columns: features.FEATURE_NAMES)."""
        from connectome.neurites.features import FEATURE_NAMES

        missing = [f for f in self.features if f not in FEATURE_NAMES]
        if missing:
            raise UserError(f"neurite type classifier {self.name}: unknown features {missing}; "
                            f"known: {', '.join(FEATURE_NAMES)}")
        return np.asarray(x)[:, [FEATURE_NAMES.index(f) for f in self.features]]

    @property
    def voxel_size(self) -> tuple[float, ...] | None:
        """The voxel size (nm) of the data it was trained on, where its json records it."""
        vs = self.provenance.get("voxel_size")
        return tuple(float(v) for v in vs) if vs else None

    @property
    def uses_patches(self) -> bool:
        from connectome.neurites.features import PATCH_FEATURES

        return any(f in PATCH_FEATURES for f in self.features)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of rows of this classifier's features (see `select`)."""
        h = (np.asarray(x, np.float64) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        h = h - h.max(axis=1, keepdims=True) if len(h) else h
        e = np.exp(h)
        return e / e.sum(axis=1, keepdims=True) if len(h) else np.zeros((0, len(self.classes)))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index and its probability per row."""
        p = self.probabilities(x)
        k = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
        return k, p[np.arange(len(p)), k] if len(p) else np.zeros(0)


def resolve(name: str) -> Path:
    if name.endswith(".json") or os.sep in name:
        path = Path(name).expanduser()
    else:
        path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))) or "none"
        raise UserError(f"unknown neurite type classifier {name!r}; available: {known} (or a path to a .json file)")
    return path


@functools.lru_cache(maxsize=4)
def load(name: str) -> TypeClassifier:
    path = resolve(name)
    d = json.loads(path.read_text())
    return TypeClassifier(d.get("name", path.stem), tuple(d["features"]), tuple(d["classes"]),
                          np.asarray(d["mean"], float), np.asarray(d["std"], float),
                          tuple((np.asarray(w, float), np.asarray(b, float)) for w, b in d["layers"]),
                          d.get("provenance", {}))


def save(path: str | os.PathLike, clf: TypeClassifier) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {"name": clf.name, "features": list(clf.features), "classes": list(clf.classes), "mean": clf.mean.tolist(),
         "std": clf.std.tolist(), "layers": [[w.tolist(), b.tolist()] for w, b in clf.layers],
         "provenance": clf.provenance}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(d) + "\n")
    os.replace(tmp, path)
    load.cache_clear()
    return path

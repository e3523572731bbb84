"""The learned merge score: a small MLP on edge features (`edge_features`) giving p(merge) per edge.

Stored as json beside the affinity model it was trained with (`<model>-edges.json`): the feature
names (`FEATURES`, or since 2026-12-07 those and the image's `INTENSITY_FEATURES`: such a classifier reads
the EM image too), their standardisation, the layers, the merge threshold chosen on validation and provenance.
The agglomerate stage writes p(merge), rounded to k / 255, in place of the edge's mean affinity
(on edges with a small side, `edge_context`):
its table's `sums` become p x contact count (the affinity sums move to `affinity_sums`), so the
global merge (serial or tree, `merge_tree`) pools area-weighted classifier scores exactly with the
mean-affinity machinery and scores a region pair 1 - its pooled p(merge).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from connectome.affinity.edge_features import EXTENT, FEATURES, INTENSITY_FEATURES
from connectome.affinity.encoding import SCALE
from connectome.core.errors import UserError

FORMAT = 1
ROWS = 8192  # edges per step of merge_probability
FEATURE_SETS = (FEATURES, FEATURES + INTENSITY_FEATURES)  # what a classifier may read: the columns of `edge_features`


@dataclass(frozen=True)
class EdgeClassifier:
    """An MLP (ReLU hidden layers, sigmoid output) over standardised features (one of `FEATURE_SETS`)."""

    path: str
    mean: np.ndarray
    std: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    threshold: float
    extent: int = EXTENT  # voxels (finest axis) up to which a fragment is "small" (`edge_features`)
    fitted_to: dict | None = None  # the affinity weights it was fitted to (name, sha1): `check_fitted_to`
    features: tuple[str, ...] = FEATURES

    @property
    def reads_image(self) -> bool:
        """Whether its features include the EM image's (`INTENSITY_FEATURES`): the agglomerate stage reads it."""
        return len(self.features) > len(FEATURES)

    def merge_probability(self, features: np.ndarray) -> np.ndarray:
        """p(merge) per row of `features` (edges, at least len(self.features) columns of `edge_features`, the
        first ones read); in runs of ROWS rows, whose hidden activations stay in the CPU's cache (3-6x faster
        than all rows at once at 400,000 edges)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] < len(self.features):
            raise ValueError(f"edge classifier {self.path}: expected {len(self.features)} feature columns, "
                             f"got array of shape {features.shape}")
        features = features[:, :len(self.features)]
        out = np.empty(len(features))
        for start in range(0, len(features), ROWS):
            x = (features[start:start + ROWS] - self.mean) / self.std
            for k, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = x @ w.T
                x += b
                if k < len(self.weights) - 1:
                    np.maximum(x, 0.0, out=x)
            out[start:start + ROWS] = 1.0 / (1.0 + np.exp(-np.clip(x[:, 0], -60, 60)))
        return out


def learned_sums(p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """p(merge) rounded to k / 255, times the contact count: exact in float64 once scaled by 255,
    like the stored affinities' sums (`agglomeration.edge_stats`)."""
    k = np.rint(np.clip(p, 0.0, 1.0) * SCALE)
    return k * np.asarray(counts, np.float64) / SCALE


def edges_path_for(model: str) -> Path:
    """The classifier json of an affinity model: `<model>-edges.json` beside its weights."""
    from connectome.models.registry import resolve_model_path

    pt = resolve_model_path(model)
    return pt.with_name(pt.stem + "-edges.json")


def resolve_edge_model(name: str) -> str:
    """Path of an edge classifier given as a json path or a shipped name (`fib-10nm-edges`)."""
    from connectome.models.registry import WEIGHTS_DIR

    path = Path(name).expanduser() if (name.endswith(".json") or os.sep in name) else WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*-edges.json"))) or "none"
        raise UserError(f"edge classifier {name}: no such file (shipped: {shipped}; or give a .json path)")
    return str(path.resolve())


def check_fitted_to(path: str, model: str) -> None:
    """Refuse, in one line, a classifier that records the affinity weights it was fitted to (since 2026-12-05:
    `affinity_weights`, name and sha1) where `model`'s weights are others: a model retrained in place (`train
    affinities --out` over its own folder) would otherwise be merged by its old weights' classifier."""
    from connectome.engine.stage import file_record
    from connectome.models.registry import resolve_model_path

    fitted = load_classifier(path).fitted_to
    if fitted is None:
        return  # fitted before the weights were recorded (the shipped synthetic-edges)
    now = file_record(resolve_model_path(model))
    if now["sha1"] != fitted["sha1"]:
        raise UserError(f"edge classifier {path}: fitted to the affinities of {fitted.get('name')} (sha1 "
                        f"{fitted['sha1'][:12]}), but model {model}'s weights are others ({now['name']}, sha1 "
                        f"{now['sha1'][:12]}: retrained since, or another model); fit one to it (`connectome train "
                        f"edges --model {model} ...`) or give --scoring mean")


def load_classifier(path: str) -> EdgeClassifier:
    """The classifier stored at `path` (read once while the file is unchanged); a file of another kind is refused
    with one line."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise UserError(f"edge classifier {path}: not readable as json ({type(e).__name__})") from None
    return _load_classifier(path, mtime)


@lru_cache(maxsize=8)
def _load_classifier(path: str, mtime_ns: int) -> EdgeClassifier:
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"edge classifier {path}: not readable as json ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("kind") != "edge_classifier" or meta.get("format") != FORMAT:
        raise UserError(f"edge classifier {path}: expected kind 'edge_classifier', format {FORMAT}; found "
                        f"kind {meta.get('kind') if isinstance(meta, dict) else None!r}")
    names = tuple(meta.get("features") or ()) if isinstance(meta.get("features"), list) else ()
    if names not in FEATURE_SETS:
        raise UserError(f"edge classifier {path}: features {meta.get('features')} differ from this version's "
                        f"{list(FEATURES)} (and the image's {list(INTENSITY_FEATURES)} after them); retrain it "
                        "(connectome train edges)")
    try:
        mean = np.asarray(meta["mean"], np.float64)
        std = np.asarray(meta["std"], np.float64)
        weights = tuple(np.asarray(layer["weight"], np.float64) for layer in meta["layers"])
        biases = tuple(np.asarray(layer["bias"], np.float64) for layer in meta["layers"])
        threshold = float(meta["threshold"])
        extent = int(meta["extent"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"edge classifier {path}: missing or malformed key {e}") from None
    width = len(names)
    shapes_ok = mean.shape == std.shape == (width,) and np.all(std > 0) and len(weights) > 0
    for w, b in zip(weights, biases):
        shapes_ok = shapes_ok and w.ndim == 2 and w.shape[1] == width and b.shape == (w.shape[0],)
        width = w.shape[0] if w.ndim == 2 else -1
    if not shapes_ok or width != 1 or not 0 <= threshold <= 1 or extent < 1:
        raise UserError(f"edge classifier {path}: layers do not chain from {len(names)} features to 1 output "
                        f"(or threshold {threshold} outside [0, 1], or extent {extent} below 1)")
    fitted = meta.get("affinity_weights")
    fitted_to = fitted if isinstance(fitted, dict) and "sha1" in fitted else None
    return EdgeClassifier(path, mean, std, weights, biases, threshold, extent, fitted_to, names)

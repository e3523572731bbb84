"""Models stay resident: each worker process loads a model once and reuses it for every block."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_models: dict[tuple[str, str | None], object] = {}


def get_model(name: str, device: str | None = None):
    """The loaded model `name` on `device` (None: the worker's GPU if it has one, else the CPU)."""
    key = (name, device)
    with _lock:
        if key not in _models:
            from connectome.models import load_model

            _models[key] = load_model(name, device=device)
        return _models[key]


def cached_names() -> list[str]:
    return sorted({name for name, _ in _models})

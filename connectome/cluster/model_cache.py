"""Models stay resident: each worker process loads a model once and reuses it for every block."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_models: dict[tuple[str, str | None], object] = {}
_default_device: str | None = None  # set by the worker plugin: the device this worker computes on
_loads = 0


def get_model(name: str, device: str | None = None):
    """The loaded model `name` on `device` (None: the worker's GPU if it has one, else the CPU)."""
    global _loads
    device = device or _default_device
    key = (name, device)
    with _lock:
        if key not in _models:
            from connectome.models import load_model

            _models[key] = load_model(name, device=device)
            _loads += 1
        return _models[key]


def cached_names() -> list[str]:
    return sorted({name for name, _ in _models})


def set_default_device(device: str | None) -> None:
    """The device `get_model(name)` uses when none is given (the worker plugin sets it)."""
    global _default_device
    _default_device = device


def default_device() -> str | None:
    return _default_device


def load_count() -> int:
    """How many times a model was loaded in this process (each (name, device) should load once)."""
    return _loads


def clear() -> None:
    with _lock:
        _models.clear()

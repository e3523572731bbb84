"""Stages by name: each domain registers its stage classes with `@register` in its own `stages.py`.

The registry imports `connectome.<domain>.stages` for every domain folder that has one, so a new
domain's stages are found without touching the engine.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from connectome.core.errors import UserError
from connectome.engine.stage import BlockStage

REGISTRY: dict[str, type[BlockStage]] = {}
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_discovered = False


def register(cls: type[BlockStage]) -> type[BlockStage]:
    """Class decorator: make a stage known by its `name`; two stages may not share one."""
    known = REGISTRY.get(cls.name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"stage name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


def discover() -> None:
    """Import every domain's `stages` module once (they register themselves)."""
    global _discovered
    if _discovered:
        return
    for info in sorted(pkgutil.iter_modules([str(_PACKAGE_DIR)]), key=lambda i: i.name):
        if info.ispkg and (_PACKAGE_DIR / info.name / "stages.py").exists():
            importlib.import_module(f"connectome.{info.name}.stages")
    _discovered = True


def stage_class(name: str) -> type[BlockStage]:
    discover()
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]

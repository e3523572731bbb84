"""Stages by name: each domain registers its stage classes with `@register` in its own `stages.py`.

The registry imports `connectome.<domain>.stages` for every domain folder that has one, so a new
domain's stages are found without touching the engine. Looking up one stage first imports only the
domain whose `stages.py` declares its name (`name = "..."`): a command that runs the alignment chain
does not pay for importing PyTorch. Where that finds nothing, every domain is imported.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
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
    for domain in _domains():
        importlib.import_module(f"connectome.{domain}.stages")
    _discovered = True


def _domains() -> list[str]:
    infos = sorted(pkgutil.iter_modules([str(_PACKAGE_DIR)]), key=lambda i: i.name)
    return [i.name for i in infos if i.ispkg and (_PACKAGE_DIR / i.name / "stages.py").exists()]


def _declaring_domain(name: str) -> str | None:
    """The domain whose stages.py holds a class attribute `name = "<name>"` (a hint; the import decides)."""
    declared = re.compile(rf"""^[ \t]+name[ \t]*(?::[^=\n]*)?=[ \t]*["']{re.escape(name)}["']""", re.MULTILINE)
    for domain in _domains():
        if declared.search((_PACKAGE_DIR / domain / "stages.py").read_text()):
            return domain
    return None


def stage_class(name: str) -> type[BlockStage]:
    if name not in REGISTRY and not _discovered:
        domain = _declaring_domain(name)
        if domain is not None:
            importlib.import_module(f"connectome.{domain}.stages")
    if name not in REGISTRY:
        discover()
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]

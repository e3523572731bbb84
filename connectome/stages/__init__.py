"""Blockwise stages by name."""

from __future__ import annotations

from connectome.errors import UserError
from connectome.stages.base import BlockStage, OutputSpec, StageParams
from connectome.stages.affinities import AffinitiesStage
from connectome.stages.agglomerate import AgglomerateStage
from connectome.stages.copy import CopyStage
from connectome.stages.fragments import FragmentsStage
from connectome.stages.normalize import NormalizeStage
from connectome.stages.relabel import RelabelStage

REGISTRY: dict[str, type[BlockStage]] = {}


def register(cls: type[BlockStage]) -> type[BlockStage]:
    REGISTRY[cls.name] = cls
    return cls


for _cls in (CopyStage, NormalizeStage, AffinitiesStage, FragmentsStage, AgglomerateStage, RelabelStage):
    register(_cls)


def stage_class(name: str) -> type[BlockStage]:
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


__all__ = ["BlockStage", "OutputSpec", "StageParams", "REGISTRY", "register", "stage_class"]

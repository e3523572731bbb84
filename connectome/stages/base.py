"""What a blockwise stage is: parameters, named input/output volumes, and a function of one block."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from connectome.errors import UserError
from connectome.geometry import Block, Vec
from connectome.volumes import Volume, VolumeMeta, open_volume


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class OutputSpec:
    """How to create one output volume; None fields follow the run's defaults."""

    dtype: str
    channels: int | None = None


class BlockStage(ABC):
    """A stage computes its write box from its read box, one block at a time.

    Subclasses set `name`, `Params`, `inputs` and `outputs` (logical names), and implement
    `output_specs` and `process`. The runner opens the volumes once per batch of blocks and
    records a done-marker (with the summary `process` returns) after each block.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[tuple[str, ...]] = ("raw",)
    outputs: ClassVar[tuple[str, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ()  # directories of per-block tables this stage writes
    reads_tables: ClassVar[tuple[str, ...]] = ()  # table directories written by an earlier stage
    resources: ClassVar[dict[str, float]] = {}  # Dask worker resources, e.g. {"GPU": 1}
    input_dtypes: ClassVar[dict[str, tuple[str, ...]]] = {}  # accepted dtypes per input, if limited

    def __init__(self, params: StageParams, input_addresses: dict[str, str], output_addresses: dict[str, str],
                 table_dirs: dict[str, str] | None = None):
        self.params = params
        self.input_addresses = dict(input_addresses)
        self.output_addresses = dict(output_addresses)
        self.table_dirs = dict(table_dirs or {})

    def context(self) -> Vec:
        """Voxels of context each block reads beyond its write box."""
        return (0, 0, 0)

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        """Refuse inputs of a dtype this stage cannot read."""
        for name, allowed in self.input_dtypes.items():
            found = inputs[name].dtype.name
            if found not in allowed:
                raise UserError(
                    f"stage {self.name!r}: input {name} ({self.input_addresses[name]}) has dtype {found}, "
                    f"expected {' or '.join(allowed)}"
                )

    def block_multiple(self) -> Vec:
        """Block shapes must be a multiple of this (e.g. a model's downsampling factor)."""
        return (1, 1, 1)

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        return {}

    def prepare(self, work_dir: str) -> None:
        """A global step run once on the client before the blocks (e.g. building a lookup table)."""

    def open_volumes(self) -> dict[str, Volume]:
        vols = {k: open_volume(a) for k, a in self.input_addresses.items()}
        vols.update({k: open_volume(a, "r+") for k, a in self.output_addresses.items()})
        return vols

    @abstractmethod
    def process(self, block: Block, volumes: dict[str, Volume]) -> dict | None:
        """Read `block.read_box`, write `block.write_box`; return a small JSON-able summary."""

    def fingerprint(self) -> dict:
        return {
            "stage": self.name,
            "params": self.params.model_dump(mode="json"),
            "inputs": self.input_addresses,
            "outputs": self.output_addresses,
            "tables": self.table_dirs,
        }


def crop(data: np.ndarray, block: Block) -> np.ndarray:
    """Cut the write box out of an array that holds the read box (channels first if any)."""
    s = block.write_box.relative_to(block.read_box)
    return data[(Ellipsis, *s)]

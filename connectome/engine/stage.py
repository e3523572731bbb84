"""The stage contract: what a blockwise stage declares, and the one function it implements.

A stage author declares
- `inputs` and `outputs` by logical name (`Input` / `Output`: accepted dtypes, channels, and for an
  output its dtype, channels and, where they differ from the run's, shape, chunks and voxel size);
- `context()`: what a block reads beyond its write box (`core.geometry.Context`: below and above,
  padded to a multiple, clipped or mirrored at the volume's faces); the runner hands the stage
  `block.read_box`, so a stage never derives its own padding;
- `resources` (e.g. {"GPU": 1}), `block_multiple()`, `reads_neighbours` (blocks wait for the
  earlier blocks whose outputs they read), `tables` it writes (`Table`: name and format version),
  `reads_tables`, and `global_step()` (work that runs once before the blocks, e.g. a global merge);
- `Params`, a pydantic model of its parameters;
and implements `process(block, volumes)`, which reads `block.read_box`, writes `block.write_box`
and returns a small JSON-able summary (stored in the block's done-marker).
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from connectome.core.errors import UserError
from connectome.core.geometry import Block, Context, Vec
from connectome.engine.global_step import GlobalStep
from connectome.io import Volume, VolumeMeta, open_volume


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, values are immutable. `guards` names
    parameters that only decide whether a run may start (they change no output): the stage's
    fingerprint records them at their default, so setting one does not make a finished run start again
    (and runs from before a parameter became a guard resume)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    guards: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        unknown = sorted(set(cls.guards) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__}.guards names {unknown}, which are not its fields")


@dataclass(frozen=True)
class Input:
    """A volume a stage reads: `dtypes` it accepts (empty: any) and `channels` (None: any); an
    `optional` input is read only where the run's stage config names it (`inputs: {name: address}`)."""

    name: str
    dtypes: tuple[str, ...] = ()
    channels: int | None = None
    optional: bool = False
    description: str = ""  # what the input holds, for the line that refuses another kind of volume


# the description of an input of affinities (`Input(..., description=AFFINITIES)`)
AFFINITIES = "affinities: one channel per axis z, y, x, as the affinities stage writes them"
# the description of a grey-level image input (`Input("raw", ..., channels=1, description=IMAGE)`)
IMAGE = "a grey-level EM image (z, y, x): store one channel of a multi-channel volume as its own volume"


@dataclass(frozen=True)
class OutputSpec:
    """How to create one output volume; None fields follow the run (its shape, chunks, voxel size)."""

    dtype: str
    channels: int | None = None
    shape: Vec | None = None
    chunk_shape: Vec | None = None
    voxel_size: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Output:
    """A volume a stage writes; `spec` None means the stage decides it from its inputs (`output_specs`)."""

    name: str
    spec: OutputSpec | None = None


@dataclass(frozen=True)
class Table:
    """A per-block table a stage writes (one npz per block), with the version of its format."""

    name: str
    version: int = 1


P = TypeVar("P", bound=StageParams)


def _names(items: Sequence[Input | Output | Table | str]) -> tuple[str, ...]:
    return tuple(i if isinstance(i, str) else i.name for i in items)


class BlockStage(ABC, Generic[P]):
    """A stage computes its write box from its read box, one block at a time (see the module doc).

    `BlockStage[MyParams]` types `self.params` as MyParams.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[tuple[Input | str, ...]] = (Input("raw"),)
    outputs: ClassVar[tuple[Output | str, ...]] = ()
    tables: ClassVar[tuple[Table | str, ...]] = ()
    reads_tables: ClassVar[tuple[Table | str, ...]] = ()  # a Table names the format version it expects
    resources: ClassVar[dict[str, float]] = {}  # Dask worker resources, e.g. {"GPU": 1}
    reads_neighbours: ClassVar[bool] = False  # a block reads outputs of earlier blocks within its context
    # a block reads its inputs within its read box only: a changed input file then sends only the blocks whose read
    # box holds it to run again (`engine.staleness`); otherwise every finished block of the stage
    reads_only_read_box: ClassVar[bool] = False
    # the inputs whose files a finished block records (`engine.staleness`): the plan sets it to those no stage of the
    # run writes, this one included; a stage run outside a plan records none (nothing would compare them)
    recorded_inputs: frozenset[str] = frozenset()
    # inputs the stage adds to (pyramid levels beside scale 0): the plan refuses one outside the run's output
    # directory unless the stage's params say `in_place`, so a lab's source volume is not changed by surprise
    writes_into: ClassVar[tuple[str, ...]] = ()
    # outputs that are an input's data rearranged (output -> (input, how)): a message about the output names the
    # input the user gave, with `how` (the plan says "RAW (its sections in the recovered order)", not OUT/ordered_raw)
    shown_as: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, params: P, input_addresses: dict[str, str], output_addresses: dict[str, str],
                 table_dirs: dict[str, str] | None = None):
        self.params = params
        self.input_addresses = dict(input_addresses)
        self.output_addresses = dict(output_addresses)
        self.table_dirs = dict(table_dirs or {})

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return _names(cls.inputs)

    @classmethod
    def optional_input_names(cls) -> tuple[str, ...]:
        return tuple(i.name for i in cls.inputs if isinstance(i, Input) and i.optional)

    @classmethod
    def output_names(cls) -> tuple[str, ...]:
        return _names(cls.outputs)

    @classmethod
    def table_names(cls) -> tuple[str, ...]:
        return _names(cls.tables)

    @classmethod
    def table_versions(cls) -> dict[str, int]:
        return {t.name: t.version for t in cls.tables if isinstance(t, Table)}

    def context(self) -> Context | Vec:
        """What each block reads beyond its write box (a symmetric margin, or a Context)."""
        return (0, 0, 0)

    def block_multiple(self) -> Vec:
        """Block shapes must be a multiple of this (e.g. a model's downsampling factor)."""
        return (1, 1, 1)

    def block_multiple_reason(self) -> str:
        """What `block_multiple` is, for the one line that refuses a block shape ("" where it says nothing)."""
        return ""

    def check_inputs(self, inputs: dict[str, VolumeMeta]) -> None:
        """Refuse inputs of a dtype or channel count this stage cannot read (one line each)."""
        for spec in self.inputs:
            if isinstance(spec, str) or spec.name not in inputs:  # an optional input not given
                continue
            meta = inputs[spec.name]
            found = meta.dtype.name
            if spec.dtypes and found not in spec.dtypes:
                hint = ""
                if spec.dtypes == ("uint8",):
                    hint = ("; `connectome ingest SRC DST --voxel-size Z Y X --dtype uint8` converts a volume to uint8 "
                            "(rescaling by the 0.1/99.9 percentiles, or --range LOW HIGH)")
                what = f" ({spec.description})" if spec.description else ""
                raise UserError(
                    f"stage {self.name!r}: input {spec.name} ({self.input_addresses[spec.name]}) has dtype {found}, "
                    f"expected {' or '.join(spec.dtypes)}{what}{hint}"
                )
            if spec.channels is not None and (meta.channels or 1) != spec.channels:
                found_channels = f"{meta.channels} channels" if meta.channels else "1 channel (no channel axis)"
                wanted = (f"{spec.channels} channel{'s' if spec.channels != 1 else ''}"
                          + (f" of {' or '.join(spec.dtypes)}" if spec.dtypes else ""))
                what = f" ({spec.description})" if spec.description else ""
                raise UserError(
                    f"stage {self.name!r}: input {spec.name} ({self.input_addresses[spec.name]}) has "
                    f"{found_channels}, dtype {found}, shape {list(meta.shape)}; expected {wanted}{what}"
                )

    def check_upstream(self, upstream: dict[str, BlockStage | None]) -> P:
        """This stage's parameters made consistent with the stages of the run that write its inputs
        (`upstream`: input name -> that stage, None for an input the run does not write)."""
        return self.params

    def check_table_producers(self, producers: dict[str, BlockStage]) -> None:
        """Refuse (UserError) a plan whose stages that write the tables this stage reads (`producers`:
        table name -> that stage) do not fit this stage's parameters."""

    def global_step(self) -> GlobalStep | None:
        """Work that runs once over all blocks' results before this stage's blocks (e.g. a global merge)."""
        return None

    def before_blocks(self, on_worker: Callable[[Callable[[], Any]], Any],
                      finished: Callable[[], dict[int, dict]]) -> None:
        """Called by the runner on the client before it sends a run's blocks: settle what every block must share
        but only a worker can tell (`on_worker(fn)` runs fn on a worker of the stage's pool and returns its result;
        `finished()`: the summaries of the blocks finished before). The stage object, as changed here, is what
        the workers get. Default: nothing."""

    def output_specs(self, inputs: dict[str, VolumeMeta]) -> dict[str, OutputSpec]:
        """How each output is created; by default the specs the outputs declare."""
        out = {}
        for o in self.outputs:
            if isinstance(o, Output) and o.spec is not None:
                out[o.name] = o.spec
        return out

    def open_volumes(self) -> dict[str, Volume]:
        vols = {k: open_volume(a) for k, a in self.input_addresses.items()}
        vols.update({k: open_volume(a, "r+") for k, a in self.output_addresses.items()})
        return vols

    @abstractmethod
    def process(self, block: Block, volumes: dict[str, Volume]) -> dict | None:
        """Read `block.read_box`, write `block.write_box`; return a small JSON-able summary."""

    def fingerprint_params(self) -> dict:
        """The parameters as the fingerprint records them: guards at their default."""
        params = self.params.model_dump(mode="json")
        fields = type(self.params).model_fields
        params.update({name: fields[name].default for name in self.params.guards})
        return params

    def fingerprint(self) -> dict:
        fp: dict[str, object] = {
            "stage": self.name,
            "params": self.fingerprint_params(),
            "inputs": self.input_addresses,
            "outputs": self.output_addresses,
            "tables": self.table_dirs,
        }
        versions = self.table_versions()
        if versions:
            fp["table_format"] = versions if len(versions) > 1 else list(versions.values())[0]
        params = fp["params"]
        for key, (param, path) in self.weight_files().items():
            fp[key] = file_record(path)
            given = params[param]  # type: ignore[index]
            if given.endswith(".pt") or os.sep in given:  # a path: by file name, so another checkout resumes
                fp["params"] = params = {**params, param: os.path.basename(path)}  # type: ignore[dict-item]
        return fp

    def weight_files(self) -> dict[str, tuple[str, str]]:
        """Files the results depend on (a network's weights): fingerprint key -> (the parameter that names the
        file, its path). Recorded by name and content (`file_record`), so weights retrained in place make a
        resumed run refuse to mix the two, and the same file in another folder resumes."""
        return {}


def file_record(path: str | os.PathLike) -> dict:
    """A file as a fingerprint records it: its name and content, not its folder, so a run resumes from another
    checkout, venv or container holding the same file, and re-runs where the file was replaced in place."""
    st = os.stat(path)
    return {"name": os.path.basename(path), "sha1": _sha1(os.fspath(path), st.st_size, st.st_mtime_ns)}


@functools.lru_cache(maxsize=64)
def _sha1(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha1, read once per (path, size, modification time): fingerprints are taken often."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def crop(data: np.ndarray, block: Block) -> np.ndarray:
    """Cut the write box out of an array that holds the read box (channels first if any)."""
    s = block.write_box.relative_to(block.read_box)
    return data[(Ellipsis, *s)]

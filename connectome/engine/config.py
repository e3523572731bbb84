"""The run configuration: one YAML file, validated with pydantic before anything is written."""

from __future__ import annotations

import math
import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, field_validator

from connectome.cluster.client import ClusterConfig
from connectome.core.address import rebased
from connectome.core.errors import UserError


class BlocksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shape: tuple[StrictInt, StrictInt, StrictInt] = Field(
        (64, 256, 256), description="write box of one block (z, y, x)")
    chunk_shape: tuple[StrictInt, StrictInt, StrictInt] | None = Field(
        None, description="output chunks; default: the block shape")

    @field_validator("shape", "chunk_shape")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"expected positive sizes, found {list(v)}")
        return v


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="logical input -> dataset name or address")
    outputs: dict[str, str] = Field(default_factory=dict, description="logical output -> dataset name or address")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="address of the raw volume")
    output: str = Field(description="output directory (an OME-Zarr group holding every stage's volumes)")
    voxel_size: tuple[float, float, float] | None = Field(None, description="nm (z, y, x), each positive")
    blocks: BlocksConfig = Field(default_factory=BlocksConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    retries: int = Field(2, ge=0, description="retries of a failing block before the run stops")
    stages: list[StageConfig] = Field(min_length=1)
    # what the section-order check found while the run was built (`alignment.reordering.order_finding`), for its
    # `--json`; not a setting, not written to run.json, not read by any stage
    _section_order: dict = PrivateAttr(default_factory=dict)

    @field_validator("voxel_size")
    @classmethod
    def _positive_voxel_size(cls, v):
        if v is not None and not all(math.isfinite(s) and s > 0 for s in v):
            raise ValueError(f"expected positive sizes in nm, found {list(v)}")
        return v


def format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    found = first.get("input")
    found_text = "" if isinstance(found, dict) else f" (found {found!r})"
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    return f"{source}: {where}: {first['msg']}{found_text}{more}"


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (not "last wins")."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str) -> RunConfig:
    """Read and validate CONFIG.yaml; relative paths in it are taken from the file's directory."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; expected a YAML config file (`status` takes an output folder)")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader that refuses duplicate keys
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected a YAML config") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(path, e)) from None
    base = os.path.dirname(os.path.abspath(path))
    return config.model_copy(update={"input": rebased(config.input, base), "output": rebased(config.output, base)})


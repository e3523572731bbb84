"""A small `connectome run` case for cluster and fault tests: input volume, config file, output bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

TESTS_DIR = str(Path(__file__).resolve().parent)


def write_raw(path: Path, shape=(16, 128, 128), seed: int = 0) -> str:
    """A uint8 volume with structure (smooth blobs plus noise) saved as npz; returns its address."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    blobs = 90 + 60 * np.sin(y / 7.0 + z / 3.0) * np.cos(x / 9.0)
    raw = np.clip(blobs + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
    np.savez(path, raw=raw)
    return f"{path}#raw"


def write_config(path: Path, raw: str, output: Path, *, block=(8, 64, 64), cluster: dict | None = None,
                 stages: list[dict] | None = None, retries: int = 2) -> Path:
    config = {
        "input": raw,
        "output": str(output),
        "voxel_size": [40, 4, 4],
        "blocks": {"shape": list(block)},
        "retries": retries,
        "cluster": {"dashboard_address": ":0", **(cluster or {})},
        "stages": stages or [{"stage": "normalize", "params": {"sigma": 4.0}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (a zarr dataset), by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert ta.keys() == tb.keys(), f"files differ: {sorted(set(ta) ^ set(tb))[:5]}"
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:3]}"
    assert any(k.count("/") >= 3 for k in ta), "no chunk files were written"


def last_json(stdout: str) -> dict:
    """The JSON object a `--json` command printed (its last line)."""
    return json.loads(stdout.strip().splitlines()[-1])

"""A refused run leaves its output as it was (audit 43): a cluster that does not answer, tables no stage writes,
an input of the wrong kind; and run.json names only a run whose outputs were written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from connectome.cli.main import main
from connectome.io import create_volume

from tmpfs_fixture import cannot_mount

pytestmark = pytest.mark.timeout(240)
SHAPE = (16, 64, 64)
CHUNK = (8, 32, 32)


def _raw(tmp_path: Path) -> str:
    vol = create_volume(str(tmp_path / "in" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    vol.write(vol.box, np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8))
    return vol.address


def _config(tmp_path: Path, stages: list[dict], name: str = "run.yaml") -> str:
    cfg = {"input": str(tmp_path / "in" / "raw"), "output": str(tmp_path / "out"),
           "blocks": {"shape": list(CHUNK)}, "cluster": {"n_workers": 1, "dashboard_address": ":0"},
           "stages": stages}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _run(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["run", *argv, "--no-progress"])
    return code, [line for line in capsys.readouterr().err.strip().splitlines() if "dashboard" not in line]


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_cluster_that_does_not_answer_is_refused_before_anything_is_written(tmp_path, capsys):
    """`--cluster tcp://HOST:PORT` with no scheduler there: refused in one line, and neither a new output (its
    run.json, group and empty volumes were created first) nor an existing one (its run.json named the refused run's
    parameters) is changed."""
    _raw(tmp_path)
    normalize = _config(tmp_path, [{"stage": "normalize", "params": {"sigma": 4.0}}])
    code, err = _run(capsys, normalize, "--cluster", "tcp://127.0.0.1:1")
    assert code == 2 and len(err) == 1 and "no Dask scheduler answers" in err[0], err
    assert not (tmp_path / "out").exists()
    code, err = _run(capsys, normalize)
    assert code == 0, err
    before = _tree(tmp_path / "out")
    changed = _config(tmp_path, [{"stage": "normalize", "params": {"sigma": 9.0}}], "changed.yaml")
    code, err = _run(capsys, changed, "--overwrite", "--cluster", "tcp://127.0.0.1:1")
    assert code == 2 and len(err) == 1 and "no Dask scheduler answers" in err[0], err
    assert _tree(tmp_path / "out") == before


def test_tables_no_stage_writes_are_refused_before_anything_is_written(tmp_path, capsys):
    """relabel given fragments from elsewhere and no edges tables: one line naming the stage and the tables'
    folder, and no output (its group, run.json and segmentation volume were created first)."""
    _raw(tmp_path)
    fragments = create_volume(str(tmp_path / "in" / "labels"), SHAPE, np.uint64, CHUNK, (40.0, 4.0, 4.0))
    cfg = _config(tmp_path, [{"stage": "relabel", "inputs": {"fragments": fragments.address}}])
    code, err = _run(capsys, cfg)
    assert code == 2 and len(err) == 1, err
    assert "stage 'relabel'" in err[0] and str(tmp_path / "out" / "tables" / "edges") in err[0], err
    assert "no edges tables" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", ["fragments", "agglomerate"])
def test_a_raw_volume_given_as_affinities_is_refused(tmp_path, capsys, stage):
    """A 1-channel uint8 raw read as affinities ran to 8,051 junk fragments; now one line names the input, what
    it holds and what the stage expects."""
    _raw(tmp_path)
    inputs = {"affinities": "raw"}
    if stage == "agglomerate":
        inputs["fragments"] = create_volume(str(tmp_path / "in" / "labels"), SHAPE, np.uint64, CHUNK,
                                            (40.0, 4.0, 4.0)).address
    code, err = _run(capsys, _config(tmp_path, [{"stage": stage, "inputs": inputs}]))
    assert code == 2 and len(err) == 1, err
    line = err[0]
    assert f"stage {stage!r}: input affinities ({tmp_path / 'in' / 'raw'})" in line, line
    assert "has 1 channel" in line and "expected 3 channels of uint8" in line, line
    assert not (tmp_path / "out").exists()


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only in place (a bind mount over itself; root ignores permission bits)."""
    mounted: list[Path] = []

    def make(path: Path) -> None:
        for args in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]):
            done = subprocess.run(args, capture_output=True)
            if done.returncode != 0:
                if mounted:
                    subprocess.run(["umount", str(path)], check=False)
                cannot_mount(f"cannot make {path} read-only here: {done.stderr.decode().strip()}")
            if not mounted:
                mounted.append(path)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_run_json_names_a_run_only_once_its_outputs_are_written(tmp_path, capsys, read_only):
    """An --overwrite run with other parameters that cannot write its output volume: one line naming the file in
    full (it said `zarr.json`), and run.json still names the parameters the data on disk was made with (it named
    the refused run's)."""
    _raw(tmp_path)
    code, err = _run(capsys, _config(tmp_path, [{"stage": "normalize", "params": {"sigma": 4.0}}]))
    assert code == 0, err
    run_json = tmp_path / "out" / "run.json"
    recorded = run_json.read_bytes()
    read_only(tmp_path / "out" / "normalized")
    changed = _config(tmp_path, [{"stage": "normalize", "params": {"sigma": 9.0}}], "changed.yaml")
    code, err = _run(capsys, changed, "--overwrite")
    assert code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'out' / 'normalized'}/" in err[0] and "Read-only file system" in err[0], err
    assert run_json.read_bytes() == recorded
    assert json.loads(recorded)["stages"][0]["params"]["sigma"] == 4.0

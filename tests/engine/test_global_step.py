"""Global steps: run once before their stage's blocks, on a worker, with their own fingerprint and
done-marker; skipped when done, rerun when their tables were rewritten, refused when changed."""

import json

import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.markers import DoneMarkers
from connectome.engine.plan import check_plan_resumable, execute, plan_run
from connectome.io import open_volume

import stages_for_tests  # noqa: F401  (registers block-sum and fill-total)

SHAPE = (8, 64, 64)


def _config(tmp_path, scale=1):
    raw = np.random.default_rng(2).integers(0, 256, SHAPE, dtype=np.uint8)
    np.savez(tmp_path / "raw.npz", raw=raw)
    config = RunConfig(input=f"{tmp_path}/raw.npz#raw", output=str(tmp_path / "out"), voxel_size=(1, 1, 1),
                       blocks=BlocksConfig(shape=(8, 32, 32)),
                       stages=[StageConfig(stage="block-sum"), StageConfig(stage="fill-total", params={"scale": scale})])
    return config, int(raw.astype(np.int64).sum())


def _run(config, client, overwrite=False):
    plan = plan_run(config)
    check_plan_resumable(plan, overwrite)
    return {r.stage: r for r in execute(plan, client, overwrite=overwrite, progress=False)}


def _total(tmp_path):
    vol = open_volume(str(tmp_path / "out" / "total"))
    values = np.unique(vol.read(vol.box))
    assert values.size == 1
    return int(values[0])


def test_step_runs_once_then_is_skipped(tmp_path, client):
    config, expected = _config(tmp_path)
    reports = _run(config, client)
    assert list(reports) == ["block-sum", "total", "fill-total"]
    assert (reports["total"].blocks, reports["total"].ran) == (1, 1)
    assert reports["total"].summaries[0] == {"total": expected}
    assert _total(tmp_path) == expected
    assert DoneMarkers(config.output, "total").summary(0) == {"total": expected}
    again = _run(config, client)
    assert all(r.ran == 0 for r in again.values()) and again["total"].skipped == 1


def test_step_reruns_when_its_tables_were_rewritten(tmp_path, client):
    config, expected = _config(tmp_path)
    _run(config, client)
    total_file = tmp_path / "out" / "tables" / "total.json"
    total_file.write_text(json.dumps({"total": -1}))  # a stale result must not survive
    DoneMarkers(config.output, "block-sum").forget([2])  # as if the run had crashed before block 2
    reports = _run(config, client)
    assert reports["block-sum"].ran == 1 and reports["total"].ran == 1
    assert reports["fill-total"].ran == 4  # its blocks had read the old result
    assert json.loads(total_file.read_text()) == {"total": expected}


def test_changed_step_is_refused_unless_overwrite(tmp_path, client):
    config, expected = _config(tmp_path)
    _run(config, client)
    changed, _ = _config(tmp_path, scale=3)
    with pytest.raises(UserError, match="stage 'total' .* other settings: scale"):
        check_plan_resumable(plan_run(changed), overwrite=False)
    _run(changed, client, overwrite=True)
    assert _total(tmp_path) == 3 * expected


def test_tables_of_another_format_are_refused_with_one_line(tmp_path, client):
    config, _ = _config(tmp_path)
    _run(config, client)
    fmt = tmp_path / "out" / "tables" / "sums" / "format.json"
    record = json.loads(fmt.read_text())
    assert record["table"] == "sums" and record["version"] == 1 and record["producer"]["stage"] == "block-sum"
    fmt.write_text(json.dumps({**record, "version": 7}))
    one = config.model_copy(update={"stages": config.stages[1:]})
    with pytest.raises(UserError, match="holds sums tables of format 7, expected sums format 1"):
        _run(one, client)

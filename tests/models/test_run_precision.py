"""One precision per stage run: `auto` is resolved once on a worker, recorded in every block's done-marker, and a
resumed run keeps the precision its finished blocks used (also where `auto` resolves otherwise)."""

import numpy as np
import pytest

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.markers import DoneMarkers
from connectome.engine.plan import execute, plan_run
from connectome.io import open_volume
from connectome.models.inference import native_bfloat16
from connectome.models.run_precision import recorded_precision, run_precision

BLOCK, CHUNK = (16, 32, 32), (16, 32, 32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("precision")
    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=5).save(str(root), chunk_shape=CHUNK)
    return str(root / "raw")


def _affinities(raw, out, client, precision="auto"):
    config = RunConfig(input=raw, output=str(out), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=BLOCK, chunk_shape=CHUNK),
                       stages=[StageConfig(stage="affinities", params={"model": "synthetic", "tta": 1,
                                                                         "precision": precision})])
    execute(plan_run(config), client, progress=False)
    volume = open_volume(str(out / "affinities"))
    return volume.read(volume.box)


def _recorded(out) -> dict[int, str]:
    return {i: s.get("precision") for i, s in DoneMarkers(str(out), "affinities").summaries().items()}


def test_every_block_records_the_precision_auto_resolved_to_on_a_worker(raw, tmp_path, client):
    _affinities(raw, tmp_path / "a", client)
    here = "bfloat16" if native_bfloat16() else "float32"  # the local workers run on this machine's CPU
    assert _recorded(tmp_path / "a") == {0: here, 1: here, 2: here, 3: here}
    assert recorded_precision(str(tmp_path / "a"), "affinities") == here  # what `segment --json` reports


def test_a_resumed_run_keeps_the_precision_its_finished_blocks_used(raw, tmp_path, client):
    """Blocks 0 and 1 finished on a machine where auto meant the other precision (their markers say so):
    the blocks computed now use that precision too, so the volume is one precision, not a mix."""
    here = "bfloat16" if native_bfloat16() else "float32"
    other = "float32" if here == "bfloat16" else "bfloat16"
    out = tmp_path / "resumed"
    _affinities(raw, out, client)
    markers = DoneMarkers(str(out), "affinities")
    markers.forget([0, 1, 2, 3])
    for i in (0, 1):
        markers.mark(i, {"precision": other})
    resumed = _affinities(raw, out, client)
    assert _recorded(out) == {0: other, 1: other, 2: other, 3: other}
    assert recorded_precision(str(out), "affinities") == other
    as_other = _affinities(raw, tmp_path / "other", client, precision=other)
    as_here = _affinities(raw, tmp_path / "here", client, precision=here)
    later = np.s_[:, :, 32:, :]  # blocks 2 and 3 (y 32-63), computed by the resumed run
    np.testing.assert_array_equal(resumed[later], as_other[later])
    assert not np.array_equal(as_other[later], as_here[later])  # the two precisions differ on this volume


def test_run_precision_rules():
    def worker(fn):
        return "float32"

    assert run_precision("bfloat16", None, worker, dict) == "bfloat16"  # a named precision is kept
    assert run_precision("auto", None, worker, dict) == "float32"  # nothing finished: the worker's answer
    assert run_precision("auto", "cpu", worker, lambda: {0: {"precision": "bfloat16"}, 3: {}}) == "bfloat16"
    # blocks of a run made before precisions were recorded, or already mixed: the worker decides
    assert run_precision("auto", None, worker, lambda: {0: {}, 1: {}}) == "float32"
    assert run_precision("auto", None, worker, lambda: {0: {"precision": "bfloat16"},
                                                          1: {"precision": "float32"}}) == "float32"

"""FFNs that read an affinity model's mean affinity instead of the raw image (`ffn.inputs`)."""

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.ffn.canvas import CanvasSettings, segment_volume
from connectome.ffn.inputs import affinity_model, mean_affinity
from connectome.ffn.registry import load_model
from connectome.io import open_volume
from connectome.metrics.voi import voi

from ffn_handset import saved_handset_model


def test_input_specs():
    assert affinity_model("raw") is None
    assert affinity_model("affinities:fib-10nm") == "fib-10nm"
    for bad in ("affinities:", "affinity:fib-10nm", "boundaries"):
        with pytest.raises(UserError, match="expected 'raw' or 'affinities:MODEL'"):
            affinity_model(bad)


def test_mean_affinity_rounds_to_nearest():
    stored = np.array([[0, 0, 0, 255, 1], [0, 1, 1, 255, 1], [0, 0, 1, 255, 0]], np.uint8).reshape(3, 1, 1, 5)
    assert mean_affinity(stored).ravel().tolist() == [0, 0, 1, 255, 1]  # 0/3, 1/3, 2/3, 765/3, 2/3
    with pytest.raises(ValueError, match=r"\(3, z, y, x\)"):
        mean_affinity(stored[:2])


def _segment(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured


def test_segment_runs_the_affinity_model_first_and_the_ffn_reads_its_mean(tmp_path, capsys, client):
    """The hand-set network with input `affinities:synthetic` floods where the mean affinity is above one half:
    `segment --method ffn` runs `affinities` first, and its result is one FFN pass over the stored mean affinity."""
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=11).save(str(tmp_path / "v"), chunk_shape=(16, 64, 64))
    raw = str(tmp_path / "v" / "raw")
    model = saved_handset_model(tmp_path, input="affinities:synthetic")
    argv = ["segment", raw, str(tmp_path / "out"), "--method", "ffn", "--model", model, "--block-shape", "16", "64",
            "64", "--workers", "2", "--no-progress", "--json"]
    code, captured = _segment(capsys, argv)
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert [s["stage"] for s in summary["stages"]] == ["affinities", "ffn", "ffn_reconcile", "ffn_relabel"]
    affs = open_volume(str(tmp_path / "out" / "affinities"))
    image = mean_affinity(affs.read(affs.box))
    seg_vol = open_volume(summary["segmentation"])
    seg = seg_vol.read(seg_vol.box)
    net, info = load_model(model)
    assert info.input == "affinities:synthetic"
    expected, _ = segment_volume(net, info, image, CanvasSettings(info.move_threshold, info.segment_threshold,
                                                                  info.min_size))
    assert voi(seg, expected) == (0.0, 0.0)
    labels = open_volume(str(tmp_path / "v" / "labels"))
    truth = labels.read(labels.box)
    assert len(np.unique(seg)) >= 0.5 * len(np.unique(truth))  # it follows the cells, not one flood
    split, merge = voi(seg, truth)
    assert split + merge < 1.5, (split, merge)


def test_an_affinity_network_without_affinities_and_a_raw_network_with_them_are_refused(tmp_path, capsys):
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import plan_run
    from connectome.io import create_volume

    vol = create_volume(str(tmp_path / "raw"), (8, 32, 32), np.uint8, (8, 32, 32), (8, 8, 8))
    vol.write(vol.box, np.zeros((8, 32, 32), np.uint8))
    reads_affs = saved_handset_model(tmp_path / "a", input="affinities:synthetic")
    reads_raw = saved_handset_model(tmp_path / "r")
    cases = [
        ([StageConfig(stage="ffn", params={"model": reads_affs})], "reads the affinities of 'synthetic'"),
        ([StageConfig(stage="affinities", params={"model": "synthetic"}),
          StageConfig(stage="ffn", params={"model": reads_raw}, inputs={"affinities": "affinities"})],
         "reads the raw image, not the input `affinities`"),
    ]
    for stages, expected in cases:
        config = RunConfig(input=vol.address, output=str(tmp_path / "o"), blocks=BlocksConfig(shape=(8, 32, 32)),
                           stages=stages)
        with pytest.raises(UserError, match=expected):
            plan_run(config, record_config=False)

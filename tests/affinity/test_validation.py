"""Training's validation segments as `connectome segment` does; 2-d-trained models warn on use."""

import json

import numpy as np
import pytest

from connectome.affinity.segment import segmentation_config, two_d_model_warning, warn_if_two_d_model
from connectome.affinity.stages import WatershedParams
from connectome.affinity.validation import AFF_HIGH, AFF_LOW, segment_affinities, voi_over_thresholds
from connectome.cli.main import main
from connectome.io import create_volume, open_volume
from connectome.models.registry import load_model, read_info, resolve_model_path


def _segment(capsys, raw, out, model, block, *extra):
    argv = ["segment", raw, str(out), "--model", model, "--block-shape", *map(str, block),
            "--workers", "1", "--no-progress", "--json", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def _read(address):
    vol = open_volume(address)
    return vol.read(vol.box)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when `a` and `b` put every voxel pair in one segment alike (0 = background in both)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a != 0], b[b != 0]], axis=1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


def test_same_partition_helper():
    a = np.array([[0, 1, 1, 2]])
    assert _same_partition(a, np.array([[0, 7, 7, 3]]))
    assert not _same_partition(a, np.array([[0, 7, 7, 7]]))
    assert not _same_partition(a, np.array([[0, 7, 3, 3]]))
    assert not _same_partition(a, np.array([[5, 7, 7, 3]]))


def test_validation_uses_the_segment_stage_defaults():
    assert (AFF_LOW, AFF_HIGH) == (WatershedParams().aff_low, WatershedParams().aff_high)


@pytest.fixture(scope="module")
def synthetic_small(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("synthval")
    # not a multiple of the model's divisor: the padding must match too
    generate((20, 72, 88), (8.0, 8.0, 8.0), seed=5).save(str(root), chunk_shape=(20, 72, 88))
    return root


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_validation_segmentation_equals_connectome_segment(synthetic_small, tmp_path, capsys, threshold):
    """The in-memory validation chain (mean scoring, as training validates) and `connectome segment --scoring
    mean` (one block) give the same partition."""
    from connectome.models.inference import predict_volume

    raw_address = str(synthetic_small / "raw")
    info = read_info(resolve_model_path("synthetic"))
    t = info.threshold if threshold is None else threshold
    assert t is not None
    extra = ["--scoring", "mean"] + ([] if threshold is None else ["--threshold", str(threshold)])
    summary, _ = _segment(capsys, raw_address, tmp_path / "seg", "synthetic", (24, 96, 96), *extra)
    assert summary["threshold"] == t
    written = _read(summary["segmentation"])

    raw = _read(raw_address)
    affs = predict_volume(load_model("synthetic", "cpu"), raw, precision="auto")  # segment's default
    stored = _read(summary["affinities"])
    np.testing.assert_array_equal(np.rint(affs * 255).astype(np.uint8), stored)  # same prediction
    [(t_mem, seg)] = list(segment_affinities(affs, [t]))
    assert t_mem == t
    assert len(np.unique(seg)) > 3  # a real segmentation, not one or two segments
    assert _same_partition(seg, written)

    # the scores training records are the VOI of that segmentation
    from connectome.metrics import voi

    gt = _read(str(synthetic_small / "labels"))
    [score] = voi_over_thresholds(affs, gt, [t])
    split, merge = voi(written, gt)
    assert score["voi_split"] == pytest.approx(split, abs=1e-9)
    assert score["voi_merge"] == pytest.approx(merge, abs=1e-9)


def test_segment_affinities_of_perfect_affinities_recovers_the_labels():
    from connectome.affinity.targets import affinities_from_labels

    labels = np.zeros((4, 12, 12), np.uint64)
    labels[:, :, :6] = 3
    labels[:, :, 6:] = 9  # two touching objects, no boundary gap
    affs, _ = affinities_from_labels(labels, [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    assert affs[2, :, :, 6].max() == 0  # the targets cut between different ids
    for t, seg in segment_affinities(affs.astype(np.float32), [0.1, 0.5, 0.9]):
        assert _same_partition(seg, labels), t


def test_two_d_model_warning_names_the_model():
    sstem = read_info(resolve_model_path("sstem-2d"))
    assert sstem.z_affinity == "from_xy"
    assert read_info(resolve_model_path("sstem")).z_affinity == "learned"
    message = two_d_model_warning(sstem)
    assert message is not None and "\n" not in message
    assert "sstem-2d was trained on 2-D labels only" in message and "neighbouring sections" in message
    assert two_d_model_warning(read_info(resolve_model_path("synthetic"))) is None


def test_segmentation_config_warns_once_for_a_two_d_model(tmp_path, capsys):
    raw = create_volume(str(tmp_path / "raw"), (4, 64, 64), np.uint8, (4, 64, 64), (50, 4, 4))
    segmentation_config(raw.address, str(tmp_path / "o"), "sstem-2d")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model sstem-2d was trained on 2-D labels only" in err[0]
    segmentation_config(raw.address, str(tmp_path / "o2"), "synthetic")
    assert capsys.readouterr().err == ""


def test_warn_if_two_d_model_writes_to_the_stream(capsys):
    import io

    stream = io.StringIO()
    assert warn_if_two_d_model(read_info(resolve_model_path("sstem-2d")), stream) is not None
    assert stream.getvalue().count("\n") == 1
    assert warn_if_two_d_model(read_info(resolve_model_path("fib-10nm")), stream) is None
    assert stream.getvalue().count("\n") == 1


def test_segment_command_prints_the_warning_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    raw = create_volume(str(tmp_path / "raw"), (4, 64, 64), np.uint8, (4, 64, 64), (50, 4, 4))
    raw.write(raw.box, rng.integers(0, 256, (4, 64, 64), dtype=np.uint8))
    _, err = _segment(capsys, raw.address, tmp_path / "seg", "sstem-2d", (4, 64, 64))
    assert not [line for line in _segment(capsys, raw.address, tmp_path / "seg3d", "sstem", (4, 64, 64))[1].splitlines()
                if "trained on 2-D labels only" in line]  # sstem learned its z affinity from 3-D labels
    lines = [line for line in err.splitlines() if "trained on 2-D labels only" in line]
    assert len(lines) == 1, err


def test_a_model_without_a_validated_threshold_is_said_once(tmp_path, capsys):
    """A model trained without --val-raw records threshold null; segment merged at 0.5 without a word."""
    import json
    import shutil

    shipped = resolve_model_path("synthetic")
    mine = tmp_path / "mine.pt"
    shutil.copy(shipped, mine)
    meta = json.loads(shipped.with_suffix(".json").read_text())
    meta["agglomeration"] = dict(meta["agglomeration"], scoring="mean", threshold=None)
    mine.with_suffix(".json").write_text(json.dumps(meta))
    raw = create_volume(str(tmp_path / "raw"), (4, 64, 64), np.uint8, (4, 64, 64), (8, 8, 8))
    segmentation_config(raw.address, str(tmp_path / "o"), str(mine))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no validated threshold" in err[0] and "--threshold" in err[0], err
    segmentation_config(raw.address, str(tmp_path / "o2"), str(mine), threshold=0.4)
    assert capsys.readouterr().err == ""

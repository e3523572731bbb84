"""`connectome train edges`: input it would find only after predicting and fitting (a traceback then), or not at all,
is refused in one line before anything is predicted (lab walk-through)."""

import numpy as np
import pytest

from connectome.cli.main import main


def _args(tmp_path, *extra, model="synthetic", out=None):
    a = f"{tmp_path}/v.npz"
    return ["train", "edges", "--model", model, "--raw", f"{a}#raw[0:4]", "--labels", f"{a}#labels[0:4]",
            "--val-raw", f"{a}#raw[4:8]", "--val-labels", f"{a}#labels[4:8]",
            "--out", str(out or tmp_path / "e.json"), *extra]


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", raw=rng.integers(0, 255, (8, 32, 32), dtype=np.uint8),
             labels=(np.arange(8 * 32 * 32).reshape(8, 32, 32) // 64 % 7 + 1).astype(np.uint32),
             resolution_zyx_nm=np.array([8, 8, 8]))
    return tmp_path


@pytest.mark.parametrize("option", [["--steps", "0"], ["--hidden", "32", "0"]])
def test_a_count_below_one_is_refused_by_argparse(volume, capsys, option):
    """--steps 0 failed after the fit with UnboundLocalError, --hidden 0 with a numpy ValueError."""
    assert main(_args(volume, *option)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and option[0] in err and "'0'" in err, err


def test_a_folder_as_out_is_refused_before_predicting(volume, capsys):
    """It failed with IsADirectoryError once the affinities were predicted and the classifier fitted."""
    (volume / "models").mkdir()
    assert main(_args(volume, "--steps", "5", out=volume / "models")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a folder; expected the classifier's file" in err, err


def test_data_of_another_voxel_size_than_the_model_is_refused(volume, capsys):
    """`sstem` (40 x 4 x 4 nm) was fitted on 8 nm data without a word; `segment` refuses to run it there."""
    assert main(_args(volume, "--steps", "5", model="sstem")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model sstem: trained on [40.0, 4.0, 4.0] nm voxels" in err, err
    assert not (volume / "e.json").exists()


def test_bad_validation_labels_are_refused_before_predicting(volume, capsys):
    """They were read only after the training volumes' affinities were predicted and the classifier fitted; now the
    validation volume comes first: nothing was predicted (the cache holds nothing) when they are refused."""
    args = _args(volume, "--steps", "5", "--cache", str(volume / "cache"))
    args[args.index("--val-labels") + 1] = f"{volume}/v.npz#labels[5:8]"  # another shape than --val-raw
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels shape" in err, err
    assert not (volume / "cache").exists() or not any((volume / "cache").iterdir())
    assert not (volume / "e.json").exists()

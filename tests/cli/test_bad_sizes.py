"""A zero, negative or non-numeric size given on the command line is refused by argparse in one line naming the
option (exit code 2, no traceback), before anything is read or written."""

import pytest

from connectome.cli.main import main

GOOD = {"--voxel-size": ["40", "4", "4"], "--block-shape": ["8", "64", "64"], "--chunk-shape": ["8", "64", "64"]}
COMMANDS = {
    "segment": (["RAW", "OUT"], ["--voxel-size", "--block-shape", "--chunk-shape", "--workers", "--ffn-scale",
                                 "--ffn-batch"]),
    "align": (["RAW", "OUT"], ["--voxel-size", "--block-shape", "--chunk-shape", "--workers"]),
    "ingest": (["RAW", "OUT/raw"], ["--voxel-size", "--block-shape", "--chunk-shape"]),
    "reconstruct": (["RAW", "OUT"], ["--voxel-size", "--block-shape", "--workers"]),
    "synapses": (["RAW", "OUT", "--segmentation", "SEG"], ["--voxel-size", "--block-shape"]),
    "tissue": (["RAW", "OUT"], ["--voxel-size", "--block-shape", "--chunk-shape"]),
    "evaluate": (["--seg", "SEG", "--gt", "GT"], ["--voxel-size", "--block-shape"]),
    "synth": (["OUT"], ["--voxel-size", "--chunk-shape", "--shape"]),
    "train": (["affinities", "--raw", "RAW", "--labels", "LABELS", "--name", "x", "--out", "OUT"],
              ["--iterations", "--batch-size", "--patch", "--val-every", "--threads"]),
}
ONE_VALUE = ("--workers", "--ffn-batch", "--iterations", "--batch-size", "--val-every", "--threads")
CASES = [(command, option, bad) for command, (_, options) in COMMANDS.items() for option in options
         for bad in ("0", "-4", "nan" if option == "--voxel-size" else "2.5")]


@pytest.mark.parametrize("command, option, bad", CASES)
def test_a_bad_size_is_refused_in_one_line(tmp_path, capsys, command, option, bad):
    positional, _ = COMMANDS[command]
    argv = [command, *[str(tmp_path / a) if a.isupper() or "/" in a else a for a in positional]]
    if option in ONE_VALUE:
        value = [bad]
    else:
        value = list(GOOD.get(option, ["8", "64", "64"]))
        value[-1] = bad  # the last of the three
    code = main([*argv, option, *value])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and repr(bad) in lines[0], err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["segment", "reconstruct"])
@pytest.mark.parametrize("bad", ["1.5", "-0.1", "x"])
def test_a_threshold_outside_0_to_1_is_refused_in_one_line(tmp_path, capsys, command, bad):
    code = main([command, str(tmp_path / "RAW"), str(tmp_path / "OUT"), "--threshold", bad])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--threshold" in err and f"expected a number from 0 to 1, found {bad!r}" in err
    assert list(tmp_path.iterdir()) == []

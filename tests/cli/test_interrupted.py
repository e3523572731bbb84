"""Ctrl-C: one line saying what the interrupted command leaves (resume only where the command resumes)."""

import pytest

import connectome.cli.main
import connectome.cli.segment
import connectome.cli.train
from connectome.cli.main import main


@pytest.mark.parametrize("module, argv, expected", [
    (connectome.cli.segment, ["segment", "RAW", "OUT"], "connectome segment: interrupted; re-run the same command "
                                                        "to resume"),
    (connectome.cli.train, ["train", "affinities", "--raw", "R", "--labels", "L", "--name", "n", "--out", "o"],
     "connectome train: interrupted; training does not resume: the best checkpoint validated so far stays in --out"),
    # an edge classifier is written only at the end: it said a checkpoint stayed in --out (lab walk-through)
    (connectome.cli.train, ["train", "edges", "--model", "m", "--raw", "R", "--labels", "L", "--val-raw", "V",
                            "--val-labels", "W", "--out", "o.json"],
     "connectome train: interrupted; nothing was written: the classifier is written once fitted"),
])
def test_an_interrupt_says_in_one_line_what_is_left(monkeypatch, capsys, module, argv, expected):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    # in this process: not the exit-on-a-second-signal handlers and silenced logging an interrupted command sets
    monkeypatch.setattr(connectome.cli.main, "_quiet_interrupt", lambda: None)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err

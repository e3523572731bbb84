"""`connectome demo --out` naming a file is refused in one line before anything is written."""

from connectome.cli.main import main


def test_demo_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        assert main(["demo", "--out", str(out)]) == 2  # before: NotADirectoryError with a traceback
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "expected a folder" in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "x"


def test_demo_rerun_on_a_finished_output_starts_no_cluster_and_quotes_no_throughput(tmp_path, capsys, monkeypatch,
                                                                                     client):
    from connectome.cli import demo

    monkeypatch.setattr(demo, "SHAPE", (16, 64, 64))  # the demo's own 64 x 256 x 256 is slow for a test
    monkeypatch.setattr(demo, "BLOCK_SHAPE", (16, 32, 32))  # 4 blocks: seams all the same
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--cluster", client.scheduler.address, "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "Mvx/s for the segmentation stages, 4 blocks" in first
    # no scheduler listens at this address: a re-run that reached for a cluster would be refused (exit 2)
    assert main(["demo", "--out", out, "--cluster", "tcp://127.0.0.1:1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "(written before)" in lines[0], lines[0]
    assert "nothing left to do: every stage finished before; 4 blocks" in lines[1], lines[1]
    assert "Mvx/s" not in captured.out and "dask dashboard" not in captured.out + captured.err
    assert "VOI split" in lines[2]  # the scores are still given

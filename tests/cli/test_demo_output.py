"""`connectome demo --out` naming a file is refused in one line before anything is written."""

from connectome.cli.main import main


def test_demo_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        assert main(["demo", "--out", str(out)]) == 2  # before: NotADirectoryError with a traceback
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "expected a folder" in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "x"

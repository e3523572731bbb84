"""`connectome graph` on a malformed synapses.csv or segments.csv: one line naming the file, the line and the
column (or the columns expected and found), exit 2, and the graph already written is left as it was (audit43
M08, M10, M12)."""

import os

import pytest

from connectome.cli.main import main
from connectome.neurites.types import SEGMENT_COLUMNS, read_segments, write_segments
from connectome.synapses.table import write_synapses

from graph_tables import segment_rows, synapse_rows


@pytest.fixture
def out(tmp_path, capsys):
    """An output directory with both tables and the graph built from them."""
    write_synapses(str(tmp_path / "synapses.csv"), synapse_rows())
    write_segments(str(tmp_path / "segments.csv"), segment_rows())
    assert main(["graph", str(tmp_path), "--no-plots"]) == 0
    capsys.readouterr()
    return tmp_path


def _refused(out, capsys) -> str:
    before = {name: (out / name).read_bytes() for name in ("graph_edges.csv", "graph_nodes.csv", "graph.graphml")}
    code = main(["graph", str(out), "--no-plots"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "" and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing already written is touched
    return lines[0]


def _edit_line(path, number, old, new):
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    path.write_text("".join(lines))


def test_a_garbage_line_in_synapses_csv(out, capsys):
    with open(out / "synapses.csv", "a") as f:
        f.write('garbage,"x\n')
    line = _refused(out, capsys)
    assert str(out / "synapses.csv") in line and "line 9" in line and "expected 11 columns" in line
    assert "found 2" in line


@pytest.mark.parametrize("column, found", [("pre", "1.5"), ("post", "seven"), ("score", "high"), ("z", "0.5")])
def test_a_value_that_is_not_a_number_in_synapses_csv(out, capsys, column, found):
    path = out / "synapses.csv"
    header = path.read_text().splitlines()[0].split(",")
    row = path.read_text().splitlines()[1].split(",")
    row[header.index(column)] = found
    _edit_line(path, 2, path.read_text().splitlines()[1], ",".join(row))
    line = _refused(out, capsys)
    assert str(path) in line and "line 2" in line and f"column {column!r}" in line and repr(found) in line


@pytest.mark.parametrize("text", ["x,y\n", "x,y\n1,2\n", ""])
def test_a_segments_csv_with_other_columns_is_refused(out, capsys, text):
    (out / "segments.csv").write_text(text)
    line = _refused(out, capsys)
    assert str(out / "segments.csv") in line and ", ".join(SEGMENT_COLUMNS) in line
    assert ("found x, y" if text else "found none") in line


def test_a_value_that_is_not_a_number_in_segments_csv(out, capsys):
    path = out / "segments.csv"
    _edit_line(path, 3, "dendrite,1.0000", "dendrite,sure")
    line = _refused(out, capsys)
    assert str(path) in line and "line 3" in line and "column 'class_score'" in line and "'sure'" in line
    _edit_line(path, 3, "dendrite,sure", "dendrite,1.0000")
    _edit_line(path, 2, "5,", "-5,")
    line = _refused(out, capsys)
    assert "line 2" in line and "column 'id'" in line and "'-5'" in line


def test_an_older_segment_table_without_morphology_still_reads(tmp_path):
    """Tables written before 2026-12-04 have the first nine columns only; empty morphology cells are NaN."""
    path = tmp_path / "segments.csv"
    path.write_text(",".join(SEGMENT_COLUMNS[:9]) + "\n5,100,axon,0.9,1,2,3,0,1\n\n")
    table = read_segments(str(path))
    assert table["id"].tolist() == [5] and table["class"].tolist() == ["axon"] and "radius_nm" not in table
    path.write_text(",".join(SEGMENT_COLUMNS) + "\n5,100,axon,0.9,1,2,3,0,1,,0,,,\n")
    table = read_segments(str(path))
    assert os.path.isfile(path) and str(table["branch_share"][0]) == "nan"

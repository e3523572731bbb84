"""read_synapses: a malformed table is one line naming the file, the line and the column (audit43 M08/M12)."""

import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.synapses.table import COLUMNS, read_synapses

HEADER = ",".join(COLUMNS)
ROW = "1,8,21,14,3,7,0.968195,1,1432,733184,0"


def _table(tmp_path, *lines, raw: bytes | None = None):
    path = tmp_path / "synapses.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_good_table_with_a_blank_line_reads(tmp_path):
    t = read_synapses(_table(tmp_path, HEADER, ROW, "", ROW[:-1] + "1"))
    assert t["pre"].dtype == np.uint64 and t["pre"].tolist() == [3, 3] and t["z"].dtype == np.int64
    assert t["autapse"].tolist() == [False, True]


@pytest.mark.parametrize("row, line, column, found", [
    (ROW.replace(",3,7,", ",1.5,7,"), 2, "pre", "1.5"),
    (ROW.replace(",3,7,", ",3,-7,"), 2, "post", "-7"),
    (ROW.replace(",3,7,", ",3,99999999999999999999999,"), 2, "post", "99999999999999999999999"),
    (ROW[:-1] + "maybe", 2, "autapse", "maybe"),
    (ROW.replace("1432", "nan"), 2, "size_voxels", "nan"),
])
def test_a_bad_value_names_line_and_column(tmp_path, row, line, column, found):
    path = _table(tmp_path, HEADER, row)
    with pytest.raises(UserError) as e:
        read_synapses(path)
    assert str(e.value).startswith(f"{path}: line {line}, column {column!r}:") and repr(found) in str(e.value)


def test_a_short_row_and_a_broken_quote_name_the_line(tmp_path):
    path = _table(tmp_path, HEADER, ROW, ROW, 'garbage,"x')
    with pytest.raises(UserError, match=r"synapses.csv: line 4: expected 11 columns .* found 2"):
        read_synapses(path)


def test_bytes_that_are_not_text(tmp_path):
    path = _table(tmp_path, raw=(HEADER + "\n").encode() + b"\xff\xfe\x00garbage\n")
    with pytest.raises(UserError, match="synapses.csv: expected a synapse table \\(UTF-8 CSV text\\)"):
        read_synapses(path)

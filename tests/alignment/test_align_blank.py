"""Blank regions inside a section (a blacked-out corner) are flagged OUTSIDE in `defects`, blockwise as one block."""

from __future__ import annotations

import numpy as np
import pytest
from stacks import align, clean_stack, write_stack

from connectome.alignment.defects import OUTSIDE_FLAG
from connectome.alignment.synthetic import Distortion, distort
from connectome.alignment.warp import source_positions
from connectome.io import open_volume

pytestmark = pytest.mark.timeout(300)
SECTIONS, SIDE, MARGIN, CORNER, HOLE = 6, 192, 48, 60, (110, 140)


def test_a_black_corner_is_flagged_outside_in_defects(tmp_path, client):
    d = distort(clean_stack(SECTIONS, SIDE + 2 * MARGIN), MARGIN, Distortion(max_shift=20, max_rotation=1), seed=3)
    raw = d.raw.copy()
    raw[2, :CORNER, :CORNER] = 0  # a lab's blacked-out corner in the stored section
    raw[4, HOLE[0]:HOLE[1], HOLE[0]:HOLE[1]] = 0  # a hole away from the section's edges
    address = write_stack(str(tmp_path / "raw"), raw)
    runs = {}
    for name, block, solve in (("blocks", (16, 64, 64), {}), ("one", (16, 512, 512), {}),
                               ("off", (16, 512, 512), {"blank": False}),
                               ("no_margins", (16, 512, 512), {"outside": False})):
        _, _, t = align(address, str(tmp_path / name), client, block=block, solve=solve)
        mask = open_volume(str(tmp_path / name / "defects"))
        runs[name] = mask.read(mask.box)
    np.testing.assert_array_equal(runs["blocks"], runs["one"])  # 9 blocks per section find what one finds
    qy, qx = source_positions(t["fields"][2], (t["nodes_y"], t["nodes_x"]), (slice(0, SIDE), slice(0, SIDE)))
    inside = (qy > -0.5) & (qx > -0.5) & (qy < SIDE - 0.5) & (qx < SIDE - 0.5)
    in_corner = inside & (qy < CORNER - 1.5) & (qx < CORNER - 1.5)  # all four bilinear sources black
    beyond = inside & ((qy > CORNER + 0.5) | (qx > CORNER + 0.5))
    assert in_corner.sum() > 1000
    flagged = runs["one"][2] == OUTSIDE_FLAG
    assert flagged[in_corner].all() and not flagged[beyond].any()
    assert not (runs["off"][2] == OUTSIDE_FLAG)[in_corner].any()  # `blank: false`: the corner is not flagged
    for z in (0, 1, 3):  # other sections: only their margins, as before
        np.testing.assert_array_equal(runs["one"][z], runs["off"][z])
    # the hole, inside the section: flagged where its pixels are all black, nothing around it
    qy, qx = source_positions(t["fields"][4], (t["nodes_y"], t["nodes_x"]), (slice(0, SIDE), slice(0, SIDE)))
    lo, hi = HOLE
    in_hole = (qy > lo + 1.5) & (qy < hi - 1.5) & (qx > lo + 1.5) & (qx < hi - 1.5)
    near = (qy > lo - 1.5) & (qy < hi + 0.5) & (qx > lo - 1.5) & (qx < hi + 0.5)
    flagged = runs["one"][4] == OUTSIDE_FLAG
    assert in_hole.sum() > 500 and flagged[in_hole].all()
    np.testing.assert_array_equal(flagged & near, (runs["one"][4] != runs["off"][4]))  # the hole is all it adds
    # `outside: false`: the margins stay unflagged (they are 0 in `aligned`, and were found blank in a block that
    # also held a black pixel inside its section: here the one block of section 4, with the hole); the corner and
    # the hole are flagged as before
    margins = (runs["one"] == OUTSIDE_FLAG) & (runs["off"] == OUTSIDE_FLAG)
    assert margins.any() and not runs["no_margins"][margins].any()
    np.testing.assert_array_equal(runs["no_margins"][4] == OUTSIDE_FLAG, flagged & near)

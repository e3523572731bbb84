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
SECTIONS, SIDE, MARGIN, CORNER = 6, 192, 48, 60


def test_a_black_corner_is_flagged_outside_in_defects(tmp_path, client):
    d = distort(clean_stack(SECTIONS, SIDE + 2 * MARGIN), MARGIN, Distortion(max_shift=20, max_rotation=1), seed=3)
    raw = d.raw.copy()
    raw[2, :CORNER, :CORNER] = 0  # a lab's blacked-out corner in the stored section
    address = write_stack(str(tmp_path / "raw"), raw)
    runs = {}
    for name, block, solve in (("blocks", (16, 64, 64), {}), ("one", (16, 512, 512), {}),
                               ("off", (16, 512, 512), {"blank": False})):
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

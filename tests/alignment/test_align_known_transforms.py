"""Alignment of stacks with known distortions: translations up to 30 px, rotations up to 2 degrees,
a smooth elastic warp of 3 px; defects inserted are flagged and skipped without a jump.

Residuals are measured where every section shows content at least half a patch inside it (nearer
the edges of the sections' overlap there is nothing to match, only extrapolation)."""

from __future__ import annotations

import numpy as np
import pytest
from stacks import align, clean_stack, write_stack

from connectome.alignment.defects import BLANK, MISSING, OUTSIDE_FLAG, REASONS, REGION_FLAG, SECTION_FLAG, UNMATCHED
from connectome.alignment.synthetic import Distortion, distort, residuals
from connectome.alignment.warp import source_positions
from connectome.io import open_volume

pytestmark = pytest.mark.timeout(300)
MARGIN = 48
BORDER = 32  # residuals where every section shows content at least half a patch inside it


SECTIONS, SIDE = 6, 192


@pytest.fixture(scope="module")
def rigid():
    clean = clean_stack(SECTIONS, SIDE + 2 * MARGIN)
    return distort(clean, MARGIN, Distortion(max_shift=30, max_rotation=2), seed=1)


@pytest.fixture(scope="module")
def elastic(tmp_path_factory, client):
    clean = clean_stack(SECTIONS, SIDE + 2 * MARGIN, seed=4)
    d = distort(clean, MARGIN, Distortion(max_shift=30, max_rotation=2, elastic=3, wavelength=256), seed=2)
    root = tmp_path_factory.mktemp("elastic")
    _, _, t = align(write_stack(str(root / "raw"), d.raw), str(root / "out"), client)
    return d, t


def nodes_of(t):
    return (t["nodes_y"], t["nodes_x"])


def test_translations_and_rotations_recovered(rigid, tmp_path, client):
    # the distortion is strong: relative shifts of tens of pixels, rotations near 2 degrees
    assert np.abs(np.diff(rigid.shifts, axis=0)).max() > 20
    assert np.rad2deg(np.abs(rigid.rotations)).max() > 1.0
    raw = write_stack(str(tmp_path / "raw"), rigid.raw)
    _, _, t = align(raw, str(tmp_path / "out"), client)
    r = residuals(rigid, t["fields"], nodes_of(t), border=BORDER, step=2)
    assert r.size > 500
    assert np.median(r) < 0.3, np.median(r)
    assert r.max() < 1.0, r.max()
    assert not t["section_flags"].any() and not t["regions"].any()  # a clean stack: nothing flagged
    # without the alignment the same pixels are misaligned by many pixels
    unaligned = residuals(rigid, np.zeros_like(t["fields"]), nodes_of(t), border=BORDER, step=2)
    assert np.median(unaligned) > 10
    # the aligned volume is the raw volume sampled through the fields: neighbours now agree
    aligned = open_volume(str(tmp_path / "out" / "aligned"))
    assert aligned.dtype == np.uint8 and aligned.shape == rigid.raw.shape
    a = aligned.read(aligned.box).astype(float)
    centre = (slice(None), slice(64, 128), slice(64, 128))
    before = np.abs(np.diff(rigid.raw.astype(float)[centre], axis=0)).mean()
    after = np.abs(np.diff(a[centre], axis=0)).mean()
    assert after < 0.5 * before
    # the margins the warp leaves (source outside the section) are 0 and flagged OUTSIDE in `defects`, nothing else
    mask = open_volume(str(tmp_path / "out" / "defects"))
    m = mask.read(mask.box)
    full = (slice(0, SIDE), slice(0, SIDE))
    for z in range(SECTIONS):
        qy, qx = source_positions(t["fields"][z], nodes_of(t), full)
        outside = (qy <= -0.5) | (qy >= SIDE - 0.5) | (qx <= -0.5) | (qx >= SIDE - 0.5)
        np.testing.assert_array_equal(m[z] == OUTSIDE_FLAG, outside, err_msg=f"section {z}")
        assert not a[z][outside].any()
    assert 0.01 < (m == OUTSIDE_FLAG).mean() < 0.3 and set(np.unique(m)) == {0, OUTSIDE_FLAG}
    # `outside: false`, the behaviour before the option: the same alignment, no flag
    align(raw, str(tmp_path / "kept"), client, solve={"outside": False})
    kept = open_volume(str(tmp_path / "kept" / "defects"))
    assert not kept.read(kept.box).any()


def test_elastic_warp_recovered(elastic):
    d, t = elastic
    r = residuals(d, t["fields"], nodes_of(t), border=BORDER, step=2)
    assert r.size > 500
    assert np.median(r) < 0.3, np.median(r)
    # the worst pixel lies near the edge of the sections' overlap, where a node's template partly leaves
    # the neighbouring section (matched on its overlap, see patches._masked_ncc)
    assert r.max() < 1.0, r.max()
    assert not t["section_flags"].any()


# the same stack as 16-bit (and 10-bit data stored as uint16) and as float in [0, 1] (before 2026-12-06 every
# section of a float stack was "blank": `min_std` was one unit of whatever the raw held)
AS_DTYPE = {"uint8": lambda a: a, "uint16": lambda a: a.astype(np.uint16) * np.uint16(257),
            "uint16 of 10 bits": lambda a: a.astype(np.uint16) * np.uint16(4),
            "float32": lambda a: (a / 255.0).astype(np.float32)}


@pytest.mark.parametrize("dtype", list(AS_DTYPE))
def test_defects_flagged_and_skipped(rigid, tmp_path, client, dtype):
    distorted = rigid
    stack = list(distorted.raw)
    rng = np.random.default_rng(7)
    shape = distorted.raw.shape[1:]
    inserted = {2: np.full(shape, 131, np.uint8),  # blank
                4: np.zeros(shape, np.uint8),  # missing
                7: rng.integers(0, 256, shape).astype(np.uint8)}  # corrupted: unrelated to both neighbours
    for z in sorted(inserted):
        stack.insert(z, inserted[z])
    data = np.stack(stack)
    raw = write_stack(str(tmp_path / "raw"), AS_DTYPE[dtype](data))
    _, _, t = align(raw, str(tmp_path / "out"), client)
    flags = t["section_flags"]
    assert {int(z): REASONS[int(flags[z])] for z in np.nonzero(flags)[0]} == {
        2: REASONS[BLANK], 4: REASONS[MISSING], 7: REASONS[UNMATCHED]}
    mask = open_volume(str(tmp_path / "out" / "defects"))
    m = mask.read(mask.box)
    assert (m[[2, 4, 7]] == SECTION_FLAG).all()
    assert not (m[np.setdiff1d(np.arange(len(data)), [2, 4, 7])] == SECTION_FLAG).any()
    assert REGION_FLAG not in np.unique(m[[2, 4, 7]])
    # the real sections, aligned across the gaps, as well as without them
    real = np.setdiff1d(np.arange(len(data)), sorted(inserted))
    assert not t["regions"][real].any()
    r = residuals(distorted, t["fields"][real], nodes_of(t), border=BORDER, step=2)
    assert np.median(r) < 0.3, np.median(r)
    assert r.max() < 1.0, r.max()


def test_local_defect_flagged_as_region(rigid, tmp_path, client):
    data = rigid.raw.copy()
    rng = np.random.default_rng(3)
    data[3, 64:128, 64:128] = rng.integers(0, 256, (64, 64))  # dirt over one patch of section 3
    raw = write_stack(str(tmp_path / "raw"), data)
    _, _, t = align(raw, str(tmp_path / "out"), client)
    assert not t["section_flags"].any()  # a local defect does not flag the section
    regions = t["regions"]
    assert regions[3].any()
    assert not np.delete(regions, 3, axis=0).any()
    iy, ix = np.nonzero(regions[3])
    assert np.all(np.abs(t["nodes_y"][iy] - 96) <= 32) and np.all(np.abs(t["nodes_x"][ix] - 96) <= 32)
    mask = open_volume(str(tmp_path / "out" / "defects"))
    m = mask.read(mask.box)
    assert (m[3] == REGION_FLAG).any() and not (np.delete(m, 3, axis=0) == REGION_FLAG).any()
    # the sections around it are aligned as well as without the defect
    r = residuals(rigid, t["fields"], nodes_of(t), border=BORDER, step=2, sections=np.array([0, 1, 2, 4, 5]))
    assert np.median(r) < 0.3 and r.max() < 1.0, (np.median(r), r.max())


def test_a_break_that_no_pair_matches_is_linked_by_whole_sections(tmp_path, client):
    """Sections 0-2 and 3-5 lie 40 px apart, beyond the patches' search range (8 px): no matched pair
    joins the two parts. A whole-section link bridges the break, so the stack is aligned as one; without
    it each part was aligned on its own and they met with the 40 px jump."""
    clean = clean_stack(SECTIONS, SIDE + 2 * MARGIN, seed=6)
    jump = np.zeros((SECTIONS, 2))
    jump[3:] = (-28.0, 28.0)  # 40 px
    d = distort(clean, MARGIN, Distortion(max_shift=3, max_rotation=2), seed=3, extra_shifts=jump)
    raw = write_stack(str(tmp_path / "raw"), d.raw)
    match = {"patch": 64, "stride": 32, "search": 8, "levels": 1}
    # (patches are kept above correlation 0.6, which the true matches of these sections reach: the noise's
    # chance matches within the small search range would otherwise fit the pair across the jump wrongly)
    plan, reports, t = align(raw, str(tmp_path / "out"), client, match=match, solve={"min_corr": 0.6})
    assert not t["section_flags"].any()  # every section matches a neighbour
    assert not np.isfinite(t["pair_fits_1"][2]).any()  # the pair across the jump matched nothing
    r = residuals(d, t["fields"], nodes_of(t), border=BORDER, step=2)
    assert np.median(r) < 0.3 and r.max() < 1.0, (np.median(r), r.max())
    import json

    with open(tmp_path / "out" / "alignment" / "solve.json") as f:
        solve = json.load(f)
    assert [(x["from"], x["to"]) for x in solve["links"]] == [(2, 3)] and solve["breaks"] == []
    assert solve["links"][0]["agreement"] > 0.5
    # the jump at the sections' centre, about which `distort` rotates them (the link maps section 3 onto 2)
    shift, true = np.array(solve["links"][0]["shift_px"]), d.shifts[2] - d.shifts[3]
    assert np.abs(shift - true).max() < 1.0, (shift, true, np.rad2deg(d.rotations[2:4]))


def test_a_break_nothing_bridges_is_reported(tmp_path, client):
    """Sections 3-5 show other tissue than 0-2 (no pair, nor the whole sections, match across): the
    stack is aligned in two pieces, and the solve says where (`breaks` in solve.json, which `align`
    prints as one warning line and in --json)."""
    import json

    raw = np.concatenate([clean_stack(3, SIDE, seed=6), clean_stack(3, SIDE, seed=9)])
    match = {"patch": 64, "stride": 32, "search": 8, "levels": 1}
    align(write_stack(str(tmp_path / "raw"), raw), str(tmp_path / "out"), client, match=match,
          solve={"min_corr": 0.6})
    with open(tmp_path / "out" / "alignment" / "solve.json") as f:
        solve = json.load(f)
    assert solve["breaks"] == [[2, 3]] and solve["links"] == []


def test_reference_residual_is_zero_for_an_agreeing_alignment():
    """`residuals(..., reference=...)` scores 0 for an alignment that equals the reference up to one
    common transform, although the reference crop's coordinates differ from clean ones by its margin,
    and it sees a 1 px error in one section."""
    clean = np.zeros((4, 200, 200), np.uint8)
    margin = 30
    ref = distort(clean, margin, Distortion(max_shift=0, max_rotation=0), seed=0)
    moved = distort(clean, margin, Distortion(max_shift=15, max_rotation=2), seed=1)
    nodes = (np.arange(20, 140, 30), np.arange(20, 140, 30))
    gy, gx = np.meshgrid(*nodes, indexing="ij")
    p = np.stack([gy, gx], axis=-1).astype(np.float64)
    rng = np.random.default_rng(0)
    linear = rng.normal(0, 0.01, (4, 2, 2))  # the reference: a small affine field per section, mean zero
    shift = rng.normal(0, 3, (4, 2))
    linear -= linear.mean(0)
    shift -= shift.mean(0)
    u0 = np.einsum("zab,yxb->zyxa", linear, p - 70) + shift[:, None, None]
    angle = np.deg2rad(1.0)  # the moved alignment's common transform T
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tp = (p - 70) @ rot.T + 70 + np.array([4.0, -6.0])
    fields = np.zeros_like(u0)
    for z in range(4):
        target = tp + np.einsum("ab,yxb->yxa", linear[z], tp - 70) + shift[z] + margin  # clean position wanted
        # invert the moved section's rigid distortion S_z (p -> target) at the nodes
        c, s = np.cos(moved.rotations[z]), np.sin(moved.rotations[z])
        back = np.array([[c, s], [-s, c]])
        centre = np.array(moved.center)
        q = (target - centre - moved.shifts[z]) @ back.T + centre - margin
        fields[z] = q - p
    r = residuals(moved, fields, nodes, border=8, reference=(ref, u0, nodes))
    assert r.size > 500 and r.max() < 1e-3, r.max()
    fields[2, ..., 1] += 1.0
    r = residuals(moved, fields, nodes, border=8, reference=(ref, u0, nodes))
    assert 0.5 < r.max() < 1.5, r.max()

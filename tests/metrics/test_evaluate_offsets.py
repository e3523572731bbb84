"""`connectome evaluate` refuses volumes from different places (their offsets differ), a damaged chunk and
negative ground-truth ids in one line, exit 2 (audit43 F12/F17, B02, W01)."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
from test_evaluate_sections import _run
from test_evaluate_sections import _zarr as zarr_volume

from connectome.metrics import Skeletons, evaluate_volumes


def _volumes():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (6, 8, 8)).astype(np.uint32)
    seg = rng.integers(1, 3, (6, 8, 8)).astype(np.uint32)
    return seg, gt


# zarr volumes of 8 nm voxels in 2 x 4 x 4 chunks (offset: where voxel 0 lies, as `segment` records it)
_zarr = functools.partial(zarr_volume, voxel_size=(8.0, 8.0, 8.0), chunks=(2, 4, 4))


def _one_line_refusal(code, out, err):
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


SKEL = ["--skeletons"]


@pytest.fixture
def skel(tmp_path):
    path = tmp_path / "skel.npz"
    Skeletons(np.array([[0, 1, x] for x in range(4)], float), np.array([[0, 1], [1, 2], [2, 3]]),
              np.ones(4, np.uint64)).save(str(path))
    return str(path)


def test_a_segmentation_of_other_sections_than_the_gt_is_refused(tmp_path, capsys, skel):
    seg, gt = _volumes()
    s10 = _zarr(tmp_path / "s10", seg[:4], offset=(10, 0, 0))  # as `segment 'raw[10:14]' OUT` records it
    labels = _zarr(tmp_path / "labels", np.concatenate([gt, gt, gt]))  # 18 sections at offset 0
    line = _one_line_refusal(*_run(capsys, "--seg", s10, "--gt", f"{labels}[0:4]", "--skeletons", skel))
    assert "offset mismatch" in line and s10 in line and f"{labels}[0:4]" in line
    assert "[10, 0, 0]" in line and "[0, ?, ?]" in line and f"--gt {labels}[10:14]" in line
    # the same sections: scored
    code, out, _ = _run(capsys, "--seg", s10, "--gt", f"{labels}[10:14]", "--skeletons", skel, "--json")
    assert code == 0 and json.loads(out)["voxels"] == 4 * 8 * 8


def test_section_ranges_of_different_sections_are_refused(tmp_path, capsys, skel):
    seg, gt = _volumes()
    zseg, zgt = _zarr(tmp_path / "seg", seg), _zarr(tmp_path / "gt", gt)
    line = _one_line_refusal(*_run(capsys, "--seg", f"{zseg}[0:2]", "--gt", f"{zgt}[4:6]", "--skeletons", skel))
    assert "[0, ?, ?]" in line and "[4, ?, ?]" in line and f"--seg {zseg}[4:6]" in line
    np.savez(tmp_path / "r.npz", seg=seg, gt=gt)  # an npz carries no offset, but its range gives z
    line = _one_line_refusal(*_run(capsys, "--seg", f"{zseg}[0:2]", "--gt", f"{tmp_path}/r.npz#gt[4:6]",
                                   "--skeletons", skel))
    assert "[0, ?, ?]" in line and "[4, ?, ?]" in line
    with pytest.raises(Exception, match="offset mismatch"):
        evaluate_volumes(f"{tmp_path}/r.npz#seg[1:3]", f"{tmp_path}/r.npz#gt[2:4]", skeletons=skel)


def test_the_common_cases_still_score(tmp_path, capsys, skel):
    """A segmentation of `FILE.npz#raw[2:6]` (offset 2 recorded) against `FILE.npz#gt[2:6]`; an npz without a
    range (no offset carried) of the same shape; seg and gt both at 0."""
    seg, gt = _volumes()
    np.savez(tmp_path / "f.npz", gt=gt, gt4=gt[2:6])
    s2 = _zarr(tmp_path / "s2", seg[2:6], offset=(2, 0, 0))
    for g in (f"{tmp_path}/f.npz#gt[2:6]", f"{tmp_path}/f.npz#gt4"):
        code, out, err = _run(capsys, "--seg", s2, "--gt", g, "--skeletons", skel, "--json")
        assert code == 0 and json.loads(out)["voxels"] == 4 * 8 * 8, err
    zseg, zgt = _zarr(tmp_path / "seg", seg), _zarr(tmp_path / "gt", gt)
    for s, g in ((zseg, zgt), (f"{zseg}[1:5]", f"{zgt}[1:5]"), (zseg, f"{tmp_path}/f.npz#gt")):
        code, out, err = _run(capsys, "--seg", s, "--gt", g, "--skeletons", skel, "--json")
        assert code == 0, err


def test_a_shape_mismatch_names_the_range_that_compares_the_same_voxels(tmp_path, capsys, skel):
    seg, gt = _volumes()
    zseg, zgt = _zarr(tmp_path / "seg", seg), _zarr(tmp_path / "gt", gt)
    line = _one_line_refusal(*_run(capsys, "--seg", zseg, "--gt", f"{zgt}[2:5]", "--skeletons", skel))
    assert "[6, 8, 8]" in line and "[3, 8, 8]" in line and f"--seg {zseg}[2:5]" in line


@pytest.mark.parametrize("extra", [[], ["--per-section"]])
def test_a_damaged_chunk_is_one_line_naming_it(tmp_path, capsys, skel, extra):
    seg, gt = _volumes()
    zseg, zgt = _zarr(tmp_path / "seg", seg), _zarr(tmp_path / "gt", gt)
    chunk = os.path.join(zseg, "0", "c", "0", "0", "0")
    assert os.path.isfile(chunk)
    os.truncate(chunk, 7)
    for s, g in ((zseg, zgt), (zgt, zseg)):  # a damaged seg, a damaged gt (kimimaro reads it whole first)
        line = _one_line_refusal(*_run(capsys, "--seg", s, "--gt", g, *extra))
        assert chunk in line and "cannot decode this chunk" in line


@pytest.mark.parametrize("extra", [[], ["--per-section"], ["--skeletons"]])
def test_negative_gt_ids_are_refused(tmp_path, capsys, skel, extra):
    gt = np.zeros((3, 6, 12), np.int64)
    gt[1, 2:4, 1:11] = 7
    gt[2, 3, 5] = -3
    np.savez(tmp_path / "n.npz", gt=gt, seg=np.abs(gt))
    extra = [*extra, skel] if extra == ["--skeletons"] else extra
    line = _one_line_refusal(*_run(capsys, "--seg", f"{tmp_path}/n.npz#seg", "--gt", f"{tmp_path}/n.npz#gt",
                                   "--voxel-size", "4", "4", "4", *extra))
    assert f"{tmp_path}/n.npz#gt" in line and "expected ground-truth ids >= 0" in line and "found -3" in line
    assert "[2, 3, 5]" in line
    # a negative segment id is an ordinary segment, as before
    code, out, err = _run(capsys, "--seg", f"{tmp_path}/n.npz#gt", "--gt", f"{tmp_path}/n.npz#seg", "--voxel-size",
                          "4", "4", "4")
    assert code == 0, err


def test_negative_ids_still_skeletonise_in_the_library():
    """`Skeletons.from_labels` (library) keeps wrapping a negative id to its uint64, as VOI counts it."""
    gt = np.zeros((3, 6, 12), np.int64)
    gt[1, 2:4, 1:11] = -5
    sk = Skeletons.from_labels(gt, (4, 4, 4))
    assert len(sk.nodes) and set(np.unique(sk.skeleton_ids)) == {np.uint64(2**64 - 5)}


def test_a_volume_at_offset_0_is_compared_as_it_is_with_a_warning(tmp_path, capsys, skel):
    """A segmentation written from an npz crop records offset 0, which says nothing of where the crop lay: against
    `labels.npz#gt[10:16]` it was refused with a hint naming the wrong sections (review43); it is scored as it is,
    with one warning line."""
    seg, gt = _volumes()
    crop = _zarr(tmp_path / "crop", seg)  # `segment crop.npz#raw OUT` records offset 0
    np.savez(tmp_path / "full.npz", gt=np.concatenate([gt, gt, gt]))
    code, out, err = _run(capsys, "--seg", crop, "--gt", f"{tmp_path}/full.npz#gt[6:12]", "--skeletons", skel, "--json")
    assert code == 0 and json.loads(out)["voxels"] == seg.size
    assert err.count("\n") == 1 and "warning: gt starts at world voxel [z y x] [6, ?, ?]" in err and crop in err, err


def test_a_wrapped_ignore_gt_id_is_refused(tmp_path, capsys):
    """The largest uint64 (-1 written unsigned: an 'ignore' label) was scored as one ground-truth object."""
    gt = np.zeros((3, 6, 12), np.uint64)
    gt[1, 2:4, 1:11] = 7
    gt[0, 1, 2] = np.iinfo(np.uint64).max
    np.savez(tmp_path / "w.npz", gt=gt, seg=(gt > 0).astype(np.uint64))
    line = _one_line_refusal(*_run(capsys, "--seg", f"{tmp_path}/w.npz#seg", "--gt", f"{tmp_path}/w.npz#gt",
                                   "--voxel-size", "4", "4", "4"))
    assert f"{tmp_path}/w.npz#gt" in line and "id 18446744073709551615" in line and "[0, 1, 2]" in line

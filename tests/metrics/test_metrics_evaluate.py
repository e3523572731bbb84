"""evaluate_volumes and `connectome evaluate`: blockwise equals whole-volume, the CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.io import create_volume
from connectome.metrics import Contingency, Skeletons, adapted_rand, evaluate_volumes, voi

from conftest import data_file

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (10, 30, 50)


def _gt():
    """Five rods along x (ids 1..5) in a background of 0, plus a slab of label 6 filling z 8..9."""
    gt = np.zeros(SHAPE, np.uint64)
    for k in range(5):
        gt[2:7, 1 + 6 * k : 5 + 6 * k, 3:47] = k + 1
    gt[8:, :, :] = 6
    return gt


def _seg(gt):
    """gt with rods 1 and 2 merged into one segment and rod 3 cut in two at x = 25."""
    seg = gt * np.uint64(1000)
    seg[seg == 2000] = 1000
    rod3 = seg == 3000
    rod3[:, :, :25] = False
    seg[rod3] = 3001
    return seg


def _write(path, data, chunks=(4, 8, 16)):
    vol = create_volume(str(path), data.shape, data.dtype, chunks, VOXEL)
    vol.write(vol.box, data)
    return str(path)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    gt = _gt()
    seg = _seg(gt)
    return {"gt": _write(d / "gt", gt), "seg": _write(d / "seg", seg), "gt_array": gt, "seg_array": seg, "dir": d}


@pytest.fixture(scope="module")
def skeletons():
    return Skeletons.from_labels(_gt(), VOXEL)


def test_metrics_match_the_array_functions_and_the_errors_planted(volumes, skeletons):
    r = evaluate_volumes(volumes["seg"], volumes["gt"], block_shape=(4, 7, 9), skeletons=skeletons)
    split, merge = voi(volumes["seg_array"], volumes["gt_array"])
    assert (r["voi_split"], r["voi_merge"]) == (split, merge) and r["voi"] == split + merge
    assert r["arand"] == adapted_rand(volumes["seg_array"], volumes["gt_array"])
    assert r["merges"] == 1  # segment 1000 holds rods 1 and 2
    assert r["splits"] == 1  # rod 3's skeleton runs along x and crosses x = 24.5 once
    assert r["voxel_size"] == list(VOXEL)
    # expected ERL by hand: rods 1 and 2 score nothing; rod 3 keeps the runs on either side of
    # the cut edge; rods 4, 5 and the slab 6 keep their whole skeletons
    lengths = skeletons.edge_lengths(VOXEL)
    ids = skeletons.edge_skeleton_ids
    x = skeletons.nodes[skeletons.edges, 2]
    rod3_left = lengths[(ids == 3) & (x.max(axis=1) < 24.5)].sum()
    rod3_right = lengths[(ids == 3) & (x.min(axis=1) > 24.5)].sum()
    whole = [lengths[ids == k].sum() for k in (4, 5, 6)]
    expected = (rod3_left**2 + rod3_right**2 + sum(w**2 for w in whole)) / lengths.sum()
    assert r["erl_nm"] == pytest.approx(expected)
    assert r["max_erl_nm"] == pytest.approx(sum(lengths[ids == k].sum() ** 2 for k in range(1, 7)) / lengths.sum())
    assert r["voxels"] == int(np.prod(SHAPE))


def test_blockwise_equals_whole_volume(volumes, skeletons):
    whole = evaluate_volumes(volumes["seg"], volumes["gt"], block_shape=SHAPE, skeletons=skeletons)
    assert whole["blocks"] == 1
    for block_shape in [(3, 7, 11), (10, 1, 50), (4, 30, 13)]:
        part = evaluate_volumes(volumes["seg"], volumes["gt"], block_shape=block_shape, skeletons=skeletons)
        assert part["blocks"] > 1
        for key in ["voi_split", "voi_merge", "arand", "erl_nm", "max_erl_nm", "merges", "splits",
                    "merged_edges", "omitted_edges", "voxels", "labelled_voxels"]:
            assert part[key] == whole[key], key


def test_gt_against_itself_scores_perfect(volumes, skeletons):
    r = evaluate_volumes(volumes["gt"], volumes["gt"], block_shape=(5, 16, 16), skeletons=skeletons)
    assert (r["voi_split"], r["voi_merge"], r["arand"]) == (0.0, 0.0, pytest.approx(0.0, abs=1e-15))
    assert (r["merges"], r["splits"]) == (0, 0)
    assert r["erl_nm"] == r["max_erl_nm"] > 0


def test_kimimaro_default_and_skeleton_file_agree(volumes, skeletons, tmp_path):
    path = tmp_path / "sk.npz"
    skeletons.save(str(path))
    from_file = evaluate_volumes(volumes["seg"], volumes["gt"], block_shape=(8, 8, 8), skeletons=str(path))
    computed = evaluate_volumes(volumes["seg"], volumes["gt"], block_shape=(8, 8, 8))
    for key in ["erl_nm", "max_erl_nm", "merges", "splits", "skeletons"]:
        assert from_file[key] == computed[key], key


def test_cli_json(volumes, capsys):
    code = main(["evaluate", "--seg", volumes["seg"], "--gt", volumes["gt"], "--json", "--block-shape", "5", "9", "17"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ["voi_split", "voi_merge", "voi", "arand", "erl_nm", "max_erl_nm", "merges", "splits"]:
        assert key in out
    assert out["merges"] == 1 and out["blocks"] == 2 * 4 * 3
    table = Contingency.from_arrays(volumes["seg_array"], volumes["gt_array"])
    assert out["voxels"] == table.total


def test_cli_human_table_and_voxel_size(volumes, capsys):
    given = [f"{v:g}" for v in VOXEL]  # the size both volumes carry (another one is refused)
    assert main(["evaluate", "--seg", volumes["seg"], "--gt", volumes["gt"], "--voxel-size", *given]) == 0
    out = capsys.readouterr().out
    for label in ["VOI split", "VOI merge", "adapted Rand", "ERL", "merges", "splits"]:
        assert label in out
    assert not out.lstrip().startswith("{")


def test_cli_missing_file_exits_2(volumes, capsys):
    missing = str(volumes["dir"] / "nowhere")
    assert main(["evaluate", "--seg", missing, "--gt", volumes["gt"], "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_cli_shape_mismatch_exits_2(volumes, capsys):
    other = _write(volumes["dir"] / "small", np.ones((10, 30, 49), np.uint64))
    assert main(["evaluate", "--seg", other, "--gt", volumes["gt"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[10, 30, 49]" in err[0] and "[10, 30, 50]" in err[0]


def test_cli_float_labels_exit_2(volumes, capsys):
    floats = _write(volumes["dir"] / "floats", np.ones(SHAPE, np.float32))
    assert main(["evaluate", "--seg", floats, "--gt", volumes["gt"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float32" in err[0]


def test_cli_bad_skeleton_file_exits_2(volumes, tmp_path, capsys):
    assert main(["evaluate", "--seg", volumes["seg"], "--gt", volumes["gt"],
                 "--skeletons", str(tmp_path / "none.npz")]) == 2
    assert "no such skeleton file" in capsys.readouterr().err


def test_all_background_gt_is_a_user_error(volumes):
    empty = _write(volumes["dir"] / "empty", np.zeros(SHAPE, np.uint64))
    with pytest.raises(UserError, match="no labelled voxels"):
        evaluate_volumes(volumes["seg"], empty)


@pytest.mark.realdata
def test_gala_reference_through_npz_addresses_blockwise():
    path = data_file("gala_fib_crops/gala_fib.npz")
    reference = np.load(path)["reference_split_vi_rows_ws_seg1_seg4"]
    r = evaluate_volumes(f"{path}#test_seg4_gala", f"{path}#test_gt", block_shape=(17, 33, 65),
                         voxel_size=(10, 10, 10))
    assert r["voi_merge"] == pytest.approx(reference[2, 0], abs=1e-6)
    assert r["voi_split"] == pytest.approx(reference[2, 1], abs=1e-6)
    assert r["max_erl_nm"] > r["erl_nm"] > 0

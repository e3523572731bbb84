"""`connectome evaluate`: --per-section scores, the voxel size and its source, shapes, section ranges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.io import create_volume
from connectome.metrics import Skeletons, adapted_rand, evaluate_volumes, voi

from conftest import data_file

ROD = Skeletons(np.array([[1, 1, x] for x in range(10)], float), np.array([[i, i + 1] for i in range(9)]),
                np.ones(10, np.uint64))  # one straight skeleton along x: 9 edges of one voxel each
SHORT = Skeletons(np.array([[0, 1, x] for x in range(4)], float), np.array([[0, 1], [1, 2], [2, 3]]),
                  np.ones(4, np.uint64))  # fits in the 4 x 4 sections


def _sections():
    """Four 4 x 4 sections: seg == gt; seg merges two equal gt halves; no gt; seg splits one gt object."""
    gt = np.zeros((4, 4, 4), np.uint32)
    seg = np.zeros((4, 4, 4), np.uint32)
    gt[0, :, :2], gt[0, :, 2:] = 1, 2
    seg[0] = gt[0] + 10
    gt[1, :, :2], gt[1, :, 2:] = 3, 4
    seg[1] = 20
    seg[2] = 30
    gt[3] = 5
    seg[3, :, :2], seg[3, :, 2:] = 40, 41
    return seg, gt


def _zarr(path, data, voxel_size=(40.0, 8.0, 8.0), chunks=(1, 4, 4), offset=(0, 0, 0)):
    vol = create_volume(str(path), data.shape, data.dtype, chunks, voxel_size, offset=offset)
    vol.write(vol.box, data)
    return str(path)


def _run(capsys, *argv):
    code = main(["evaluate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def npz(tmp_path):
    seg, gt = _sections()
    path = tmp_path / "v.npz"
    np.savez(path, seg=seg, gt=gt)
    return str(path)


def test_per_section_figures_by_hand(npz):
    r = evaluate_volumes(f"{npz}#seg", f"{npz}#gt", block_shape=(4, 4, 4), skeletons=SHORT, per_section=True)
    by_z = {s["z"]: s for s in r["sections"]}
    assert sorted(by_z) == [0, 1, 3] and r["skipped_sections"] == [2]
    assert (by_z[0]["voi_split"], by_z[0]["voi_merge"], by_z[0]["arand"]) == (0.0, 0.0, 0.0)
    # z 1: one segment over two gt halves of 8 voxels: H(gt|seg) = 1 bit; Rand precision 1/2, recall 1
    assert by_z[1]["voi_split"] == 0.0 and by_z[1]["voi_merge"] == pytest.approx(1.0)
    assert by_z[1]["arand"] == pytest.approx(1 / 3)
    # z 3: one gt object cut in two equal halves: H(seg|gt) = 1 bit; precision 1, recall 1/2
    assert by_z[3]["voi_split"] == pytest.approx(1.0) and by_z[3]["voi_merge"] == 0.0
    assert by_z[3]["arand"] == pytest.approx(1 / 3)
    assert r["voi_split"] == pytest.approx(1 / 3) and r["voi_merge"] == pytest.approx(1 / 3)
    assert r["arand"] == pytest.approx(2 / 9) and r["voi"] == pytest.approx(2 / 3)
    seg, gt = _sections()
    for z in (0, 1, 3):  # the per-section figures are the whole-volume definitions on one section
        assert (by_z[z]["voi_split"], by_z[z]["voi_merge"]) == voi(seg[z], gt[z])
        assert by_z[z]["arand"] == adapted_rand(seg[z], gt[z])


def test_per_section_blockwise_equals_one_block(npz):
    one = evaluate_volumes(f"{npz}#seg", f"{npz}#gt", block_shape=(4, 4, 4), skeletons=SHORT, per_section=True)
    many = evaluate_volumes(f"{npz}#seg", f"{npz}#gt", block_shape=(3, 3, 1), skeletons=SHORT, per_section=True)
    assert many["blocks"] > 1
    assert many["sections"] == one["sections"] and many["skipped_sections"] == one["skipped_sections"]
    for key in ("voi_split", "voi_merge", "arand", "erl_nm", "merges", "splits"):
        assert many[key] == one[key], key


def test_cli_per_section_json_and_table(npz, capsys):
    code, out, _ = _run(capsys, "--seg", f"{npz}#seg", "--gt", f"{npz}#gt", "--per-section", "--json")
    assert code == 0
    r = json.loads(out)
    for key in ("voi_split", "voi_merge", "arand", "erl_nm", "merges", "splits", "sections"):
        assert key in r
    assert [s["z"] for s in r["sections"]] == [0, 1, 3] and r["skipped_sections"] == [2]
    assert set(r["sections"][0]) >= {"z", "voi_split", "voi_merge", "arand"}
    assert r["voi_merge"] == pytest.approx(1 / 3)
    code, out, _ = _run(capsys, "--seg", f"{npz}#seg", "--gt", f"{npz}#gt", "--per-section")
    assert code == 0
    assert "mean" in out and "skipped 1 section(s) without labelled gt voxels: z = 2" in out
    assert "1.0000" in out.splitlines()[2]  # the row of z 1: merge 1 bit


def test_per_section_merges_are_counted_within_a_section(tmp_path):
    """Two gt objects per section, one segment each in every section: no merge; one segment for both: a merge where
    its pieces in the section touch both (by default), or wherever it holds both (`section_pieces=False`)."""
    gt = np.zeros((2, 6, 12), np.uint32)
    gt[:, 1, 1:11], gt[:, 4, 1:11] = 1, 2
    seg = gt.copy()
    seg[0][seg[0] == 2] = 1  # section 0: both rods in one segment
    nodes = np.array([[z, y, x] for z in (0, 1) for y in (1, 4) for x in range(1, 11)], float)
    edges = np.array([[i, i + 1] for k in range(4) for i in range(10 * k, 10 * k + 9)])
    skel = Skeletons(nodes, edges, np.repeat(np.array([1, 2, 3, 4], np.uint64), 10))  # one per rod and section

    def scored(labels, **kwargs):
        np.savez(tmp_path / "m.npz", seg=labels, gt=gt)
        return evaluate_volumes(f"{tmp_path}/m.npz#seg", f"{tmp_path}/m.npz#gt", skeletons=skel, per_section=True,
                                voxel_size=(1, 1, 1), **kwargs)

    whole = scored(seg, section_pieces=False)
    assert whole["merges"] == 1 and whole["splits"] == 0 and not whole["section_pieces"]
    assert whole["erl_nm"] == pytest.approx(2 * 9**2 / (4 * 9))  # only section 1's two rods keep their runs
    apart = scored(seg)  # the segment's two rods do not touch in section 0: two profiles, as the gt's own
    assert apart["merges"] == 0 and apart["voi_merge"] == 0 and apart["section_pieces"]
    assert apart["erl_nm"] == pytest.approx(apart["max_erl_nm"])
    bridged = seg.copy()
    bridged[0, 2:4, 5] = 1  # joined in the section, over unlabelled gt
    touching = scored(bridged)
    assert touching["merges"] == 1 and touching["erl_nm"] == pytest.approx(whole["erl_nm"])
    assert touching["voi_merge"] == pytest.approx(whole["voi_merge"]) and whole["voi_merge"] > 0


def test_given_skeletons_are_cut_into_their_pieces_within_each_section(tmp_path, capsys):
    """A skeleton that runs along z through ten sections: per section its edges between sections mean
    nothing; the gt against itself scores no split (each crossing edge counted as a split before)."""
    gt = np.zeros((10, 4, 6), np.uint32)
    gt[:, 1:3, 1:5] = 3
    np.savez(tmp_path / "z.npz", gt=gt)
    along_z = Skeletons(np.array([[z, 2, x] for z in range(10) for x in (1, 2, 3)], float),
                        np.array([[i, i + 1] for i in range(29)]), np.ones(30, np.uint64))
    along_z.save(str(tmp_path / "z_skel.npz"))
    r = evaluate_volumes(f"{tmp_path}/z.npz#gt", f"{tmp_path}/z.npz#gt", skeletons=str(tmp_path / "z_skel.npz"),
                         per_section=True, voxel_size=(40, 4, 4))
    assert r["splits"] == 0 and r["merges"] == 0 and r["cross_section_edges"] == 9
    assert r["skeletons"] == 10  # one piece per section
    assert r["erl_nm"] == pytest.approx(r["max_erl_nm"]) == pytest.approx(8.0)  # 2 in-plane edges of 4 nm each
    seg = gt.copy()
    seg[:, :, 3:] = 4  # every section cut between x 2 and 3: one split per section
    np.savez(tmp_path / "s.npz", seg=seg)
    code, out, _ = _run(capsys, "--seg", f"{tmp_path}/s.npz#seg", "--gt", f"{tmp_path}/z.npz#gt", "--skeletons",
                        str(tmp_path / "z_skel.npz"), "--per-section", "--voxel-size", "40", "4", "4")
    assert code == 0 and "splits        10 skeleton edges" in out
    assert "left out      9 skeleton edges between sections" in out


def test_a_negative_int64_gt_id_is_refused_in_one_line(tmp_path):
    """(Before audit43 W01 it was scored as the uint64 it wraps to; the library's skeletons still wrap it:
    tests/metrics/test_evaluate_offsets.py.)"""
    from connectome.core.errors import UserError

    gt = np.zeros((3, 6, 12), np.int64)
    gt[1, 2:4, 1:11] = -5
    np.savez(tmp_path / "n.npz", gt=gt)
    with pytest.raises(UserError, match=r"expected ground-truth ids >= 0 \(0 = unlabelled\), found -5"):
        evaluate_volumes(f"{tmp_path}/n.npz#gt", f"{tmp_path}/n.npz#gt", voxel_size=(4, 4, 4))


@pytest.mark.parametrize("case", ["edges 2x3", "nan node", "float edges", "text"])
def test_a_malformed_skeleton_file_is_one_line(tmp_path, capsys, case):
    np.savez(tmp_path / "v.npz", gt=np.ones((2, 4, 4), np.uint32))
    path = tmp_path / "sk.npz"
    nodes, edges = np.array([[0, 1, 1], [0, 1, 2], [0, 2, 2]], float), np.array([[0, 1, 2], [1, 2, 0]])
    if case == "text":
        path.write_text("nodes edges")
    elif case == "nan node":
        np.savez(path, nodes=np.array([[0, 1, 1], [np.nan] * 3, [0, 2, 2]]), edges=edges.T,
                 skeleton_ids=np.ones(3, np.uint64))
    else:
        np.savez(path, nodes=nodes, edges=edges if case == "edges 2x3" else edges.T.astype(float),
                 skeleton_ids=np.ones(3, np.uint64))
    expected = {"edges 2x3": "expected edges of shape (E, 2), found [2, 3]",
                "nan node": "expected finite node coordinates, found [nan, nan, nan] at node 1",
                "float edges": "expected integer node indices in edges, found dtype float64",
                "text": "expected an .npz archive of arrays"}[case]
    code, out, err = _run(capsys, "--seg", f"{tmp_path}/v.npz#gt", "--gt", f"{tmp_path}/v.npz#gt", "--skeletons",
                          str(path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and expected in err, err


def test_shape_mismatch_is_one_line_exit_2(tmp_path, capsys):
    seg = _zarr(tmp_path / "seg", np.ones((4, 8, 8), np.uint32))
    gt = _zarr(tmp_path / "gt", np.ones((4, 8, 9), np.uint32))
    for extra in ([], ["--per-section"], ["--json"]):
        code, out, err = _run(capsys, "--seg", seg, "--gt", gt, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1
        assert "[4, 8, 8]" in lines[0] and "[4, 8, 9]" in lines[0] and "Traceback" not in err
    code, _, err = _run(capsys, "--seg", f"{seg}[0:3]", "--gt", gt)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "[3, 8, 8]" in err


def _rod_volumes(tmp_path):
    gt = np.zeros((3, 3, 12), np.uint32)
    gt[1, 1, :] = 7
    return gt


def test_voxel_size_from_zarr_segmentation(tmp_path, capsys):
    gt = _rod_volumes(tmp_path)
    np.savez(tmp_path / "gt.npz", gt=gt)  # no resolution: the seg's metadata decides
    seg = _zarr(tmp_path / "seg", gt, voxel_size=(40.0, 8.0, 8.0))
    ROD.save(str(tmp_path / "rod.npz"))
    code, out, _ = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt.npz#gt", "--skeletons",
                        str(tmp_path / "rod.npz"), "--json")
    r = json.loads(out)
    assert code == 0 and r["voxel_size"] == [40.0, 8.0, 8.0] and "seg metadata" in r["voxel_size_from"]
    assert r["erl_nm"] == pytest.approx(9 * 8.0)  # one perfect straight run of 9 edges of 8 nm
    code, out, _ = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt.npz#gt", "--skeletons",
                        str(tmp_path / "rod.npz"), "--voxel-size", "40", "8", "8", "--json")
    r = json.loads(out)
    assert r["voxel_size"] == [40.0, 8.0, 8.0] and r["voxel_size_from"] == "--voxel-size"
    # a --voxel-size that contradicts the segmentation's: one line, not an ERL in the wrong nanometres
    code, out, err = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt.npz#gt", "--skeletons",
                          str(tmp_path / "rod.npz"), "--voxel-size", "10", "10", "10", "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"seg {seg} has voxel size [40.0, 8.0, 8.0] nm, but [10.0, 10.0, 10.0] was given" in err
    # nor do the seg's and the gt's own sizes disagree
    np.savez(tmp_path / "gt30.npz", gt=gt, resolution_zyx_nm=np.array([30.0, 6.0, 6.0]))
    code, out, err = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt30.npz#gt")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "[40.0, 8.0, 8.0] nm" in err and "gt30.npz#gt has [30.0, 6.0, 6.0] nm" in err
    code, out, _ = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt.npz#gt", "--skeletons",
                        str(tmp_path / "rod.npz"))
    assert "voxel size    40 x 8 x 8 nm, from seg metadata" in out
    # sizes within 1e-3 of each other are one, as in segment and every stage (float metadata: 7.9999 nm is 8 nm)
    np.savez(tmp_path / "gt8.npz", gt=gt, resolution_zyx_nm=np.array([40.0, 8.001, 7.9999]))
    code, out, err = _run(capsys, "--seg", seg, "--gt", f"{tmp_path}/gt8.npz#gt", "--voxel-size", "40", "8", "8.002")
    assert code == 0, err


def test_voxel_size_from_npz_resolution(tmp_path, capsys):
    gt = _rod_volumes(tmp_path)
    np.savez(tmp_path / "a.npz", seg=gt, gt=gt, resolution_zyx_nm=np.array([50, 4, 4]))
    np.savez(tmp_path / "b.npz", seg=gt, gt=gt)
    ROD.save(str(tmp_path / "rod.npz"))
    common = ["--skeletons", str(tmp_path / "rod.npz"), "--json"]
    r = json.loads(_run(capsys, "--seg", f"{tmp_path}/a.npz#seg", "--gt", f"{tmp_path}/b.npz#gt", *common)[1])
    assert r["voxel_size"] == [50.0, 4.0, 4.0] and "a.npz#resolution_zyx_nm" in r["voxel_size_from"]
    assert r["voxel_size_from"].startswith("seg file") and r["erl_nm"] == pytest.approx(9 * 4.0)
    r = json.loads(_run(capsys, "--seg", f"{tmp_path}/b.npz#seg", "--gt", f"{tmp_path}/a.npz#gt", *common)[1])
    assert r["voxel_size_from"].startswith("gt file") and r["erl_nm"] == pytest.approx(9 * 4.0)
    r = json.loads(_run(capsys, "--seg", f"{tmp_path}/b.npz#seg", "--gt", f"{tmp_path}/b.npz#gt", *common)[1])
    assert r["voxel_size"] == [1.0, 1.0, 1.0] and "assumed" in r["voxel_size_from"]
    np.savez(tmp_path / "bad.npz", seg=gt, resolution_zyx_nm=np.array([4.0, 4.0]))
    code, _, err = _run(capsys, "--seg", f"{tmp_path}/bad.npz#seg", "--gt", f"{tmp_path}/b.npz#gt", *common)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "bad.npz" in err and "resolution_zyx_nm" in err and "[4.0, 4.0]" in err


def test_section_ranges_on_both_addresses(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (6, 8, 8)).astype(np.uint32)
    seg = rng.integers(1, 3, (6, 8, 8)).astype(np.uint32)
    np.savez(tmp_path / "r.npz", seg=seg, gt=gt)
    zseg, zgt = _zarr(tmp_path / "seg", seg, chunks=(2, 4, 4)), _zarr(tmp_path / "gt", gt, chunks=(2, 4, 4))
    whole = evaluate_volumes(f"{tmp_path}/r.npz#seg", f"{tmp_path}/r.npz#gt", skeletons=SHORT, per_section=True)
    for s_addr, g_addr in [(f"{tmp_path}/r.npz#seg[2:4]", f"{tmp_path}/r.npz#gt[2:4]"),
                           (f"{zseg}[2:4]", f"{zgt}[2:4]"), (f"{zseg}[2:4]", f"{tmp_path}/r.npz#gt[2:4]")]:
        code, out, _ = _run(capsys, "--seg", s_addr, "--gt", g_addr, "--skeletons", _rod_file(tmp_path), "--json")
        r = json.loads(out)
        assert code == 0 and r["voxels"] == 2 * 8 * 8
        assert (r["voi_split"], r["voi_merge"]) == pytest.approx(voi(seg[2:4], gt[2:4]))
        code, out, _ = _run(capsys, "--seg", s_addr, "--gt", g_addr, "--skeletons", _rod_file(tmp_path),
                            "--per-section", "--json")
        r = json.loads(out)
        assert [s["z"] for s in r["sections"]] == [2, 3]  # z counts from the start of the file
        assert r["sections"] == [s for s in whole["sections"] if s["z"] in (2, 3)]


def _rod_file(tmp_path) -> str:
    path = tmp_path / "short.npz"
    if not path.exists():
        SHORT.save(str(path))
    return str(path)


@pytest.mark.realdata
def test_isbi_train_labels_against_themselves_score_zero_per_section():
    path = data_file("isbi2012/isbi2012.npz")
    empty = Skeletons(np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.uint64))
    for key in ("train_labels", "derived_train_cells2d"):
        r = evaluate_volumes(f"{path}#{key}", f"{path}#{key}", skeletons=empty, per_section=True)
        assert len(r["sections"]) == 30 and r["skipped_sections"] == []
        assert all(s["voi_split"] == s["voi_merge"] == 0.0 for s in r["sections"]), key
        assert (r["voi_split"], r["voi_merge"]) == (0.0, 0.0)
        assert r["arand"] == pytest.approx(0.0, abs=1e-12)
        assert r["voxel_size"] == [50.0, 4.0, 4.0]  # from the npz's resolution_zyx_nm

"""Sections smaller than the stack's plane: their padding is masked out of a segmentation (the affinity chain and
the FFN), and the footprints follow the sections when a run reorders them."""

import json

import numpy as np
import pytest
import tifffile

from connectome.alignment.footprints import outside_footprints, permuted
from connectome.cli.main import main
from connectome.core.geometry import Box
from connectome.io import open_volume

SHAPE = (16, 96, 96)
CROPS = {3: (64, 80), 9: (72, 56), 10: (90, 96)}  # z -> the (height, width) of a smaller section


def test_outside_footprints_over_a_box():
    footprints = {1: (2, 3, 4, 5), 3: (0, 0, 10, 10)}
    box = Box((0, 1, 2), (3, 8, 8))  # sections 0-2, rows 1-8, columns 2-9
    out = outside_footprints(footprints, box)
    expected = np.zeros((3, 8, 8), bool)
    expected[1] = True
    expected[1, 1:5, 1:6] = False  # rows 2-5 and columns 3-7 of section 1
    np.testing.assert_array_equal(out, expected)
    assert permuted(footprints, [3, 0, 1, 2]) == {0: (0, 0, 10, 10), 2: (2, 3, 4, 5)}


@pytest.fixture(scope="module")
def uneven_stack(tmp_path_factory):
    """A synthetic volume written as TIFF sections, three of them cropped about their centre (as a smaller
    section of a lab's stack is read: centred on the largest); (folder, the whole volume, the padding)."""
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("uneven")
    raw = generate(SHAPE, (8.0, 8.0, 8.0), seed=11).raw
    padding = np.zeros(SHAPE, bool)
    (root / "tifs").mkdir()
    for z in range(SHAPE[0]):
        section = raw[z]
        if z in CROPS:
            h, w = CROPS[z]
            y, x = (SHAPE[1] - h) // 2, (SHAPE[2] - w) // 2
            section = section[y:y + h, x:x + w]
            padding[z] = True
            padding[z, y:y + h, x:x + w] = False
        tifffile.imwrite(root / "tifs" / f"s{z:02d}.tif", section)
    return root / "tifs", raw, padding


def _segment(capsys, raw, out, *extra):
    code = main(["segment", str(raw), str(out), "--voxel-size", "8", "8", "8", "--block-shape", "16", "96", "96",
                 "--workers", "2", "--no-progress", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _read(address):
    volume = open_volume(address)
    return volume.read(volume.box)


@pytest.mark.parametrize("method", ["affinities", "ffn"])
def test_the_padding_of_smaller_sections_is_left_out_of_the_segmentation(uneven_stack, tmp_path, capsys, method):
    folder, _, padding = uneven_stack
    extra = ["--method", "ffn", "--model", "ffn-synthetic"] if method == "ffn" else []
    report = _segment(capsys, folder, tmp_path / "out", *extra)
    stages = [s["stage"] for s in report["stages"]]
    assert "footprint_mask" in stages
    seg = _read(report["segmentation"])
    assert not seg[padding].any()
    assert (seg[~padding] != 0).mean() > 0.5  # the image itself is segmented
    mask = _read(str(tmp_path / "out" / "footprint_mask"))
    np.testing.assert_array_equal(mask != 0, padding)


def test_the_same_volume_without_footprints_runs_no_mask_stage(uneven_stack, tmp_path, capsys):
    """A volume whose sections fill the plane gets no extra stage (its runs keep their fingerprints)."""
    _, raw, _ = uneven_stack
    (tmp_path / "whole").mkdir()
    for z in range(SHAPE[0]):
        tifffile.imwrite(tmp_path / "whole" / f"s{z:02d}.tif", raw[z])
    report = _segment(capsys, tmp_path / "whole", tmp_path / "out")
    assert [s["stage"] for s in report["stages"]][:2] == ["affinities", "fragments"]


def test_a_given_mask_is_joined_with_the_padding(uneven_stack, tmp_path, capsys):
    folder, _, padding = uneven_stack
    from connectome.io import create_volume

    lab = np.zeros(SHAPE, np.uint8)
    lab[:, :, :20] = 1  # e.g. a vessel along one side
    create_volume(str(tmp_path / "lab_mask"), SHAPE, np.uint8, (16, 96, 96), (8, 8, 8)).write(Box((0, 0, 0), SHAPE),
                                                                                              lab)
    report = _segment(capsys, folder, tmp_path / "out", "--mask", str(tmp_path / "lab_mask"))
    seg = _read(report["segmentation"])
    assert not seg[padding].any() and not seg[:, :, :20].any()
    np.testing.assert_array_equal(_read(str(tmp_path / "out" / "footprint_mask")) != 0, padding | (lab != 0))


def test_reordered_sections_carry_their_footprints(uneven_stack, tmp_path, client):
    """`reorder_sections` records the footprints of its copy in the new order, so the stages after it mask (and
    `align` flags) the padding of the section where it now lies; `footprint_mask` in 36 blocks is exactly it."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    folder, _, padding = uneven_stack
    order = list(range(SHAPE[0]))[::-1]
    config = RunConfig(input=str(folder), output=str(tmp_path / "out"), voxel_size=(8, 8, 8), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=(4, 32, 32), chunk_shape=(4, 32, 32)),  # 36 blocks
                       stages=[StageConfig(stage="reorder_sections", params={"order": order}),
                               StageConfig(stage="footprint_mask", inputs={"raw": "ordered_raw"})])
    execute(plan_run(config), client, progress=False)
    ordered = open_volume(str(tmp_path / "out" / "ordered_raw"))
    assert ordered.section_footprints() == permuted(open_volume(str(folder)).section_footprints(), order)
    np.testing.assert_array_equal(_read(str(tmp_path / "out" / "footprint_mask")) != 0, padding[::-1])
    # a copy made before copies recorded footprints (its fingerprint without them) is a change, not kept unmasked
    from connectome.core.errors import UserError
    from connectome.engine.plan import check_plan_resumable

    done = tmp_path / "out" / ".connectome" / "done" / "reorder_sections" / "fingerprint.json"
    recorded = json.loads(done.read_text())
    assert recorded["footprints"] == {str(k): list(v) for k, v in sorted(ordered.section_footprints().items())}
    done.write_text(json.dumps({k: v for k, v in recorded.items() if k != "footprints"}))
    with pytest.raises(UserError, match="'reorder_sections'.*other settings: footprints"):
        check_plan_resumable(plan_run(config), overwrite=False)


def test_a_shuffled_stack_of_uneven_real_sections_is_masked_where_each_section_is_stored(tmp_path, capsys):
    """ISBI sections stored shuffled, two of them smaller: `segment` works in the recovered order (the footprints
    follow the sections into it) and writes a segmentation in the stored order with every padding voxel 0."""
    from conftest import data_file

    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][:12, :256, :256]
    (tmp_path / "tifs").mkdir()
    padding = np.zeros(raw.shape, bool)
    for stored, z in enumerate(np.random.default_rng(1).permutation(12)):
        section = raw[z]
        if stored in (2, 7):
            h, w = {2: (200, 230), 7: (180, 256)}[stored]
            y, x = (256 - h) // 2, (256 - w) // 2
            section = section[y:y + h, x:x + w]
            padding[stored] = True
            padding[stored, y:y + h, x:x + w] = False
        tifffile.imwrite(tmp_path / "tifs" / f"s{stored:02d}.tif", section)
    code = main(["segment", str(tmp_path / "tifs"), str(tmp_path / "out"), "--model", "sstem", "--voxel-size", "50",
                 "4", "4", "--tta", "1", "--workers", "2", "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["section_order"]["order"] == "recovered"
    assert [s["stage"] for s in report["stages"]][:3] == ["reorder_sections", "affinities", "footprint_mask"]
    seg = _read(report["segmentation"])
    assert not seg[padding].any() and (seg[~padding] != 0).mean() > 0.9


def test_a_bad_mask_with_an_uneven_stack_is_refused_in_one_line(uneven_stack, tmp_path, capsys):
    folder, _, _ = uneven_stack
    np.savez(tmp_path / "m.npz", shape=np.zeros((16, 90, 96), np.uint8), dtype=np.zeros(SHAPE, np.float32))
    for key, words in (("shape", "has shape [16, 90, 96], expected the raw volume's [16, 96, 96]"),
                       ("dtype", "has dtype float32, expected uint8 or bool")):
        code = main(["segment", str(folder), str(tmp_path / "out"), "--voxel-size", "8", "8", "8", "--mask",
                     f"{tmp_path}/m.npz#{key}", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0] and f"m.npz#{key}" in err[0], err
    assert not (tmp_path / "out").exists()


def test_smaller_sections_in_order_are_not_taken_for_misplaced_ones(tmp_path):
    """Real ISBI sections in order, every third one smaller (padded with 0 by the stack): the order check compares
    the part every section holds, so the padding does not make the small sections alike (before, it found them
    misplaced, and recovered an order with the three side by side)."""
    from connectome.alignment.section_order import section_order

    from conftest import data_file

    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][:9, 100:356, 100:356]
    (tmp_path / "tifs").mkdir()
    for z in range(9):
        section = raw[z, 10:246, 6:250] if z % 3 == 1 else raw[z]
        tifffile.imwrite(tmp_path / "tifs" / f"s{z:02d}.tif", section)
    volume = open_volume(str(tmp_path / "tifs"))
    assert sorted(volume.section_footprints()) == [1, 4, 7]
    order = section_order(volume)
    assert order.order == tuple(range(9)) and order.kept_pairs == 1.0 and order.misplaced == ()


def test_a_section_smaller_than_half_the_plane_is_aligned_not_flagged_missing(uneven_stack, tmp_path, capsys):
    """Section 9 holds image data on 44 % of the plane: its padding is not counted as zeros of the section,
    so it is not flagged 'missing' (and left out of the solve); the unshifted stack stays where it is."""
    folder, raw, padding = uneven_stack
    assert padding[9].mean() > 0.5
    code = main(["align", str(folder), str(tmp_path / "out"), "--voxel-size", "8", "8", "8", "--patch", "32",
                 "--stride", "16", "--search", "12", "--block-shape", "16", "96", "96", "--workers", "1",
                 "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "9" not in summary["flagged_sections"], summary["flagged_sections"]
    with np.load(tmp_path / "out" / "alignment" / "transforms.npz") as t:
        fields, ys, xs = t["fields"], t["nodes_y"], t["nodes_x"]
    inside = ~padding[9][np.ix_(ys, xs)]
    moved = np.linalg.norm(fields, axis=-1)
    # a stack in register (a synthetic 3-D volume's sections): section 9 moves no more than its neighbours
    assert np.median(moved[9][inside]) < 1.0 + np.median(moved[[8, 10]]), (np.median(moved[9][inside]),
                                                                           np.median(moved[[8, 10]]))

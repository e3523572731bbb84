"""Missing sections (`affinity.blank.fill_blank`): the network reads a blank voxel with tissue above and below it as
the blend of the two, so the affinity chain segments through a lost section, the same in any block layout."""

import numpy as np
import pytest
from test_segment import _read, _segment  # the segment-command helpers of the affinity tests

from connectome.affinity.blank import BLANK_SIDE, FILL_BLANK, fill_blank, read_filled
from connectome.cli.main import main
from connectome.core.geometry import Box
from connectome.io import create_volume, open_volume
from connectome.metrics.voi import voi

from conftest import data_file


def blend(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return np.rint(a + (b.astype(np.float32) - a) * w).astype(np.uint8)


def test_a_missing_section_reads_as_the_blend_of_its_neighbours():
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 256, (12, 40, 40), dtype=np.uint8)
    lost = raw.copy()
    lost[2] = 0  # one section
    lost[5:7] = 0  # two
    lost[9, 10:30, 10:30] = 0  # a hole in one section
    lost[11, 10:30, 10:30] = 0  # a hole in the last section: tissue only above
    lost[0][rng.random((40, 40)) < 0.05] = 0  # scattered dark pixels: not blank
    lost[8, 5:5 + BLANK_SIDE - 1, 5:5 + BLANK_SIDE - 1] = 0  # a dark patch smaller than a blank square
    out = fill_blank(lost, 2)
    np.testing.assert_array_equal(out[2], blend(raw[1], raw[3], 0.5))
    np.testing.assert_array_equal(out[5], blend(raw[4], raw[7], 1 / 3))
    np.testing.assert_array_equal(out[6], blend(raw[4], raw[7], 2 / 3))
    np.testing.assert_array_equal(out[9, 10:30, 10:30], blend(lost[8, 10:30, 10:30], lost[10, 10:30, 10:30], 0.5))
    untouched = np.ones(raw.shape[0], bool)
    untouched[[2, 5, 6, 9]] = False
    np.testing.assert_array_equal(out[untouched], lost[untouched])  # the last section's hole, the dark pixels
    np.testing.assert_array_equal(out[9, :10], lost[9, :10])
    one = fill_blank(lost, 1)  # reaches one section: the single missing one only
    np.testing.assert_array_equal(one[2], out[2])
    assert not one[5:7].any()
    assert fill_blank(lost, 0) is lost and fill_blank(raw, 2) is raw


def test_the_fill_is_the_same_in_any_box(tmp_path):
    """Each box is filled from its own read (`read_filled`: the box grown by `fill_margin`, mirrored at the
    volume's faces) as the whole volume is: a blank square cut by a box's face is still found, a section missing at
    the volume's face is filled from its mirror image."""
    rng = np.random.default_rng(1)
    data = rng.integers(1, 256, (12, 48, 48), dtype=np.uint8)
    data[0] = 0  # missing at the volume's face: its mirror is section 1
    data[5:7] = 0
    data[9, 10:10 + BLANK_SIDE, 12:12 + BLANK_SIDE] = 0  # the smallest blank square, across the boxes' x face at 16
    vol = create_volume(str(tmp_path / "raw"), data.shape, np.uint8, (4, 16, 16), (40, 4, 4))
    vol.write(vol.box, data)
    whole = read_filled(vol, vol.box, 2)
    np.testing.assert_array_equal(whole[0], data[1])
    assert whole[5:7].all() and whole[9, 10:21, 12:23].all()
    for z in range(0, 12, 4):
        for y in range(0, 48, 16):
            for x in range(0, 48, 16):
                box = Box.of((z, y, x), (4, 16, 16))
                np.testing.assert_array_equal(read_filled(vol, box, 2), whole[box.to_slices()], err_msg=str(box))


MISSING = 12


@pytest.fixture(scope="module")
def missing_section(tmp_path_factory):
    """Medulla z 0-31, y, x 0-95 with section 12 lost (exactly 0), and its labels."""
    with np.load(data_file("flyem_medulla_fib_train/medulla_train.npz")) as f:
        raw, gt = f["raw"][:32, :96, :96].copy(), f["neuron_ids"][:32, :96, :96].astype(np.uint64)
    raw[MISSING] = 0
    vol = create_volume(str(tmp_path_factory.mktemp("missing") / "raw"), raw.shape, np.uint8, (16, 96, 96),
                        (10, 10, 10))
    vol.write(vol.box, raw)
    return vol.address, gt


@pytest.mark.timeout(300)
def test_the_chain_segments_through_a_missing_section(missing_section, tmp_path, capsys):
    """Left black, a lost medulla section makes fib-10nm merge the neurons of the sections beside it (VOI 1.2 -> 4.4
    on the 25-section validation split, benchmarks/results/missing_sections.md); read as its neighbours' blend, the
    neurons go on through it."""
    raw, gt = missing_section
    blank = open_volume(raw)
    filled = create_volume(str(tmp_path / "filled"), blank.shape, np.uint8, (16, 96, 96), (10, 10, 10))
    filled.write(filled.box, read_filled(blank, blank.box, FILL_BLANK))  # the lost section filled beforehand
    runs = {name: _segment(capsys, source, tmp_path / name, "fib-10nm", block, *extra)
            for name, source, block, extra in (
                ("blocks", raw, (16, 96, 96), []), ("one", raw, (32, 96, 96), []),
                ("black", raw, (16, 96, 96), ["--fill-blank", "0"]), ("filled", filled.address, (16, 96, 96), []))}
    # the network and the edge classifier (fib-10nm-edges reads the image) read the image as if it had been filled
    np.testing.assert_array_equal(_read(runs["blocks"]["segmentation"]), _read(runs["filled"]["segmentation"]))
    affs = _read(runs["blocks"]["affinities"])
    assert affs[:, MISSING].mean() > 0.5 * affs[:, MISSING - 1].mean()  # predicted there like the tissue beside it
    one = _read(runs["one"]["affinities"])  # blockwise equals one block (up to float summation order)
    assert np.abs(affs.astype(np.int16) - one).max() <= 1
    assert not _read(runs["black"]["affinities"])[:, MISSING].any()  # left out
    seg = _read(runs["blocks"]["segmentation"])
    assert np.count_nonzero(seg[MISSING]) > 0.9 * seg[MISSING].size
    known = gt.copy()
    known[MISSING] = 0  # scored on the sections that exist
    scores = {name: voi(_read(r["segmentation"]).astype(np.uint64), known) for name, r in runs.items()}
    print(scores)  # shown with pytest -s
    assert abs(sum(scores["blocks"]) - sum(scores["one"])) < 0.05, scores
    assert scores["blocks"][1] < 0.5 * scores["black"][1], scores
    # an output made with the lost section left out resumes only with it left out
    code = main(["segment", raw, str(tmp_path / "black"), "--model", "fib-10nm", "--block-shape", "16", "96", "96",
                 "--workers", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "fill_blank" in err, err
    resumed = _segment(capsys, raw, tmp_path / "black", "fib-10nm", (16, 96, 96), "--fill-blank", "0")
    assert sum(s["ran"] for s in resumed["stages"]) == 0


def test_fill_blank_in_the_fingerprint_and_bad_values_refused_in_one_line(tmp_path, capsys):
    from connectome.affinity.segment import segmentation_config
    from connectome.affinity.stages import AffinitiesParams, AffinitiesStage

    def stage(model="fib-10nm", **params):
        return AffinitiesStage(AffinitiesParams(model=model, **params), {"raw": "raw"}, {"affinities": "a"})

    assert stage().fingerprint()["params"]["fill_blank"] == FILL_BLANK
    assert "fill_blank" not in stage(fill_blank=0).fingerprint()["params"]  # none filled: as before the option
    # sstem's json says 0 (chosen on its validation split, benchmarks/results/missing_sections.md); given, it fills
    assert stage("sstem").fill_sections == 0 and "fill_blank" not in stage("sstem").fingerprint()["params"]
    assert stage("sstem", fill_blank=2).fill_sections == 2 and stage("sstem", fill_blank=2).context() != stage(
        "sstem").context()
    assert stage(fill_blank=0).context() == stage(fill_blank=0).network_context()
    assert stage(find_blank=False, fill_blank=3).fill_sections == 0  # no blank regions looked for: none filled
    raw = f"{data_file('flyem_medulla_fib_train/medulla_train.npz')}#raw[0:4]"
    config = segmentation_config(raw, str(tmp_path / "out"), "fib-10nm", fill_blank=1, voxel_size=(10, 10, 10))
    params = {s.stage: s.params for s in config.stages}
    assert params["affinities"]["fill_blank"] == 1 and params["agglomerate"]["fill_blank"] == 1  # the image as read
    default = segmentation_config(raw, str(tmp_path / "out"), "fib-10nm", voxel_size=(10, 10, 10))
    assert {s.stage: s.params for s in default.stages}["agglomerate"]["fill_blank"] == FILL_BLANK  # the model's
    for command, argv, name in (("segment", ["--fill-blank", "-1"], "--fill-blank"),
                                ("segment", ["--fill-blank", "17"], "fill_blank"),
                                ("segment", ["--method", "ffn", "--fill-blank", "17"], "fill_blank"),
                                ("reconstruct", ["--fill-blank", "x"], "--fill-blank")):
        assert main([command, raw, str(tmp_path / "out"), "--voxel-size", "10", "10", "10", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert name in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()

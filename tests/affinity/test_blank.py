"""Blank image regions (`affinity.blank`): found, left out with the band of tissue beside them, seam-free in blocks."""

import numpy as np
import pytest
from test_segment import _read, _segment  # the segment-command helpers of the affinity tests

from connectome.affinity.blank import BLANK_SIDE, FILL_BLANK, blank_reach, blank_voxels, fill_margin
from connectome.cli.main import main
from connectome.io import create_volume
from connectome.metrics.voi import voi

from conftest import data_file


def test_blank_voxels_are_wide_zero_squares_and_the_band_beside_them_in_their_section():
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 256, (3, 64, 96), dtype=np.uint8)
    raw[1, 5:25, 30:50] = 0  # blank: 20 x 20
    raw[1, 40:50, 5:15] = 0  # 10 x 10: smaller than BLANK_SIDE
    raw[0, :, 60:63] = 0  # a 3 px wide zero line
    raw[2][rng.random((64, 96)) < 0.05] = 0  # scattered dark pixels
    band = 3
    found = blank_voxels(raw, band)
    expected = np.zeros(raw.shape, bool)
    expected[1, 5 - band:25 + band, 30 - band:50 + band] = True
    np.testing.assert_array_equal(found, expected)
    assert blank_voxels(raw[[0, 2]], band) is None  # nothing wide enough
    square = np.full((1, 40, 40), 9, np.uint8)
    square[0, 10:10 + BLANK_SIDE, 10:10 + BLANK_SIDE] = 0
    assert blank_voxels(square, 0).sum() == BLANK_SIDE ** 2  # the smallest blank region, without a band
    assert blank_reach(band) == 2 * (BLANK_SIDE // 2) + band


@pytest.mark.parametrize("model,band", [("fib-10nm", None), ("fib-10nm", 12), ("sstem", None), ("sstem", 40)])
def test_the_affinities_stage_reads_what_finding_blank_regions_needs(model, band):
    from connectome.affinity.stages import AffinitiesParams, AffinitiesStage

    stage = AffinitiesStage(AffinitiesParams(model=model, blank_band=band), {"raw": "raw"}, {"affinities": "a"})
    used = stage.blank_band
    assert used == (band if band is not None else {"fib-10nm": 4, "sstem": 12}[model])  # the model's json's
    context, divisor = stage.network_context(), stage.model_info.divisor
    assert all(2 * c % d == 0 for c, d in zip(context.lower, divisor)), (context, divisor)  # a whole read box
    assert min(context.lower[1:]) >= blank_reach(used) + 1 and context.lower == context.upper
    # the stage reads the margin that filling the network's input needs beyond it (`fill_blank`: the model's json's)
    assert stage.fill_sections == {"fib-10nm": FILL_BLANK, "sstem": 0}[model]
    assert stage.context().lower == tuple(c + m for c, m in zip(context.lower, fill_margin(stage.fill_sections)))
    off = AffinitiesStage(AffinitiesParams(model=model, find_blank=False), {"raw": "raw"}, {"affinities": "a"})
    assert off.blank_band is None and "blank_band" not in off.fingerprint()["params"]
    assert stage.fingerprint()["params"]["blank_band"] == used


CUT, SCORED, BAND = 120, 100, 4


@pytest.fixture(scope="module")
def black_strip(tmp_path_factory):
    """Medulla z 0-31, y, x 0-191 with x >= CUT black, and a black 20 x 20 square across the blocks' y face."""
    with np.load(data_file("flyem_medulla_fib_train/medulla_train.npz")) as f:
        raw, gt = f["raw"][:32, :192, :192].copy(), f["neuron_ids"][:32, :192, :192]
    raw[:, :, CUT:] = 0
    raw[:, 86:106, 40:60] = 0
    root = tmp_path_factory.mktemp("blank")
    vol = create_volume(str(root / "raw"), raw.shape, np.uint8, (32, 96, 96), (10, 10, 10))
    vol.write(vol.box, raw)
    return vol.address, gt


@pytest.mark.timeout(300)
def test_a_black_strip_leaves_its_band_out_and_merges_no_neurons_along_it(black_strip, tmp_path, capsys):
    """The networks predict high affinities in the last voxels of tissue beside a black region: without blank
    handling the medulla neurons along the strip merge (VOI merge 1.2 on 64 sections, measured)."""
    raw, gt = black_strip
    runs = {name: _segment(capsys, raw, tmp_path / name, "fib-10nm", block, *extra) for name, block, extra in (
        ("blocks", ("32", "96", "96"), []), ("one", ("32", "192", "192"), []),
        ("off", ("32", "96", "96"), ["--blank-band", "off"]))}
    affs, seg = _read(runs["blocks"]["affinities"]), _read(runs["blocks"]["segmentation"])
    assert not affs[:, :, :, CUT - BAND:].any() and not seg[:, :, CUT - BAND:].any()
    assert not affs[:, :, 86 - BAND:106 + BAND, 40 - BAND:60 + BAND].any()
    assert affs[:, :, :, CUT - BAND - 1].any() and _read(runs["off"]["affinities"])[:, :, :, CUT - BAND:CUT].any()
    one = _read(runs["one"]["affinities"])  # blockwise equals one block (up to float summation order)
    assert np.abs(affs.astype(np.int16) - one).max() <= 1 and not one[:, :, :, CUT - BAND:].any()
    scores = {name: voi(_read(r["segmentation"])[:, :, :SCORED].astype(np.uint64),
                        gt[:, :, :SCORED].astype(np.uint64)) for name, r in runs.items()}
    split, merge = scores["blocks"]
    print(scores)  # shown with pytest -s
    assert merge < 0.5 * scores["off"][1] and split + merge < sum(scores["off"]) - 0.2, scores
    # an output made without blank handling (as before the option) resumes only without it
    code = main(["segment", raw, str(tmp_path / "off"), "--model", "fib-10nm", "--block-shape", "32", "96", "96",
                 "--workers", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "blank_band" in err, err


def test_a_bad_blank_band_is_refused_in_one_line(tmp_path, capsys):
    for command, argv in (("segment", ["--blank-band", "-1"]), ("segment", ["--blank-band", "wide"]),
                          ("segment", ["--method", "ffn", "--blank-band", "-2"]), ("reconstruct", ["--blank-band", "x"])):
        assert main([command, str(tmp_path / "raw"), str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "--blank-band" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
def test_the_ffn_masks_blank_regions_and_their_band(black_strip, tmp_path, capsys):
    """Without it the FFN fills the black strip as objects (2-3 segments over it on medulla, measured)."""
    raw, _ = black_strip
    crop = create_volume(str(tmp_path / "raw"), (16, 96, 192), np.uint8, (16, 96, 96), (10, 10, 10))
    crop.write(crop.box, _read(raw)[:16, :96])
    segs = {name: _read(_segment(capsys, crop.address, tmp_path / name, "ffn-fib-10nm", (16, 96, 96), "--method", "ffn",
                                 *extra)["segmentation"])
            for name, extra in (("on", []), ("off", ["--blank-band", "off"]))}
    assert not segs["on"][:, :, CUT - BAND:].any() and segs["on"][:, :70, :CUT - BAND].all()
    # the black square, cut to 10 rows by the crop's face, is still found there (the face is taken as extended)
    assert not segs["on"][:, 86 - BAND:, 40 - BAND:60 + BAND].any()
    assert segs["off"][:, :, CUT:].all()  # the strip filled as objects


def test_an_ffn_reading_affinities_passes_the_blank_band_to_their_stage(tmp_path):
    """(a user-trained FFN: the shipped ones read the raw image)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ffn"))
    from connectome.ffn.segment import ffn_config

    from ffn_handset import compartments_volume, saved_handset_model

    model = saved_handset_model(tmp_path, input="affinities:synthetic")
    raw = compartments_volume(tmp_path)
    for band, params in (("off", {"find_blank": False}), (7, {"blank_band": 7}), (None, {})):
        config = ffn_config(raw, str(tmp_path / "out"), model, block_shape=(16, 64, 64), blank_band=band)
        stages = {s.stage: s.params for s in config.stages}
        for stage in ("affinities", "ffn"):
            assert {k: stages[stage].get(k) for k in params} == params, (band, stage, stages[stage])
            assert not ({"find_blank", "blank_band"} - set(params)) & set(stages[stage]), stages[stage]

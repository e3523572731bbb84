"""`connectome segment` end to end with the shipped models: contract, resume, seam-free blocks."""

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.io import create_volume, open_volume
from connectome.metrics.voi import voi

from conftest import data_file


def _segment(capsys, raw, out, model, block, *extra):
    argv = ["segment", raw, str(out), "--model", model, "--block-shape", *map(str, block),
            "--workers", "2", "--no-progress", "--json", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _read(address):
    vol = open_volume(address)
    return vol.read(vol.box)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("synthseg")
    generate((32, 128, 128), (8.0, 8.0, 8.0), seed=11).save(str(root), chunk_shape=(16, 64, 64))
    return root


def test_segment_synthetic_eight_blocks_equal_one_and_resume(synthetic_raw, tmp_path, capsys):
    raw = str(synthetic_raw / "raw")
    eight = _segment(capsys, raw, tmp_path / "eight", "synthetic", (16, 64, 64))
    one = _segment(capsys, raw, tmp_path / "one", "synthetic", (32, 128, 128))
    assert eight["segmentation"] == str(tmp_path / "eight" / "segmentation")
    assert [(s["stage"], s["blocks"]) for s in eight["stages"]] == [
        ("affinities", 8), ("fragments", 8), ("agglomerate", 8), ("merge", 1), ("relabel", 8)]
    seg8, seg1 = _read(eight["segmentation"]), _read(one["segmentation"])
    # same context everywhere: only float summation order differs with the tile size (<= 1 grey level)
    diff = np.abs(_read(eight["affinities"]).astype(np.int16) - _read(one["affinities"]))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    split, merge = voi(seg8, seg1)
    assert split + merge <= 0.05, (split, merge)
    gt = _read(str(synthetic_raw / "labels"))
    s, m = voi(seg8, gt)
    assert s + m < 1.5, (s, m)  # the synthetic model segments its own kind of data
    again = _segment(capsys, raw, tmp_path / "eight", "synthetic", (16, 64, 64))
    assert all(st["ran"] == 0 and st["skipped"] == st["blocks"] for st in again["stages"])
    np.testing.assert_array_equal(_read(again["segmentation"]), seg8)
    assert main(["segment", raw, str(tmp_path / "eight"), "--model", "synthetic", "--block-shape", "16", "64", "64",
                 "--workers", "2", "--no-progress"]) == 0
    said = capsys.readouterr().out  # the human summary of a run with nothing left to do
    assert "no block ran (all were done before)" in said and "Mvx/s" not in said, said


@pytest.fixture(scope="module")
def medulla_crop(tmp_path_factory):
    path = data_file("flyem_medulla_fib_train/medulla_train.npz")
    raw = np.ascontiguousarray(np.load(path)["raw"][100:124, :128, :128])
    vol = create_volume(str(tmp_path_factory.mktemp("medulla") / "raw"), raw.shape, np.uint8, (12, 64, 64),
                        (10, 10, 10))
    vol.write(vol.box, raw)
    return vol.address


@pytest.fixture(scope="module")
def medulla_runs(medulla_crop, tmp_path_factory):
    """fib-10nm on the medulla crop, run once for the tests below: 8 blocks at its default (4 flipped copies
    of each block averaged), 1 block with `--tta 4` and 1 block with `--tta 1`."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("medulla-runs")
    runs = {}
    for name, block, extra in (("eight", (12, 64, 64), ()), ("one", (24, 128, 128), ("--tta", "4")),
                               ("plain", (24, 128, 128), ("--tta", "1"))):
        argv = ["segment", medulla_crop, str(root / name), "--model", "fib-10nm", "--block-shape", *map(str, block),
                "--workers", "2", "--no-progress", "--json", *extra]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        assert code == 0, name
        runs[name] = json.loads(out.getvalue().strip().splitlines()[-1])
    return runs


def test_segment_medulla_crop_eight_blocks_equal_one(medulla_runs):
    eight, one = medulla_runs["eight"], medulla_runs["one"]
    assert eight["stages"][0]["blocks"] == 8 and one["stages"][0]["blocks"] == 1
    split, merge = voi(_read(eight["segmentation"]), _read(one["segmentation"]))
    assert split + merge <= 0.05, (split, merge)


def test_test_time_augmentation_is_seam_free_and_changes_the_affinities(medulla_runs):
    """fib-10nm's default, 4 flipped copies of each block averaged: 8 blocks equal 1, and the result is not
    the plain one (`--tta 1`)."""
    eight, one, plain = medulla_runs["eight"], medulla_runs["one"], medulla_runs["plain"]
    assert (eight["tta"], one["tta"], plain["tta"]) == (4, 4, 1)
    from connectome.models.inference import native_bfloat16

    here = "bfloat16" if native_bfloat16() else "float32"  # the one precision every block of each run used
    assert (eight["precision"], one["precision"], plain["precision"]) == (here, here, here)
    a8, a1, a0 = (_read(r["affinities"]).astype(np.int16) for r in (eight, one, plain))
    diff = np.abs(a8 - a1)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float summation order only
    changed = np.abs(a1 - a0)
    assert (changed > 2).mean() > 0.05  # the flipped predictions differ from the plain one ...
    assert np.corrcoef(a1.ravel(), a0.ravel())[0, 1] > 0.9  # ... but describe the same edges


def test_flipped_predictions_of_serial_sections_are_seam_free_at_z_faces(tmp_path, capsys):
    """sstem (context 2 sections, no slack from its divisor 1 in z) with its default four flips, z among them:
    blocks of 4 sections equal one block of 12 (the z channel of the z-flipped prediction moves one plane when
    flipped back, so a block reads one plane more on each flipped axis; it differed by up to 30 grey levels on
    the block faces before)."""
    path = data_file("isbi2012/isbi2012.npz")
    raw = np.ascontiguousarray(np.load(path)["train_raw"][0:12, :128, :128])
    vol = create_volume(str(tmp_path / "raw"), raw.shape, np.uint8, (4, 128, 128), (50, 4, 4))
    vol.write(vol.box, raw)
    runs = {n: _segment(capsys, vol.address, tmp_path / n, "sstem", block) for n, block in
            (("three", (4, 128, 128)), ("one", (12, 128, 128)))}
    assert runs["three"]["tta"] == 4 and runs["three"]["stages"][0]["blocks"] == 3
    diff = np.abs(_read(runs["three"]["affinities"]).astype(np.int16) - _read(runs["one"]["affinities"]))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 1).sum())


def test_weights_retrained_in_place_are_not_mixed_into_a_resumed_run(synthetic_raw, tmp_path, capsys):
    """The affinities stage records its weights by name and content: the same file elsewhere resumes, a run from
    before weights were recorded (by its model's path) resumes and records them, and other content under the same
    path is refused."""
    import shutil

    from connectome.models.registry import resolve_model_path

    raw, out = str(synthetic_raw / "raw"), tmp_path / "out"
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        for suffix in (".pt", ".json"):
            shutil.copy(resolve_model_path("synthetic").with_suffix(suffix), folder / f"lab{suffix}")
        shutil.copy(resolve_model_path("synthetic").with_name("synthetic-edges.json"), folder / "lab-edges.json")
    first = _segment(capsys, raw, out, str(folders[0] / "lab.pt"), (32, 128, 128))
    done = out / ".connectome" / "done" / "affinities" / "fingerprint.json"
    recorded = json.loads(done.read_text())
    assert recorded["weights"]["name"] == "lab.pt" and str(folders[0]) not in json.dumps(recorded["weights"])
    old = {k: v for k, v in recorded.items() if k != "weights"}  # as a run made before weights were recorded,
    old["params"] = {**old["params"], "model": str(folders[0] / "lab.pt")}  # which recorded the model's path
    done.write_text(json.dumps(old))
    again = _segment(capsys, raw, out, str(folders[1] / "lab.pt"), (32, 128, 128))
    assert all(s["ran"] == 0 for s in again["stages"]), again["stages"]
    assert json.loads(done.read_text()) == recorded  # and now records them
    assert np.array_equal(_read(first["segmentation"]), _read(again["segmentation"]))
    with open(folders[0] / "lab.pt", "ab") as f:  # retrained in place
        f.write(b"\0")
    code = main(["segment", raw, str(out), "--model", str(folders[0] / "lab.pt"), "--block-shape", "32", "128",
                 "128", "--workers", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'affinities'" in err[0] and "other settings: weights" in err[0], err
    assert json.loads(done.read_text()) == recorded  # nothing discarded


def test_segment_bad_input_is_one_line(tmp_path, capsys, synthetic_raw):
    raw = str(synthetic_raw / "raw")
    np.savez(tmp_path / "sections.npz", raw=np.zeros((8, 64, 64), np.uint8))
    sections = f"{tmp_path}/sections.npz#raw"
    from connectome.models.registry import WEIGHTS_DIR

    for name, weights in (("junk", b"junk\n"), ("cut", (WEIGHTS_DIR / "synthetic.pt").read_bytes()[:5000])):
        (tmp_path / f"{name}.pt").write_bytes(weights)  # a damaged or foreign .pt beside a good .json
        (tmp_path / f"{name}.json").write_text((WEIGHTS_DIR / "synthetic.json").read_text())
    np.savez(tmp_path / "channels.npz", raw=np.zeros((3, 8, 64, 64), np.uint8))  # (c, z, y, x): not one image
    cases = [
        (["segment", f"{tmp_path}/channels.npz#raw", str(tmp_path / "o"), "--voxel-size", "8", "8", "8"],
         "has 3 channels, dtype uint8, shape [8, 64, 64]; expected 1 channel of uint8 (a grey-level EM image"),
        (["segment", raw, str(tmp_path / "o"), "--model", str(tmp_path / "junk.pt"), "--scoring", "mean"],
         f"{tmp_path / 'junk.pt'}: expected the weights of the U-Net its .json describes, found"),
        (["segment", raw, str(tmp_path / "o"), "--model", str(tmp_path / "cut.pt"), "--scoring", "mean"],
         f"{tmp_path / 'cut.pt'}: expected the weights of the U-Net its .json describes, found"),
        (["segment", sections, str(tmp_path / "o"), "--voxel-size", "40", "4", "4"],
         "model synthetic: trained on [8.0, 8.0, 8.0] nm voxels, but " + sections + " has [40.0, 4.0, 4.0] nm"),
        (["segment", raw, str(tmp_path / "o"), "--model", "nonesuch"], "unknown model 'nonesuch'"),
        (["segment", raw, str(tmp_path / "o"), "--method", "ffn", "--model", "synthetic"], "model 'synthetic' is not an FFN model"),
        (["segment", str(tmp_path / "missing.zarr"), str(tmp_path / "o")], "no such file or directory"),
        (["segment", str(synthetic_raw / "labels"), str(tmp_path / "o")], "has dtype uint64, expected uint8"),
        (["segment", raw, str(tmp_path / "o"), "--block-shape", "16", "64", "62"],
         "needs a multiple of [4, 4, 4] (the downsampling factor of model synthetic)"),
        (["segment", raw, str(tmp_path / "o"), "--method", "ffn", "--tta", "4"], "--tta 4: for --method affinities, not ffn"),
        (["segment", raw, str(tmp_path / "o"), "--method", "ffn", "--threshold", "0.4"],
         "--threshold 0.4: for --method affinities, not ffn"),
        (["segment", raw, str(tmp_path / "o"), "--consensus"], "--consensus: for --method ffn, not affinities"),
        (["segment", raw, str(tmp_path / "o"), "--ffn-agglomerate"], "--ffn-agglomerate: for --method ffn, not affin"),
        (["segment", raw, str(tmp_path / "o"), "--overlap", "8", "8", "8"], "--overlap 8 8 8: for --method ffn, not"),
        (["segment", raw, str(tmp_path / "o"), "--min-segment-voxels", "-1"], "--min-segment-voxels -1: expected"),
        (["segment", raw, str(tmp_path / "o"), "--method", "ffn", "--min-segment-voxels", "50"],
         "--min-segment-voxels 50: for --method affinities"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "o").exists()


def test_run_configs_use_the_models_tta_and_fingerprint_what_ran(medulla_crop, tmp_path):
    """An affinities stage without `tta` averages its model's validated number of flips (fib-10nm: 4,
    synthetic: 1); the fingerprint names the number used, and leaves it out at 1 as before the option."""
    from connectome.affinity.segment import segmentation_config
    from connectome.engine.plan import plan_run

    def affinities(model, **kw):
        config = segmentation_config(medulla_crop, str(tmp_path / model), model, (24, 128, 128),
                                     allow_voxel_mismatch=True, **kw)
        stage = next(p.stage for p in plan_run(config).stages if p.stage.name == "affinities")
        return stage.tta, stage.fingerprint()["params"]

    tta, params = affinities("fib-10nm")
    assert tta == 4 and params["tta"] == 4 and "precision" not in params
    tta, params = affinities("fib-10nm", tta=1, precision="float32")
    assert tta == 1 and "tta" not in params and params["precision"] == "float32"
    tta, params = affinities("synthetic")
    assert tta == 1 and "tta" not in params


def test_run_configs_absorb_small_segments_as_the_model_says(medulla_crop, tmp_path):
    """relabel gets the model's validated absorb settings (fib-10nm: 200 voxels, 16^3 box, half the faces);
    `--min-segment-voxels 0` and models without them leave relabel's fingerprint as before the option."""
    from connectome.affinity.segment import segmentation_config
    from connectome.engine.plan import plan_run

    def relabel(model, **kw):
        config = segmentation_config(medulla_crop, str(tmp_path / model), model, (24, 128, 128),
                                     allow_voxel_mismatch=True, **kw)
        stage = next(p.stage for p in plan_run(config).stages if p.stage.name == "relabel")
        return stage.params, stage.fingerprint()["params"], stage.context()

    params, fp, context = relabel("fib-10nm")
    assert (params.min_voxels, params.max_extent, params.min_share) == (200, (16, 16, 16), 0.5)
    assert fp["min_voxels"] == 200 and context.lower == context.upper == (32, 32, 32)
    params, fp, _ = relabel("fib-10nm", min_segment_voxels=50)
    assert params.min_voxels == 50 and params.max_extent == (16, 16, 16)
    for kw in ({"model": "fib-10nm", "min_segment_voxels": 0}, {"model": "synthetic"}):
        params, fp, context = relabel(**kw)
        assert params.min_voxels == 0 and context.lower == (0, 0, 0)
        assert not {"min_voxels", "max_extent", "min_share"} & set(fp), fp


def test_no_model_given_is_said_once_the_run_is_done(synthetic_raw, tmp_path, capsys):
    """Without --model, segment runs `synthetic` and says so in one note (a lab's real data was segmented by a
    synthetic-only model without a word); a refused run says its one error line only."""
    raw = str(synthetic_raw / "raw")
    assert main(["segment", raw, str(tmp_path / "bad"), "--min-segment-voxels", "-3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--min-segment-voxels -3" in err[0], err
    assert main(["segment", raw, str(tmp_path / "o"), "--block-shape", "32", "128", "128", "--workers", "1",
                 "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "no --model given" in line]
    assert len(notes) == 1 and "synthetic, trained on synthetic volumes only" in notes[0], notes


def test_a_refusal_names_an_option_left_out_of_the_fingerprint_as_asked(tmp_path, capsys):
    """`--tta 1` and `--precision auto` (like relabel's `min_voxels` 0) are left out of their stage's fingerprint, as
    before the options existed: a refusal named such a value `unset` (`tta 4 -> unset` for `--tta 1` on an output
    made with `--tta 4`). It names the value asked on both sides; `unset` only for an option not given."""
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=5).save(str(tmp_path / "synth"))
    raw = str(tmp_path / "synth" / "raw")

    def refused(out, *extra):
        code = main(["segment", raw, str(tmp_path / out), "--model", "synthetic", "--block-shape", "16", "64", "64",
                     "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "was started with other settings" in err[0], err
        return err[0]

    _segment(capsys, raw, tmp_path / "four", "synthetic", (16, 64, 64), "--tta", "4")
    assert "params (tta 4 -> 1);" in refused("four", "--tta", "1")
    assert "params (tta 4 -> unset);" in refused("four")  # not given (the model's: 1)
    assert 'params (precision "auto" -> "float32");' in refused("four", "--tta", "4", "--precision", "float32")
    _segment(capsys, raw, tmp_path / "one", "synthetic", (16, 64, 64), "--tta", "1", "--precision", "float32")
    assert 'params (precision "float32" -> "auto", tta 1 -> 4);' in refused("one", "--tta", "4", "--precision", "auto")
    assert "params (min_voxels 0 -> 20);" in refused("one", "--tta", "1", "--precision", "float32",
                                                      "--min-segment-voxels", "20")
